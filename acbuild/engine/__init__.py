"""The build engine. `session.Session` is the only executor of plan instructions;
`driver.build_plan` runs a Plan through it with the step cache; `launch` runs an
image's app. Each job has its room:

- `execute/`: what a step does to the rootfs (COPY, RUN in the namespace sandbox,
  path resolution inside the root, users and groups, the ignore file);
- `deps/`: dependency rendering and the overlayfs view of rendered dependencies;
- `cache/`: the step cache, its keys and the stat cache that spares re-reading;
- `interactive/`: the state of `acbuild begin ... end` (work path, history, --modify).

Imports every layer below it; the CLI imports it, never the reverse.
`execute/sandbox.py` runs in a freshly unshared child: it imports nothing heavy."""
