"""The image repository server (`acbuild serve`) and its static export."""
