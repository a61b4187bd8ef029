"""An interactive session's history, kept so that it can be printed as an ACIfile.

Each record is a dict (one JSON line in .acbuild/history):
- {"from": "scratch" | "/abs/path"}                       the begin
- {"line": "LABEL version=1.0"}                            any other step
- {"line": "COPY a b", "context": "/abs", "copy": {...}}   a COPY, with its sources
  as absolute host paths so it can be re-rendered against one shared context.
- {"line": "LABEL a=b", "manifest": "{...}"}              a manifest verb, with the
  manifest after it (for the fallback below).

`render()` picks the context for the whole file (the deepest directory that
holds every COPY source) and prints COPY sources relative to it, so that
`acbuild build -f HISTORY --context CTX` replays the session exactly. A verb the
ACIfile language would refuse after the earlier lines (a second NAME, EXEC or
USER, a label set twice) is recorded as `MANIFEST {json}` of the manifest after
the verb: the replay reaches the same manifest, byte for byte. That check parses,
so it runs when the history is printed, not in each verb: a metadata verb must not
load the ACIfile grammar (start-up matters there; tests/test_startup_imports.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from acbuild import plan as p
from acbuild.errors import AcbuildError


def begin_record(base: str) -> dict:
    return {"from": base}


def step_record(instruction: p.Instruction, context: Path | None, absolute_sources: tuple[str, ...] = (),
                manifest_after: bytes | None = None) -> dict:
    """manifest_after: the manifest once the step ran, kept for a line the compiler
    may refuse (see resolve); None for steps that change the rootfs."""
    record: dict = {"line": instruction.to_acifile()}
    if isinstance(instruction, p.Copy):
        record["context"] = str(context)
        record["copy"] = {"sources": list(absolute_sources), "dest": instruction.dest}
    if manifest_after is not None:
        record["manifest"] = manifest_after.decode()
    return record


def manifest_record(manifest_json: str, instead_of: str) -> dict:
    return {"line": p.ReplaceManifest(manifest_json=manifest_json).to_acifile(), "instead_of": instead_of}


def resolve(records: list[dict]) -> list[dict]:
    """The records with each line that would not compile after the ones before it
    replaced by MANIFEST {json} of the manifest it left."""
    out: list[dict] = []
    for r in records:
        if "manifest" in r and not compiles([*out, r]):
            r = manifest_record(r["manifest"], r["line"])
        out.append(r)
    return out


def compiles(records: list[dict]) -> bool:
    """Would these records, as an ACIfile, pass the compiler?"""
    from acbuild.frontend.compile import compile_text

    text = "\n".join(["FROM scratch", *(r["line"] for r in records if "line" in r)]) + "\n"
    try:
        compile_text(text, "history")
    except AcbuildError:
        return False
    return True


def context_of(records: list[dict], default: str) -> str:
    contexts = [r["context"] for r in records if "context" in r]
    return os.path.commonpath(contexts) if contexts else default


def render(records: list[dict], default_context: str, work_path: Path) -> str:
    records = resolve(records)
    ctx = context_of(records, default_context)
    out = [
        f"# acbuild history of the build in {work_path}",
        f"# context: {ctx}",
        f"# rebuild: acbuild build -f THIS-FILE --context {ctx} -o OUT.aci",
    ]
    for r in records:
        if "from" in r:
            out.append(p.From(base=_relative(r["from"], ctx)).to_acifile())
        elif "copy" in r:
            sources = tuple(os.path.relpath(s, ctx) for s in r["copy"]["sources"])
            out.append(p.Copy(sources=sources, dest=r["copy"]["dest"]).to_acifile())
        else:
            if "instead_of" in r:
                out.append(f"# {r['instead_of']}")
            out.append(r["line"])
    return "\n".join(out) + "\n"


def _relative(base: str, ctx: str) -> str:
    if base == "scratch" or not os.path.isabs(base):
        return base
    if base == ctx or base.startswith(ctx.rstrip("/") + "/"):
        return os.path.relpath(base, ctx)
    return base
