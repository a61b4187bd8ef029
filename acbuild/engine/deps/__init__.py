"""Dependencies: `render` (appc dependency resolution and rendering into a tree)
and `overlay` (the read-only overlayfs lower layer of rendered dependencies, and
what a build's output holds above it). May import execute/ (the sandbox's mount
helpers); not cache/ or interactive/."""
