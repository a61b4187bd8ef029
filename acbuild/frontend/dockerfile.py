"""The Dockerfile's own words, as the Compiler gives them meaning: the ones that
an ACIfile's appc words do not cover, each compiled to the same plan instructions.

EXPOSE is a PORT named as docker2aci names it, VOLUME a MOUNT, USER the app's user
(with the primary group the engine looks up), CMD/ENTRYPOINT the exec as Docker
combines them, MAINTAINER/STOPSIGNAL/HEALTHCHECK/ONBUILD annotations (docker2aci's
prefix), SHELL the shell of later shell forms (and the annotation
appc.io/docker/shell, so that a stage built on the image uses it too). ONBUILD triggers run in a stage
built on the stage or image that holds them.

A mixin of frontend.compile.Compiler: it uses the Compiler's word expansion
(`expand`, `_command`, `_exec_form`) and stage state (`self.stage`).
"""

from __future__ import annotations

import json
import re

from acbuild import plan as p
from acbuild.errors import PlanError
from acbuild.frontend.parse import Statement, Word, parse_acifile
from acbuild.records import dataclass, replace

DEFAULT_SHELL = ("/bin/sh", "-c")
# Annotations that keep Docker's words that appc has no field for (docker2aci's prefix).
DOCKER = "appc.io/docker/"


@dataclass(frozen=True)
class Platforms:
    """The build's platforms, OS/ARCH[/VARIANT] as docker spells them: `build` is the
    machine's, `target` the image's (build --platform, default the machine's).
    The CLI finds them (knowing the host is not this layer's); "" = unknown."""

    build: str = ""
    target: str = ""

    def args(self) -> dict[str, str]:
        """BuildKit's automatic platform ARGs, global like an ARG before FROM."""
        out: dict[str, str] = {}
        for prefix, value in (("BUILD", self.build), ("TARGET", self.target or self.build)):
            if value:
                os_name, arch, variant = (value.split("/") + ["", ""])[:3]
                out |= {f"{prefix}PLATFORM": value, f"{prefix}OS": os_name, f"{prefix}ARCH": arch,
                        f"{prefix}VARIANT": variant}
        return out


def same_machine(a: str, b: str) -> bool:
    """Do two platforms run the same binaries (OS and architecture; the variant of
    one architecture is not told apart)?"""
    return a.split("/")[:2] == b.split("/")[:2]


class DockerfileWords:
    def _dockerfile_instructions(self, st: Statement) -> list[p.Instruction] | None:
        """The plan instructions of a Dockerfile-only statement (none for ONBUILD,
        which changes what a child stage means), or None for any other."""
        match st.keyword:
            case "SHELL":  # kept for the stages and images built on this one
                self.stage.shell = self._exec_form(st)
                return [self._annotate(st, DOCKER + "shell", json.dumps(list(self.stage.shell)))]
            case "ONBUILD":
                self._onbuild(st)
                return []
            case "EXPOSE":
                return [self._expose(w) for w in st.words]
            case "VOLUME":
                return self._volumes(st)
            case "USER":
                return [self._user(st)]
            case "CMD":
                return [self._cmd(st)]
            case "ENTRYPOINT":
                return [self._entrypoint(st)]
            case "MAINTAINER":
                return [self._annotate(st, "authors", self._expand_text(st.command))]
            case "STOPSIGNAL":
                return [self._annotate(st, DOCKER + "stopsignal", self.expand(st.words[0]))]
            case "HEALTHCHECK":
                return [self._healthcheck(st)]
        return None

    def _stage_platform(self, base: p.From) -> str:
        """The platform a stage is for: FROM --platform, else the stage it starts
        from's, else the build's target (BuildKit)."""
        parent = self.finished.get(base.stage) if base.stage else None
        return base.platform or (parent.platform if parent else "") or self.platforms.target

    def _check_runnable(self, st: Statement) -> None:
        """RUN in a stage for another machine would need an emulator, which acbuild
        does not bring: refuse it here, before anything runs."""
        want, have = self.stage.platform, self.platforms.build
        if want and have and not same_machine(want, have):
            raise PlanError(f"RUN: this stage is for {want} (FROM --platform or --platform) and this machine is "
                            f"{have}: acbuild cannot run its programs (no emulation); build it on a {want} machine "
                            "or use FROM --platform=$BUILDPLATFORM for the stages that RUN", st.pos)

    def _run_triggers(self, triggers: list[str], pos) -> None:
        """A base's ONBUILD triggers, run here as if written at its FROM, and not
        passed on to this stage's own children (Docker)."""
        if triggers:
            self.stage.steps.append(p.Remove(what="ANNOTATION", name=DOCKER + "onbuild", pos=pos))
        for trigger in triggers:
            for st in parse_acifile(trigger, self.filename):
                st = replace(st, pos=pos)
                if st.keyword in ("ONBUILD", "FROM", "MAINTAINER"):
                    raise PlanError(f"ONBUILD: {st.keyword} is not allowed as a trigger", pos)
                if st.keyword == "ARG":
                    self._arg(st)
                else:
                    self._step(st)

    def _cmd(self, st: Statement) -> p.Cmd:
        self.stage.cmd_set = True
        argv, _ = self._command(st)
        return p.Cmd(argv=argv, pos=st.pos)

    def _entrypoint(self, st: Statement) -> p.Entrypoint:
        argv, _ = self._command(st)
        return p.Entrypoint(argv=argv, reset_cmd=not self.stage.cmd_set, pos=st.pos)

    def _annotate(self, st: Statement, name: str, value: str) -> p.Annotation:
        self.stage.annotations.pop(name, None)  # Docker: the last one wins
        return p.Annotation(items=((name, value),), pos=st.pos)

    def _healthcheck(self, st: Statement) -> p.Annotation:
        if not st.words:
            raise PlanError('HEALTHCHECK: expected "CMD COMMAND" or "NONE"', st.pos)
        kind = self.expand(st.words[0]).upper()
        options = {w.text[2:].partition("=")[0]: self.expand(Word(w.text[2:].partition("=")[2], w.pos)) for w in st.flags}
        known = {"interval", "timeout", "start-period", "start-interval", "retries"}
        for w in st.flags:
            if w.text[2:].partition("=")[0] not in known:
                raise PlanError(f"HEALTHCHECK: unknown flag {w.text.partition('=')[0]}", w.pos)
        if kind == "NONE":
            if st.command is not None or st.flags:
                raise PlanError("HEALTHCHECK NONE takes no arguments", st.words[0].pos)
            value = {"test": ["NONE"]}
        elif kind == "CMD" and st.command is not None:
            argv, shell = self._command(st)
            value = {"test": ["CMD-SHELL", argv[-1]] if shell else ["CMD", *argv], **options}
        else:
            raise PlanError('HEALTHCHECK: expected "CMD COMMAND" or "NONE"', st.words[0].pos)
        return self._annotate(st, DOCKER + "healthcheck", json.dumps(value, sort_keys=True, separators=(",", ":")))

    def _expose(self, w: Word) -> p.Port:
        """EXPOSE 80, 80/tcp, 53/udp, 8000-8010: a port named as docker2aci names it."""
        text = self.expand(w)
        m = re.fullmatch(r"(\d+)(?:-(\d+))?(?:/([a-zA-Z]+))?", text)
        if not m:
            raise PlanError(f'EXPOSE: "{text}" is not PORT[-END][/PROTOCOL]', w.pos)
        first, last, protocol = int(m.group(1)), int(m.group(2) or m.group(1)), (m.group(3) or "tcp").lower()
        name = f"{first}-{protocol}" if last == first else f"{first}-{last}-{protocol}"
        return p.Port(name=name, protocol=protocol, port=first, count=max(last - first + 1, 0), pos=w.pos,
                      at={"port": w.pos, "count": w.pos, "name": w.pos})

    def _volumes(self, st: Statement) -> list[p.MountPoint]:
        """VOLUME /a /b: mount points named "volume-" + the path made an ACName (docker2aci)."""
        mounts = []
        for w in self._list_words(st):
            path = self.expand(w)
            if not path:
                raise PlanError("VOLUME: empty path", w.pos)
            earlier = {m.path: m.name for m in [*self.stage.steps, *mounts] if isinstance(m, p.MountPoint)}
            if path in earlier:  # Docker's volumes are a set: the same path is the same mount point
                name = earlier[path]
            else:
                name = base = "volume-" + (re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "root")
                n = 1
                while name in earlier.values():
                    name, n = f"{base}-{n}", n + 1
            mounts.append(p.MountPoint(name=name, path=path, pos=st.pos, at={"path": w.pos}))
        return mounts

    def _user(self, st: Statement) -> p.User:
        user, colon, group = self.expand(st.words[0]).partition(":")
        if colon and not group:
            raise PlanError("USER: empty group after the colon", st.words[0].pos)
        return p.User(user=user, group=group, pos=st.pos, at={"user": st.words[0].pos, "group": st.words[0].pos})

    def _onbuild(self, st: Statement) -> None:
        trigger = st.command.text.strip()
        keyword = trigger.split(None, 1)[0].upper() if trigger else ""
        if keyword in ("ONBUILD", "FROM", "MAINTAINER"):
            raise PlanError(f"ONBUILD: {keyword} is not allowed as a trigger", st.command.pos)
        parse_acifile(trigger, self.filename)  # a trigger with a syntax error fails now, not in the child
        self.stage.onbuild.append(trigger)
