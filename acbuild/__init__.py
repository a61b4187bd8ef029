"""acbuild: build, sign, verify and ship App Container Images (appc .aci)."""

__version__ = "0.1.0"
