"""The instruction model: one frozen dataclass per instruction, and the Plan.

Both front ends produce these: the ACIfile compiler (acbuild.frontend.compile) and the
interactive verbs (acbuild.cli.session). The engine's Session.apply is the
only thing that executes them. Every instruction carries its source position.
Arguments here are final values: ARG substitution has already happened.

Each instruction checks its own values when it is made (`problems()`, run by
`__post_init__`, with the appc value checks of acbuild.aci.types), so both front
ends only construct instructions and every rule has one place and one wording.
An InstructionError points at the word that broke the rule when the front end
said where each field was written (`at`), else at the instruction.

`to_acifile()` renders an instruction back as one ACIfile line, so that a
recorded interactive session can be printed as an ACIfile (acbuild history).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterator, Mapping

from acbuild.aci import types as t
from acbuild.errors import ARGV, InstructionError, SourcePos, UsageError
from acbuild.records import dataclass, field, fields

Problems = Iterator[tuple[str, str]]  # (field the problem is in, message)
_STAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
REMOVABLE = ("LABEL", "ANNOTATION", "ENV", "PORT", "MOUNT", "ISOLATOR", "DEPENDENCY", "EVENT", "EXEC")


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
    """One instruction, with where it was written and where each of its fields was."""

    pos: SourcePos = field(default=ARGV, compare=False, kw_only=True)
    # Where each field was written ("name", "items.1", ...), for errors that point at the word.
    at: Mapping[str, SourcePos] = field(default_factory=dict, compare=False, repr=False, kw_only=True)

    keyword = ""

    def __post_init__(self) -> None:
        for where, problem in self.problems():
            raise InstructionError(self.keyword, problem, self.at.get(where, self.pos))

    def problems(self) -> Problems:
        """Every rule this instruction's values break, as (field, message)."""
        return iter(())

    def to_acifile(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        """A one-line summary for progress output (a heredoc's body left out)."""
        return self.to_acifile().split("\n", 1)[0]

    def as_dict(self) -> dict:
        """Plain data for `acbuild plan` (YAML) and metadata files."""
        out: dict = {"instruction": self.keyword}
        for f in fields(self):
            if f.name in ("pos", "at"):
                continue
            value = getattr(self, f.name)
            if f.metadata.get("omit_default") and value == f.default:
                continue  # a newer field: plans (and cache keys) without it stay as they were
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else _plain(v) for v in value]
            out[f.name] = _plain(value)
        out["at"] = str(self.pos)
        return out


def _plain(value):
    if isinstance(value, Instruction | RunMount):
        return {k: _plain(v) for k, v in value.__dict__.items() if k not in ("pos", "at")}
    return value


@dataclass(frozen=True)
class From(Instruction):
    """FROM: a stage's base (an image file, a name, a directory or scratch)."""

    keyword = "FROM"
    base: str  # "scratch", a path to an .aci, an image name, or docker://...; or an earlier stage's name
    alias: str = ""
    insecure_skip_verify: bool = False
    stage: str = ""  # the earlier stage this one starts from (its rootfs and manifest), if any
    # --platform: OS/ARCH[/VARIANT] to pick from a multi-platform base ("" = the build's)
    platform: str = field(default="", metadata={"omit_default": True})

    def problems(self) -> Problems:
        if not self.base:
            yield "base", "empty base image"
        if self.platform and not re.fullmatch(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?", self.platform):
            yield "platform", f'bad --platform "{self.platform}" (OS/ARCH[/VARIANT], like linux/arm64)'
        if self.alias and not _STAGE_NAME.match(self.alias):
            yield "alias", f'bad stage name "{self.alias}" (lower-case letters, digits, "_.-")'

    def to_acifile(self) -> str:
        platform = f"--platform={self.platform} " if self.platform else ""
        return f"FROM {platform}{_q(self.stage or self.base)}" + (f" AS {self.alias}" if self.alias else "")


@dataclass(frozen=True)
class Copy(Instruction):
    """COPY: files of the context, of another stage or image, or a heredoc, into the image."""

    keyword = "COPY"
    sources: tuple[str, ...]
    dest: str
    chown: str = ""  # "user[:group]", names or numbers; empty = 0:0
    chmod: int | None = None
    from_stage: str = ""
    # COPY <<EOF DEST: sources named here are these texts, not context files.
    inline: tuple[tuple[str, str], ...] = ()
    # --parents: keep each source's path (after a `/./`) under DEST (COPY only).
    parents: bool = field(default=False, metadata={"omit_default": True})
    # --exclude: .dockerignore-style patterns left out below each source.
    exclude: tuple[str, ...] = field(default=(), metadata={"omit_default": True})

    def problems(self) -> Problems:
        if self.chown and not re.fullmatch(r"[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?", self.chown):
            yield "chown", f'bad --chown "{self.chown}" (USER[:GROUP], names or numbers)'
        if self.chmod is not None and not 0 <= self.chmod <= 0o7777:
            yield "chmod", f'bad --chmod "{self.chmod:o}" (octal, like 755 or 0644)'
        for i, src in enumerate(self.sources):
            if not src:
                yield f"sources.{i}", "empty source"
            elif self.from_stage or src in dict(self.inline):
                continue
            elif "://" in src:
                if self.keyword != "ADD":
                    yield f"sources.{i}", f'source "{src}" is a URL: only ADD downloads'
            elif posixpath.isabs(src):
                yield f"sources.{i}", f'source "{src}" is absolute; sources are relative to the build context'
            elif posixpath.normpath(src).split("/")[0] == "..":
                yield f"sources.{i}", f'source "{src}" is outside the build context'
        if not self.dest:
            yield "dest", "empty destination"
        if self.parents and self.keyword == "ADD":
            yield "parents", "--parents is a COPY flag (BuildKit's ADD has none)"
        if self.parents and self.inline:
            yield "parents", "--parents does not go with heredoc sources"
        for i, pattern in enumerate(self.exclude):
            if not pattern.strip() or pattern.strip().lstrip("!") == "":
                yield f"exclude.{i}", "empty --exclude pattern"

    def to_acifile(self) -> str:
        flags = []
        if self.from_stage:
            flags.append(f"--from={self.from_stage}")
        if self.parents:
            flags.append("--parents")
        flags.extend(f"--exclude={_q(pattern)}" for pattern in self.exclude)
        if self.chown:
            flags.append(f"--chown={self.chown}")
        if self.chmod is not None:
            flags.append(f"--chmod={self.chmod:o}")
        line = " ".join([self.keyword, *flags, *(f"<<{s}" if s in dict(self.inline) else _q(s) for s in self.sources), _q(self.dest)])
        return line + "".join(f"\n{text}{name}" for name, text in self.inline)


@dataclass(frozen=True)
class Add(Copy):
    """ADD: COPY that also unpacks local tar archives (gzip, bzip2, xz or none) into
    DEST, as Docker does, with the safe extraction of acbuild.aci.archive."""

    keyword = "ADD"
    checksum: str = ""  # "sha256:HEX": what a downloaded URL must hash to

    def problems(self) -> Problems:
        yield from super().problems()
        if self.checksum and not re.fullmatch(r"sha256:[0-9a-f]{64}", self.checksum):
            yield "checksum", f'bad --checksum "{self.checksum}" (sha256: and 64 lowercase hex digits)'
        if self.checksum and not all("://" in s for s in self.sources):
            yield "checksum", "--checksum goes with URL sources only"

    def to_acifile(self) -> str:
        line = super().to_acifile()
        return line.replace("ADD ", f"ADD --checksum={self.checksum} ", 1) if self.checksum else line


@dataclass(frozen=True)
class RunMount:
    """RUN --mount: a context path (type=bind), a persistent cache dir (type=cache),
    an empty tmpfs (type=tmpfs), a build secret (type=secret: the file given with
    `--secret id=ID,...`, by id: its content is never part of the plan) or the SSH
    agent socket (type=ssh, with `--ssh default`)."""

    type: str  # "bind" | "cache" | "tmpfs" | "secret" | "ssh"
    target: str
    source: str = ""
    read_only: bool = True
    id: str = ""
    required: bool = False  # secret/ssh: fail when it was not given
    from_stage: str = ""  # bind: `source` is a path in this earlier stage, not in the context

    def __post_init__(self) -> None:
        if self.type not in MOUNT_TYPES:
            raise InstructionError("RUN --mount", f'type must be one of {", ".join(MOUNT_TYPES)}, not "{self.type}"')
        if not self.target.startswith("/"):
            raise InstructionError("RUN --mount", "target=/ABSOLUTE/PATH is required")
        if self.from_stage and self.type != "bind":
            raise InstructionError("RUN --mount", f"from= goes with type=bind only (not {self.type})")
        if self.type == "bind" and not self.from_stage and (posixpath.isabs(self.source) or posixpath.normpath(self.source).split("/")[0] == ".."):
            raise InstructionError("RUN --mount", f'source "{self.source}" must be inside the build context')

    def to_flag(self) -> str:
        parts = [f"type={self.type}"]
        if self.from_stage:
            parts.append(f"from={self.from_stage}")
        if self.source:
            parts.append(f"source={self.source}")
        parts.append(f"target={self.target}")
        if self.id:
            parts.append(f"id={self.id}")
        if self.type == "bind" and not self.read_only:
            parts.append("rw")
        if self.required:
            parts.append("required")
        return "--mount=" + ",".join(parts)


@dataclass(frozen=True)
class Run(Instruction):
    """RUN: a command in the sandbox, with its network and its mounts."""

    keyword = "RUN"
    argv: tuple[str, ...]
    network: str = ""  # "" = the build's default, "none" or "host"
    mounts: tuple[RunMount, ...] = ()
    shell_form: bool = False
    # ARG values in scope: exported to the command, never written to the image.
    arg_env: tuple[tuple[str, str], ...] = ()

    def problems(self) -> Problems:
        if self.network not in ("", "none", "host"):
            yield "network", f'--network must be "none" or "host", not "{self.network}"'
        if not self.argv:
            yield "argv", "missing command"

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
    """NAME: the image's appc name."""

    keyword = "NAME"
    name: str

    def problems(self) -> Problems:
        if problem := t.acidentifier_problem(self.name):
            yield "name", problem

    def to_acifile(self) -> str:
        return f"NAME {_q(self.name)}"


@dataclass(frozen=True)
class Label(Instruction):
    """LABEL: image labels (version, os, arch, ...)."""

    keyword = "LABEL"
    items: tuple[tuple[str, str], ...]

    def problems(self) -> Problems:
        labels = dict(self.items)
        for i, (name, _) in enumerate(self.items):
            if problem := t.label_name_problem(name):
                yield f"items.{i}", problem
        if "os" in labels and (problem := t.os_arch_problem(labels["os"], labels.get("arch"))):
            yield f"items.{[k for k, _ in self.items].index('os')}", problem

    def to_acifile(self) -> str:
        return f"LABEL {_pairs(self.items)}"


@dataclass(frozen=True)
class Annotation(Instruction):
    """ANNOTATION: image annotations."""

    keyword = "ANNOTATION"
    items: tuple[tuple[str, str], ...]

    def problems(self) -> Problems:
        checks = {"created": t.date_problem, "homepage": t.url_problem, "documentation": t.url_problem}
        for i, (name, value) in enumerate(self.items):
            if problem := t.acidentifier_problem(name):
                yield f"items.{i}", problem
            elif name in checks and (problem := checks[name](value)):
                yield f"items.{i}", f"{name}: {problem}"

    def to_acifile(self) -> str:
        return f"ANNOTATION {_pairs(self.items)}"


@dataclass(frozen=True)
class Env(Instruction):
    """ENV: the app's environment variables."""

    keyword = "ENV"
    items: tuple[tuple[str, str], ...]

    def problems(self) -> Problems:
        for i, (name, _) in enumerate(self.items):
            if problem := t.env_name_problem(name):
                yield f"items.{i}", problem

    def to_acifile(self) -> str:
        return f"ENV {_pairs(self.items)}"


@dataclass(frozen=True)
class Remove(Instruction):
    """Undo a manifest entry: the interactive `label remove`, `env remove`...

    ACIfile spelling: `REMOVE LABEL version`, `REMOVE PORT http`."""

    keyword = "REMOVE"
    what: str  # LABEL ANNOTATION ENV PORT MOUNT ISOLATOR DEPENDENCY EXEC EVENT
    name: str

    def problems(self) -> Problems:
        if self.what not in REMOVABLE:
            yield "what", f'can remove {", ".join(REMOVABLE)}, not "{self.what}"'

    def to_acifile(self) -> str:
        return f"REMOVE {self.what} {_q(self.name)}"


@dataclass(frozen=True)
class Exec(Instruction):
    """EXEC: the app's command line."""

    keyword = "EXEC"
    argv: tuple[str, ...]

    def problems(self) -> Problems:
        if not self.argv:
            yield "argv", "missing command"

    def to_acifile(self) -> str:
        return f"EXEC {_argv(self.argv)}"


@dataclass(frozen=True)
class Entrypoint(Instruction):
    """Docker's ENTRYPOINT: the app's exec becomes ENTRYPOINT + CMD. Kept, as
    docker2aci keeps them, in the annotations appc.io/docker/entrypoint and
    appc.io/docker/cmd; `reset_cmd` drops a CMD inherited from the base (Docker
    does so unless the stage set its own CMD)."""

    keyword = "ENTRYPOINT"
    argv: tuple[str, ...]
    reset_cmd: bool = True

    def to_acifile(self) -> str:
        return f"ENTRYPOINT {_argv(self.argv)}"


@dataclass(frozen=True)
class Cmd(Instruction):
    """Docker's CMD: the default arguments after ENTRYPOINT (or the command)."""

    keyword = "CMD"
    argv: tuple[str, ...]

    def to_acifile(self) -> str:
        return f"CMD {_argv(self.argv)}"


@dataclass(frozen=True)
class WorkDir(Instruction):
    """WORKDIR: the app's working directory (made in the image)."""

    keyword = "WORKDIR"
    path: str

    def problems(self) -> Problems:
        if problem := t.absolute_path_problem(self.path):
            yield "path", problem

    def to_acifile(self) -> str:
        return f"WORKDIR {_q(self.path)}"


@dataclass(frozen=True)
class User(Instruction):
    """USER u sets the user; `group` "" (a Dockerfile's `USER u`) also sets the
    group: u's primary group from the image's /etc/passwd (0 when u is not
    there), as Docker does; None (the interactive set-user) leaves it alone."""

    keyword = "USER"
    user: str
    group: str | None = None

    def problems(self) -> Problems:
        if not self.user:
            yield "user", "empty value"

    def to_acifile(self) -> str:
        return f"USER {_q(self.user)}" + (f":{_q(self.group)}" if self.group else "")


@dataclass(frozen=True)
class Group(Instruction):
    """GROUP: the group the app runs as."""

    keyword = "GROUP"
    group: str

    def problems(self) -> Problems:
        if not self.group:
            yield "group", "empty value"

    def to_acifile(self) -> str:
        return f"GROUP {_q(self.group)}"


@dataclass(frozen=True)
class SupplementaryGroups(Instruction):
    """SUPPLEMENTARY-GROUPS: the app's additional group ids."""

    keyword = "SUPPLEMENTARY-GROUPS"
    gids: tuple[int, ...]

    def problems(self) -> Problems:
        for i, gid in enumerate(self.gids):
            if not 0 <= gid < 2**32:
                yield f"gids.{i}", f'"{gid}" is not a group id (a whole number below 2^32)'

    def to_acifile(self) -> str:
        return "SUPPLEMENTARY-GROUPS " + " ".join(map(str, self.gids))


@dataclass(frozen=True)
class Port(Instruction):
    """PORT: a port the app listens on."""

    keyword = "PORT"
    name: str
    protocol: str
    port: int
    count: int = 1
    socket_activated: bool = False

    def problems(self) -> Problems:
        if problem := t.acname_problem(self.name):
            yield "name", problem
        if not self.protocol:
            yield "protocol", "empty protocol"
        if problem := t.port_problem(self.port, self.count):
            yield ("port" if "end of" not in problem else "count"), problem

    def to_acifile(self) -> str:
        line = f"PORT {self.name} {_q(self.protocol)} {self.port}"
        if self.count != 1 or self.socket_activated:
            line += f" {self.count}"
        return line + (" socket-activated" if self.socket_activated else "")


@dataclass(frozen=True)
class MountPoint(Instruction):
    """MOUNT: a named mount point of the app."""

    keyword = "MOUNT"
    name: str
    path: str
    read_only: bool = False

    def problems(self) -> Problems:
        if problem := t.acname_problem(self.name):
            yield "name", problem
        if problem := t.absolute_path_problem(self.path):
            yield "path", problem

    def to_acifile(self) -> str:
        return f"MOUNT {self.name} {_q(self.path)}" + (" read-only" if self.read_only else "")


@dataclass(frozen=True)
class Isolator(Instruction):
    """ISOLATOR: a named isolator and its JSON value."""

    keyword = "ISOLATOR"
    name: str
    value_json: str  # canonical JSON text of the value

    def problems(self) -> Problems:
        if problem := t.acidentifier_problem(self.name):
            yield "name", problem
        elif self.name not in t.KNOWN_ISOLATORS:
            yield "name", f'invalid isolator "{self.name}" (known: {", ".join(sorted(t.KNOWN_ISOLATORS))})'
        elif problem := t.isolator_problem(self.name, json.loads(self.value_json)):
            yield "value_json", f"{self.name}: {problem}"

    def to_acifile(self) -> str:
        return f"ISOLATOR {_q(self.name)} {self.value_json}"


@dataclass(frozen=True)
class Dependency(Instruction):
    """DEPENDENCY: an image this one is rendered on."""

    keyword = "DEPENDENCY"
    image_name: str
    image_id: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    size: int = 0

    def problems(self) -> Problems:
        if problem := t.acidentifier_problem(self.image_name):
            yield "image_name", problem
        if self.image_id and (problem := t.image_id_problem(self.image_id)):
            yield "image_id", problem
        for i, (name, _) in enumerate(self.labels):
            if problem := t.acidentifier_problem(name):
                yield f"labels.{i}", f"label: {problem}"
        if self.size < 0:
            yield "size", "--size must not be negative"

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
    """EVENT: a pre-start or post-stop command."""

    keyword = "EVENT"
    event: str  # pre-start | post-stop
    argv: tuple[str, ...]

    def problems(self) -> Problems:
        if self.event not in ("pre-start", "post-stop"):
            yield "event", f'must be "pre-start" or "post-stop", not "{self.event}"'
        if not self.argv:
            yield "argv", "missing command"

    def to_acifile(self) -> str:
        return f"EVENT {self.event} {_argv(self.argv)}"


@dataclass(frozen=True)
class PathWhitelist(Instruction):
    """PATH-WHITELIST: the paths of the rendered tree the app may see."""

    keyword = "PATH-WHITELIST"
    paths: tuple[str, ...]

    def problems(self) -> Problems:
        for i, path in enumerate(self.paths):
            if problem := t.absolute_path_problem(path):
                yield f"paths.{i}", problem

    def to_acifile(self) -> str:
        return "PATH-WHITELIST " + " ".join(map(_q, self.paths))


@dataclass(frozen=True)
class ReplaceManifest(Instruction):
    """Replace the whole manifest (interactive `replace-manifest FILE`)."""

    keyword = "MANIFEST"
    manifest_json: str

    def problems(self) -> Problems:
        try:
            value = json.loads(self.manifest_json)
        except ValueError as err:
            yield "manifest_json", f"not JSON ({err.msg})"
            return
        if not isinstance(value, dict):
            yield "manifest_json", "the manifest must be a JSON object"

    def to_acifile(self) -> str:
        return f"MANIFEST {self.manifest_json}"


@dataclass(frozen=True)
class Stage:
    """One FROM ... section of an ACIfile, or (implicit) an image that COPY --from or
    RUN --mount=from= names: a stage of just its FROM, named after the image, after
    the file's own stages (as BuildKit makes one for such an image)."""

    base: From
    steps: tuple[Instruction, ...]
    index: int
    implicit: bool = False

    @property
    def name(self) -> str:
        return self.base.base if self.implicit else self.base.alias or str(self.index)


@dataclass(frozen=True)
class Plan:
    """The compiled build: stages in file order; the last one (or --target) is output."""

    stages: tuple[Stage, ...]
    build_args: tuple[tuple[str, str], ...] = ()
    source: str = ""
    unused_build_args: tuple[str, ...] = ()  # --build-arg names no ARG declares

    def stage(self, name: str) -> Stage | None:
        for stage in self.stages:
            if stage.name == name:
                return stage
        return None

    def output(self, target: str | None = None) -> Stage:
        """The stage the build writes: --target, else the last of the file's stages."""
        written = [s for s in self.stages if not s.implicit]
        if target is None:
            return written[-1]
        stage = self.stage(target)
        if stage is None or stage.implicit:
            raise UsageError(f'--target: no stage "{target}" (stages: {", ".join(s.name for s in written)})')
        return stage

    def unnamed(self, stage: Stage) -> bool:
        """Would this stage's image have no name? True when no NAME is set in it or
        in the stages it is built on, down to scratch (an image file or layout
        base brings its own name)."""
        while not any(isinstance(step, SetName) for step in stage.steps):
            if not stage.base.stage:
                return stage.base.base == "scratch"
            stage = self.stage(stage.base.stage)
        return False

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "build-args": dict(self.build_args),
            **({"unused-build-args": list(self.unused_build_args)} if self.unused_build_args else {}),
            "stages": [
                {"name": s.name, **({"implicit": True} if s.implicit else {}), "from": s.base.as_dict(),
                 "steps": [i.as_dict() for i in s.steps]}
                for s in self.stages
            ],
        }

