"""The appc format: manifests, value types, the .aci archive reader and writer."""
