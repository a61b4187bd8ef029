"""The instruction model: one frozen dataclass per instruction, and the Plan.

Both front ends produce these: the ACIfile compiler (acbuild.frontend.compile) and the
interactive verbs (acbuild.cli.session). The engine's Session.apply is the
only thing that executes them. Every instruction carries its source position.
Arguments here are final values: ARG substitution has already happened.

`to_acifile()` renders an instruction back as one ACIfile line, so that a
recorded interactive session can be printed as an ACIfile (acbuild history).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field, fields

from acbuild.errors import ARGV, SourcePos


def _q(word: str) -> str:
    """Quote a word for an ACIfile line, only when it needs it. Inside double
    quotes the compiler reads a backslash before a backslash, a quote or a dollar
    sign as an escape, so a value like "$HOME/x" stays literal."""
    if word and all(c.isascii() and (c.isalnum() or c in "-_./:=@%+,~*?[]{}") for c in word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def _argv(argv: tuple[str, ...]) -> str:
    return json.dumps(list(argv))


def _pairs(items: tuple[tuple[str, str], ...]) -> str:
    return " ".join(f"{_q(k)}={_q(v)}" for k, v in items)


@dataclass(frozen=True)
class Instruction:
    pos: SourcePos = field(default=ARGV, compare=False, kw_only=True)

    keyword = ""

    def to_acifile(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        """A one-line summary for progress output."""
        return self.to_acifile()

    def as_dict(self) -> dict:
        """Plain data for `acbuild plan` (YAML) and metadata files."""
        out: dict = {"instruction": self.keyword}
        for f in fields(self):
            if f.name == "pos":
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else _plain(v) for v in value]
            out[f.name] = _plain(value)
        out["at"] = str(self.pos)
        return out


def _plain(value):
    if isinstance(value, Instruction | RunMount):
        return {k: _plain(v) for k, v in value.__dict__.items() if k != "pos"}
    return value


@dataclass(frozen=True)
class From(Instruction):
    keyword = "FROM"
    base: str  # "scratch", a path to an .aci, an image name, or docker://...
    alias: str = ""
    insecure_skip_verify: bool = False

    def to_acifile(self) -> str:
        return f"FROM {_q(self.base)}" + (f" AS {self.alias}" if self.alias else "")


@dataclass(frozen=True)
class Copy(Instruction):
    keyword = "COPY"
    sources: tuple[str, ...]
    dest: str
    chown: str = ""  # "uid:gid" (numeric), empty = 0:0
    chmod: int | None = None
    from_stage: str = ""

    def to_acifile(self) -> str:
        flags = []
        if self.from_stage:
            flags.append(f"--from={self.from_stage}")
        if self.chown:
            flags.append(f"--chown={self.chown}")
        if self.chmod is not None:
            flags.append(f"--chmod={self.chmod:o}")
        return " ".join(["COPY", *flags, *map(_q, self.sources), _q(self.dest)])


@dataclass(frozen=True)
class RunMount:
    """RUN --mount: a context path (type=bind) or a persistent cache dir (type=cache)."""

    type: str  # "bind" | "cache"
    target: str
    source: str = ""
    read_only: bool = True
    id: str = ""

    def to_flag(self) -> str:
        parts = [f"type={self.type}"]
        if self.source:
            parts.append(f"source={self.source}")
        parts.append(f"target={self.target}")
        if self.id:
            parts.append(f"id={self.id}")
        if self.type == "bind" and not self.read_only:
            parts.append("rw")
        return "--mount=" + ",".join(parts)


@dataclass(frozen=True)
class Run(Instruction):
    keyword = "RUN"
    argv: tuple[str, ...]
    network: str = ""  # "" = the build's default, "none" or "host"
    mounts: tuple[RunMount, ...] = ()
    shell_form: bool = False
    # ARG values in scope: exported to the command, never written to the image.
    arg_env: tuple[tuple[str, str], ...] = ()

    def to_acifile(self) -> str:
        flags = [m.to_flag() for m in self.mounts]
        if self.network:
            flags.append(f"--network={self.network}")
        if self.shell_form and self.argv[:2] == ("/bin/sh", "-c") and len(self.argv) == 3 and "\n" not in self.argv[2]:
            body = self.argv[2]
        else:
            body = _argv(self.argv)
        return " ".join(["RUN", *flags, body])


@dataclass(frozen=True)
class SetName(Instruction):
    keyword = "NAME"
    name: str

    def to_acifile(self) -> str:
        return f"NAME {_q(self.name)}"


@dataclass(frozen=True)
class Label(Instruction):
    keyword = "LABEL"
    items: tuple[tuple[str, str], ...]

    def to_acifile(self) -> str:
        return f"LABEL {_pairs(self.items)}"


@dataclass(frozen=True)
class Annotation(Instruction):
    keyword = "ANNOTATION"
    items: tuple[tuple[str, str], ...]

    def to_acifile(self) -> str:
        return f"ANNOTATION {_pairs(self.items)}"


@dataclass(frozen=True)
class Env(Instruction):
    keyword = "ENV"
    items: tuple[tuple[str, str], ...]

    def to_acifile(self) -> str:
        return f"ENV {_pairs(self.items)}"


@dataclass(frozen=True)
class Remove(Instruction):
    """Undo a manifest entry: the interactive `label remove`, `env remove`...

    ACIfile spelling: `REMOVE LABEL version`, `REMOVE PORT http`."""

    keyword = "REMOVE"
    what: str  # LABEL ANNOTATION ENV PORT MOUNT ISOLATOR DEPENDENCY EXEC EVENT
    name: str

    def to_acifile(self) -> str:
        return f"REMOVE {self.what} {_q(self.name)}"


@dataclass(frozen=True)
class Exec(Instruction):
    keyword = "EXEC"
    argv: tuple[str, ...]

    def to_acifile(self) -> str:
        return f"EXEC {_argv(self.argv)}"


@dataclass(frozen=True)
class WorkDir(Instruction):
    keyword = "WORKDIR"
    path: str

    def to_acifile(self) -> str:
        return f"WORKDIR {_q(self.path)}"


@dataclass(frozen=True)
class User(Instruction):
    keyword = "USER"
    user: str

    def to_acifile(self) -> str:
        return f"USER {_q(self.user)}"


@dataclass(frozen=True)
class Group(Instruction):
    keyword = "GROUP"
    group: str

    def to_acifile(self) -> str:
        return f"GROUP {_q(self.group)}"


@dataclass(frozen=True)
class SupplementaryGroups(Instruction):
    keyword = "SUPPLEMENTARY-GROUPS"
    gids: tuple[int, ...]

    def to_acifile(self) -> str:
        return "SUPPLEMENTARY-GROUPS " + " ".join(map(str, self.gids))


@dataclass(frozen=True)
class Port(Instruction):
    keyword = "PORT"
    name: str
    protocol: str
    port: int
    count: int = 1
    socket_activated: bool = False

    def to_acifile(self) -> str:
        line = f"PORT {self.name} {_q(self.protocol)} {self.port}"
        if self.count != 1 or self.socket_activated:
            line += f" {self.count}"
        return line + (" socket-activated" if self.socket_activated else "")


@dataclass(frozen=True)
class MountPoint(Instruction):
    keyword = "MOUNT"
    name: str
    path: str
    read_only: bool = False

    def to_acifile(self) -> str:
        return f"MOUNT {self.name} {_q(self.path)}" + (" read-only" if self.read_only else "")


@dataclass(frozen=True)
class Isolator(Instruction):
    keyword = "ISOLATOR"
    name: str
    value_json: str  # canonical JSON text of the value

    def to_acifile(self) -> str:
        return f"ISOLATOR {_q(self.name)} {self.value_json}"


@dataclass(frozen=True)
class Dependency(Instruction):
    keyword = "DEPENDENCY"
    image_name: str
    image_id: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    size: int = 0

    def to_acifile(self) -> str:
        flags = []
        if self.image_id:
            flags.append(f"--image-id={self.image_id}")
        if self.size:
            flags.append(f"--size={self.size}")
        parts = ["DEPENDENCY", *flags, _q(self.image_name)]
        if self.labels:
            parts.append(_pairs(self.labels))
        return " ".join(parts)


@dataclass(frozen=True)
class EventHandler(Instruction):
    keyword = "EVENT"
    event: str  # pre-start | post-stop
    argv: tuple[str, ...]

    def to_acifile(self) -> str:
        return f"EVENT {self.event} {_argv(self.argv)}"


@dataclass(frozen=True)
class PathWhitelist(Instruction):
    keyword = "PATH-WHITELIST"
    paths: tuple[str, ...]

    def to_acifile(self) -> str:
        return "PATH-WHITELIST " + " ".join(map(_q, self.paths))


@dataclass(frozen=True)
class ReplaceManifest(Instruction):
    """Replace the whole manifest (interactive `replace-manifest FILE`)."""

    keyword = "MANIFEST"
    manifest_json: str

    def to_acifile(self) -> str:
        return f"MANIFEST {self.manifest_json}"


@dataclass(frozen=True)
class Stage:
    """One FROM ... section of an ACIfile."""

    base: From
    steps: tuple[Instruction, ...]
    index: int

    @property
    def name(self) -> str:
        return self.base.alias or str(self.index)


@dataclass(frozen=True)
class Plan:
    """The compiled build: stages in file order; the last one (or --target) is output."""

    stages: tuple[Stage, ...]
    build_args: tuple[tuple[str, str], ...] = ()
    source: str = ""

    def stage(self, name: str) -> Stage | None:
        for stage in self.stages:
            if stage.name == name:
                return stage
        return None

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "build-args": dict(self.build_args),
            "stages": [
                {"name": s.name, "from": s.base.as_dict(), "steps": [i.as_dict() for i in s.steps]}
                for s in self.stages
            ],
        }


def shell_words(command: str) -> list[str]:
    """Split a command line the way a user's shell would (for set-exec etc.)."""
    return shlex.split(command)
