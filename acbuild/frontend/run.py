"""RUN's words, as the Compiler gives them meaning: --network, --mount (bind, cache,
tmpfs, secret, ssh; from= an earlier stage or an image), and heredocs run as
BuildKit runs them. The command itself is not expanded (the shell in the image
does that); the ARGs in scope reach it as environment.

A mixin of frontend.compile.Compiler: it uses the Compiler's word expansion, its
stage state and `_source_stage` / `_working_directory`.
"""

from __future__ import annotations

import posixpath
import re

from acbuild import plan as p
from acbuild.errors import PlanError
from acbuild.frontend.parse import Statement, Word


class RunWords:
    def _run(self, st: Statement) -> p.Run:
        self._check_runnable(st)
        network, mounts, at = "", [], {}
        for w in st.flags:
            name, _, raw = w.text[2:].partition("=")
            value = self.expand(Word(raw, w.pos))
            if name == "network":
                network, at["network"] = ("" if value == "default" else value), w.pos
            elif name == "mount":
                mounts.append(self._mount_flag(value, w))
            else:
                raise PlanError(f"RUN: unknown flag --{name} (known: --mount, --network)", w.pos)
        argv, shell = self._command(st)
        if st.heredocs and shell:
            argv = self._heredoc_run(st, argv)
        arg_env = tuple(sorted((k, v) for k, v in self.args.items() if k not in self.stage.env))
        return p.Run(argv=argv, network=network, mounts=tuple(mounts), shell_form=shell, arg_env=arg_env, pos=st.pos, at=at)

    def _mount_flag(self, value: str, w: Word) -> p.RunMount:
        opts: dict[str, str] = {}
        for part in value.split(","):
            key, eq, val = part.partition("=")
            opts[key.strip()] = val if eq else "true"
        kind = opts.pop("type", "bind")
        target = opts.pop("target", opts.pop("dst", opts.pop("destination", "")))
        mount_id = opts.pop("id", "")
        if kind == "secret":
            mount_id = mount_id or posixpath.basename(target)
            target = target or f"/run/secrets/{mount_id}"
        if kind == "ssh":
            mount_id = mount_id or "default"
            target = target or "/run/buildkit/ssh_agent.0"
        required = opts.pop("required", "false") == "true"
        if target and not target.startswith("/"):  # BuildKit: relative to the working directory
            target = posixpath.normpath(posixpath.join(self._working_directory(), target))
        for ignored in ("mode", "uid", "gid", "sharing", "size", "env"):
            if kind in ("secret", "ssh", "tmpfs", "cache") and ignored in opts:
                raise PlanError(f"RUN --mount: {ignored}= is not supported yet", w.pos)
        from_stage = ""
        if "from" in opts:
            word = opts.pop("from")
            from_stage = self._source_stage(word, w, "RUN --mount=from")
        source = opts.pop("source", opts.pop("src", "")) or ("." if kind == "bind" and not from_stage else "")
        if from_stage and not source:
            source = "/"
        if kind != "bind":
            source = ""
        read_only = kind == "bind" and opts.pop("rw", opts.pop("readwrite", "false")) != "true"
        opts.pop("ro", None)
        if opts:
            raise PlanError(f"RUN --mount: unknown option {sorted(opts)[0]}", w.pos)
        try:
            return p.RunMount(type=kind, target=target, source=source, read_only=read_only, id=mount_id, required=required,
                               from_stage=from_stage)
        except PlanError as err:
            raise PlanError(err.message, w.pos) from None

    def _heredoc_run(self, st: Statement, argv: tuple[str, ...]) -> tuple[str, ...]:
        """RUN <<EOF as BuildKit runs it: a lone heredoc is the script (a file run
        directly when it starts with #!), otherwise the line and its heredocs go
        to the shell together."""
        *shell, line = argv
        doc = st.heredocs[0]
        if len(st.heredocs) == 1 and re.fullmatch(r"\d*<<-?\s*\S+", line.strip()):
            text = doc.text()
            if text.startswith("#!"):
                return (*shell, f"cat > /tmp/{doc.name} <<'{doc.name}'\n{text}{doc.name}\nchmod +x /tmp/{doc.name}; /tmp/{doc.name}")
            return (*shell, text)
        return (*shell, line + "".join(f"\n{d.content}{d.name}" for d in st.heredocs))
