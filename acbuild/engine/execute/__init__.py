"""Executing steps on a rootfs: `copy` (COPY with Dockerfile semantics), `run_step`
and `sandbox` (RUN in unshared namespaces; the sandbox is import-light because it
runs in the child), `paths` (resolving a path inside a root without leaving it),
`users` (user and group names from the image's /etc files), `ignore`
(.acbuildignore). May import deps/ for the overlay view; not cache/ or interactive/."""
