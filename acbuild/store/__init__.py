"""The local image store: images kept by image ID (acbuild.store.images)."""
