"""The network layer: a small HTTP(S) client (http.py) and appc meta discovery
(discovery.py). It knows nothing of image stores, builds or the CLI."""
