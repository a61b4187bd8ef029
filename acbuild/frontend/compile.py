"""Statements -> Plan: give each parsed instruction its meaning.

Here words lose their quotes and gain their $VARIABLES (ARGs and ENVs set so far,
as in a Dockerfile), values are checked against the appc rules, and every error
points at the word that caused it. RUN and EXEC commands are not substituted:
the shell inside the image does that, and ARG values reach RUN as environment.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field

from acbuild import limits
from acbuild import plan as p
from acbuild.aci import types as t
from acbuild.errors import PlanError
from acbuild.frontend.parse import Statement, Word, parse_acifile

_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<arg>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
# Manifest entries an ACIfile may give only once per stage (a second one is
# almost always a mistake). WORKDIR, USER and GROUP may repeat, as in a Dockerfile:
# each applies to the RUN steps after it.
_ONCE = {"NAME", "EXEC"}


def compile_file(path, build_args: dict[str, str] | None = None) -> p.Plan:
    """Read, parse and compile an ACIfile."""
    from pathlib import Path

    path = Path(path)
    try:
        text = limits.read_regular_file(path, "ACIfile", limits.MAX_ACIFILE_BYTES, error=PlanError).decode()
    except FileNotFoundError as err:
        from acbuild.errors import NotFoundError

        raise NotFoundError(f"cannot read {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise PlanError(f"{path}: not a text file ({err.reason})") from err
    return compile_text(text, str(path), build_args)


def compile_text(text: str, filename: str = "ACIfile", build_args: dict[str, str] | None = None) -> p.Plan:
    return Compiler(filename, dict(build_args or {})).compile(parse_acifile(text, filename))


@dataclass
class _StageState:
    base: p.From
    index: int
    steps: list[p.Instruction] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, Word] = field(default_factory=dict)
    annotations: dict[str, Word] = field(default_factory=dict)
    once: dict[str, Statement] = field(default_factory=dict)


class Compiler:
    def __init__(self, filename: str, build_args: dict[str, str]):
        self.filename = filename
        self.build_args = build_args
        self.args: dict[str, str] = {}  # ARGs declared so far, with their values
        self.used_args: set[str] = set()
        self.stages: list[p.Stage] = []
        self.stage: _StageState | None = None

    # -- driver -------------------------------------------------------------

    def compile(self, statements: list[Statement]) -> p.Plan:
        for st in statements:
            if st.keyword == "ARG":
                self._arg(st)
            elif st.keyword == "FROM":
                self._finish_stage()
                base = self._from(st)
                self.stage = _StageState(base=base, index=len(self.stages))
            elif self.stage is None:
                raise PlanError(f"{st.keyword} before FROM: an ACIfile starts with FROM (only ARG may come first)", st.pos)
            else:
                self._step(st)
        self._finish_stage()
        if not self.stages:
            raise PlanError("no FROM instruction: nothing to build", None)
        names = [s.base.alias for s in self.stages if s.base.alias]
        for stage in self.stages:
            for step in stage.steps:
                if isinstance(step, p.Copy) and step.from_stage and not self._stage_before(step.from_stage, stage.index):
                    raise PlanError(f'COPY --from: no stage "{step.from_stage}" before this one (stages: {", ".join(names) or "none named"})', step.pos)
        return p.Plan(stages=tuple(self.stages), build_args=tuple(sorted(self.build_args.items())), source=self.filename)

    def unused_build_args(self) -> list[str]:
        return sorted(set(self.build_args) - self.used_args)

    def _stage_before(self, name: str, index: int) -> bool:
        return any((s.name == name) for s in self.stages[:index])

    def _finish_stage(self) -> None:
        if self.stage is not None:
            s = self.stage
            self.stages.append(p.Stage(base=s.base, steps=tuple(s.steps), index=s.index))
        self.stage = None

    def _step(self, st: Statement) -> None:
        state = self.stage
        assert state is not None
        if st.keyword in _ONCE:
            if st.keyword in state.once:
                first = state.once[st.keyword].pos
                raise PlanError(f"{st.keyword} given twice in this stage (first at line {first.line})", st.pos)
            state.once[st.keyword] = st
        builder = getattr(self, "_" + st.keyword.lower().replace("-", "_"))
        instruction = builder(st)
        if isinstance(instruction, p.Env):
            state.env.update(instruction.items)
        if isinstance(instruction, p.Remove) and instruction.what == "EXEC":
            state.once.pop(instruction.what, None)
        state.steps.append(instruction)

    # -- words ----------------------------------------------------------------

    def expand(self, word: Word) -> str:
        """Remove quotes and substitute $VAR / ${VAR} / ${VAR:-default} / ${VAR:+alt}."""
        text, out, i = word.text, [], 0
        quote, grown = "", 0
        while i < len(text):
            c = text[i]
            if quote == "'":
                if c == "'":
                    quote = ""
                else:
                    out.append(c)
                i += 1
            elif c == "\\" and i + 1 < len(text) and (not quote or text[i + 1] in '"\\$'):
                out.append(text[i + 1])
                i += 2
            elif c in "\"'" and (not quote or c == quote):
                quote = "" if quote else c
                i += 1
            elif c == "$":
                m = _VAR.match(text, i)
                if not m:
                    out.append(c)
                    i += 1
                    continue
                value = self._lookup(m)
                grown += len(value)
                limits.check_expanded_size(grown + len(text), word.pos)
                out.append(value)
                i = m.end()
            else:
                out.append(c)
                i += 1
        if quote:
            raise PlanError(f"unterminated {quote} quote", word.pos)
        return "".join(out)

    def _lookup(self, m: re.Match) -> str:
        name = m.group("braced") or m.group("plain")
        env = self.stage.env if self.stage else {}
        value = env.get(name, self.args.get(name))
        if name in self.args:
            self.used_args.add(name)
        op = m.group("op")
        if op == "-":
            return value if value else m.group("arg")
        if op == "+":
            return m.group("arg") if value else ""
        return value or ""

    def _pairs(self, st: Statement, words=None) -> tuple[tuple[Word, str, str], ...]:
        pairs = []
        for w in words if words is not None else st.words:
            text = self.expand(w)
            if "=" not in text:
                raise PlanError(f'{st.keyword}: expected NAME=VALUE, got "{text}"', w.pos)
            name, value = text.split("=", 1)
            pairs.append((w, name, value))
        return tuple(pairs)

    def _flags(self, st: Statement, allowed: set[str]) -> dict[str, tuple[Word, str]]:
        flags: dict[str, tuple[Word, str]] = {}
        for w in st.flags:
            name, _, value = w.text[2:].partition("=")
            if name not in allowed:
                known = ", ".join(f"--{a}" for a in sorted(allowed)) or "none"
                raise PlanError(f"{st.keyword}: unknown flag --{name} (known: {known})", w.pos)
            if name in flags and name != "mount":
                raise PlanError(f"{st.keyword}: --{name} given twice", w.pos)
            flags.setdefault(name, (w, self.expand(Word(value, w.pos))))
        return flags

    @staticmethod
    def _check(problem: str | None, word: Word, what: str = "") -> None:
        if problem:
            raise PlanError(f"{what}{problem}", word.pos)

    def _command(self, st: Statement) -> tuple[tuple[str, ...], bool]:
        """(argv, shell_form) for RUN/EXEC/EVENT. Exec form is a JSON list of strings."""
        assert st.command is not None
        text = st.command.text
        if st.json_form:
            limits.check_json_depth(text, st.keyword, st.command.pos)
            try:
                value = json.loads(re.sub(r"\\[ \t]*\r?\n", "", text))
            except ValueError:
                value = None
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                return tuple(value), False
        command = re.sub(r"\\[ \t]*\r?\n", "", text).strip()
        return ("/bin/sh", "-c", command), True

    # -- instructions -----------------------------------------------------------

    def _arg(self, st: Statement) -> None:
        word = st.words[0]
        name, has_default, default = word.text.partition("=")
        if not _ARG_NAME.match(name):
            raise PlanError(f'ARG: bad name "{name}" (letters, digits and _, not starting with a digit)', word.pos)
        default = self.expand(Word(default, word.pos)) if has_default else ""
        self.args[name] = self.build_args.get(name, default)
        if name in self.build_args:
            self.used_args.add(name)

    def _from(self, st: Statement) -> p.From:
        flags = self._flags(st, {"insecure-skip-verify"})
        base = self.expand(st.words[0])
        if not base:
            raise PlanError("FROM: empty base image", st.words[0].pos)
        alias = ""
        if st.alias is not None:
            alias = self.expand(st.alias)
            if not _STAGE_NAME.match(alias):
                raise PlanError(f'FROM: bad stage name "{alias}" (lower-case letters, digits, "_.-")', st.alias.pos)
            if any(s.base.alias == alias for s in self.stages):
                raise PlanError(f'FROM: stage "{alias}" defined twice', st.alias.pos)
        return p.From(base=base, alias=alias, insecure_skip_verify="insecure-skip-verify" in flags, pos=st.pos)

    def _copy(self, st: Statement) -> p.Copy:
        flags = self._flags(st, {"chown", "chmod", "from"})
        chown = flags.get("chown", (None, ""))[1]
        if chown and not re.fullmatch(r"[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?", chown):
            raise PlanError(f'COPY: bad --chown "{chown}" (USER[:GROUP], names or numbers)', flags["chown"][0].pos)
        chmod = None
        if "chmod" in flags:
            word, text = flags["chmod"]
            if not re.fullmatch(r"[0-7]{3,4}", text):
                raise PlanError(f'COPY: bad --chmod "{text}" (octal, like 755 or 0644)', word.pos)
            chmod = int(text, 8)
        from_stage = flags.get("from", (None, ""))[1]
        *sources, dest_word = st.words
        src_paths = []
        for w in sources:
            src = self.expand(w)
            if not from_stage:
                if posixpath.isabs(src):
                    raise PlanError(f'COPY: source "{src}" is absolute; sources are relative to the build context', w.pos)
                norm = posixpath.normpath(src)
                if norm == ".." or norm.startswith("../"):
                    raise PlanError(f'COPY: source "{src}" is outside the build context', w.pos)
            if not src:
                raise PlanError("COPY: empty source", w.pos)
            src_paths.append(src)
        dest = self.expand(dest_word)
        if not dest:
            raise PlanError("COPY: empty destination", dest_word.pos)
        return p.Copy(sources=tuple(src_paths), dest=dest, chown=chown, chmod=chmod, from_stage=from_stage, pos=st.pos)

    def _run(self, st: Statement) -> p.Run:
        flags = [(w, w.text[2:].partition("=")) for w in st.flags]
        network, mounts = "", []
        for w, (name, _, raw) in flags:
            value = self.expand(Word(raw, w.pos))
            if name == "network":
                if value not in ("none", "host"):
                    raise PlanError(f'RUN: --network must be "none" or "host", not "{value}"', w.pos)
                network = value
            elif name == "mount":
                mounts.append(self._mount_flag(value, w))
            else:
                raise PlanError(f"RUN: unknown flag --{name} (known: --mount, --network)", w.pos)
        argv, shell = self._command(st)
        arg_env = tuple(sorted(self.args.items()))
        return p.Run(argv=argv, network=network, mounts=tuple(mounts), shell_form=shell, arg_env=arg_env, pos=st.pos)

    def _mount_flag(self, value: str, w: Word) -> p.RunMount:
        opts: dict[str, str] = {}
        for part in value.split(","):
            key, eq, val = part.partition("=")
            opts[key.strip()] = val if eq else "true"
        kind = opts.pop("type", "bind")
        target = opts.pop("target", opts.pop("dst", opts.pop("destination", "")))
        if kind not in ("bind", "cache"):
            raise PlanError(f'RUN --mount: type must be "bind" or "cache", not "{kind}"', w.pos)
        if not target.startswith("/"):
            raise PlanError("RUN --mount: target=/ABSOLUTE/PATH is required", w.pos)
        source = opts.pop("source", opts.pop("src", ""))
        read_only = kind == "bind" and opts.pop("rw", opts.pop("readwrite", "false")) != "true"
        opts.pop("ro", None)
        mount_id = opts.pop("id", "")
        if kind == "bind":
            source = source or "."
            norm = posixpath.normpath(source)
            if posixpath.isabs(source) or norm == ".." or norm.startswith("../"):
                raise PlanError(f'RUN --mount: source "{source}" must be inside the build context', w.pos)
        if opts:
            raise PlanError(f"RUN --mount: unknown option {sorted(opts)[0]}", w.pos)
        return p.RunMount(type=kind, target=target, source=source, read_only=read_only, id=mount_id)

    def _exec(self, st: Statement) -> p.Exec:
        argv, _ = self._command(st)
        return p.Exec(argv=argv, pos=st.pos)

    def _event(self, st: Statement) -> p.EventHandler:
        event = self.expand(st.words[0])
        if event not in ("pre-start", "post-stop"):
            raise PlanError(f'EVENT: must be "pre-start" or "post-stop", not "{event}"', st.words[0].pos)
        argv, _ = self._command(st)
        return p.EventHandler(event=event, argv=argv, pos=st.pos)

    def _label(self, st: Statement) -> p.Label:
        state = self.stage
        items = []
        for w, name, value in self._pairs(st):
            self._check(t.acidentifier_problem(name), w, "LABEL: ")
            if name == "name":
                raise PlanError('LABEL: a label cannot be called "name" (use NAME)', w.pos)
            if name in state.labels:
                raise PlanError(f'duplicate label "{name}" (first set at line {state.labels[name].pos.line})', w.pos)
            state.labels[name] = w
            items.append((name, value))
        labels = dict(items)
        if "os" in labels:
            self._check(t.os_arch_problem(labels["os"], labels.get("arch")), state.labels["os"], "LABEL: ")
        return p.Label(items=tuple(items), pos=st.pos)

    def _annotation(self, st: Statement) -> p.Annotation:
        state = self.stage
        items = []
        for w, name, value in self._pairs(st):
            self._check(t.acidentifier_problem(name), w, "ANNOTATION: ")
            if name in state.annotations:
                raise PlanError(f'duplicate annotation "{name}" (first set at line {state.annotations[name].pos.line})', w.pos)
            if name == "created":
                self._check(t.date_problem(value), w, "ANNOTATION created: ")
            if name in ("homepage", "documentation"):
                self._check(t.url_problem(value), w, f"ANNOTATION {name}: ")
            state.annotations[name] = w
            items.append((name, value))
        return p.Annotation(items=tuple(items), pos=st.pos)

    def _env(self, st: Statement) -> p.Env:
        # As in a Dockerfile, $VARS in an ENV see the values from before this line.
        items = []
        for w, name, value in self._pairs(st):
            self._check(t.env_name_problem(name), w, "ENV: ")
            items.append((name, value))
        return p.Env(items=tuple(items), pos=st.pos)

    def _name(self, st: Statement) -> p.SetName:
        name = self.expand(st.words[0])
        self._check(t.acidentifier_problem(name), st.words[0], "NAME: ")
        return p.SetName(name=name, pos=st.pos)

    def _workdir(self, st: Statement) -> p.WorkDir:
        path = self.expand(st.words[0])
        if not path.startswith("/"):
            raise PlanError(f'WORKDIR must be an absolute path, not "{path}"', st.words[0].pos)
        return p.WorkDir(path=path, pos=st.pos)

    def _user(self, st: Statement) -> p.User:
        return p.User(user=self._nonempty(st), pos=st.pos)

    def _group(self, st: Statement) -> p.Group:
        return p.Group(group=self._nonempty(st), pos=st.pos)

    def _nonempty(self, st: Statement) -> str:
        value = self.expand(st.words[0])
        if not value:
            raise PlanError(f"{st.keyword}: empty value", st.words[0].pos)
        return value

    def _int(self, st: Statement, w: Word, what: str, low: int, high: int) -> int:
        text = self.expand(w)
        if not re.fullmatch(r"[0-9]+", text) or not low <= int(text) <= high:
            raise PlanError(f'{st.keyword}: {what} must be a whole number from {low} to {high}, not "{text}"', w.pos)
        return int(text)

    def _supplementary_groups(self, st: Statement) -> p.SupplementaryGroups:
        gids = tuple(self._int(st, w, "a group id", 0, 2**32 - 1) for w in st.words)
        return p.SupplementaryGroups(gids=gids, pos=st.pos)

    def _port(self, st: Statement) -> p.Port:
        words = list(st.words)
        socket = False
        if len(words) > 3 and self.expand(words[-1]) == "socket-activated":
            socket = True
            words.pop()
        if len(words) > 4:
            raise PlanError('PORT: the fifth argument can only be "socket-activated"', words[4].pos)
        name = self.expand(words[0])
        self._check(t.acname_problem(name), words[0], "PORT: ")
        protocol = self.expand(words[1])
        if not protocol:
            raise PlanError("PORT: empty protocol", words[1].pos)
        port = self._int(st, words[2], "the port", 1, 65535)
        count = self._int(st, words[3], "the count", 1, 65535) if len(words) > 3 else 1
        if port + count > 65536:
            raise PlanError(f"PORT: the range {port}+{count} ends past 65535", words[3].pos)
        return p.Port(name=name, protocol=protocol, port=port, count=count, socket_activated=socket, pos=st.pos)

    def _mount(self, st: Statement) -> p.MountPoint:
        name = self.expand(st.words[0])
        self._check(t.acname_problem(name), st.words[0], "MOUNT: ")
        path = self.expand(st.words[1])
        if not path.startswith("/"):
            raise PlanError(f'MOUNT: the path must be absolute, not "{path}"', st.words[1].pos)
        read_only = False
        if len(st.words) > 2:
            flag = self.expand(st.words[2])
            if flag != "read-only":
                raise PlanError(f'MOUNT: the third argument can only be "read-only", not "{flag}"', st.words[2].pos)
            read_only = True
        return p.MountPoint(name=name, path=path, read_only=read_only, pos=st.pos)

    def _isolator(self, st: Statement) -> p.Isolator:
        name = self.expand(st.words[0])
        self._check(t.acidentifier_problem(name), st.words[0], "ISOLATOR: ")
        if name not in t.KNOWN_ISOLATORS:
            known = ", ".join(sorted(t.KNOWN_ISOLATORS))
            raise PlanError(f'ISOLATOR: invalid isolator "{name}" (known: {known})', st.words[0].pos)
        assert st.command is not None
        limits.check_json_depth(st.command.text, "ISOLATOR", st.command.pos)
        try:
            value = json.loads(re.sub(r"\\[ \t]*\r?\n", "", st.command.text))
        except ValueError as err:
            raise PlanError(f"ISOLATOR: the value is not JSON ({err.msg})", st.command.pos) from None
        self._check(t.isolator_problem(name, value), st.command, f"ISOLATOR {name}: ")
        return p.Isolator(name=name, value_json=json.dumps(value, sort_keys=True, separators=(",", ":")), pos=st.pos)

    def _dependency(self, st: Statement) -> p.Dependency:
        flags = self._flags(st, {"image-id", "size"})
        name = self.expand(st.words[0])
        self._check(t.acidentifier_problem(name), st.words[0], "DEPENDENCY: ")
        image_id = ""
        if "image-id" in flags:
            word, image_id = flags["image-id"]
            self._check(t.image_id_problem(image_id), word, "DEPENDENCY: ")
        size = 0
        if "size" in flags:
            word, text = flags["size"]
            if not text.isdigit():
                raise PlanError(f'DEPENDENCY: --size must be a number of bytes, not "{text}"', word.pos)
            size = int(text)
        labels = []
        for w, label, value in self._pairs(st, st.words[1:]):
            self._check(t.acidentifier_problem(label), w, "DEPENDENCY label: ")
            labels.append((label, value))
        return p.Dependency(image_name=name, image_id=image_id, labels=tuple(labels), size=size, pos=st.pos)

    def _path_whitelist(self, st: Statement) -> p.PathWhitelist:
        paths = []
        for w in st.words:
            path = self.expand(w)
            if not path.startswith("/"):
                raise PlanError(f'PATH-WHITELIST: paths must be absolute, not "{path}"', w.pos)
            paths.append(path)
        return p.PathWhitelist(paths=tuple(paths), pos=st.pos)

    def _remove(self, st: Statement) -> p.Remove:
        what = self.expand(st.words[0]).upper()
        kinds = ("LABEL", "ANNOTATION", "ENV", "PORT", "MOUNT", "ISOLATOR", "DEPENDENCY", "EVENT", "EXEC")
        if what not in kinds:
            raise PlanError(f'REMOVE: can remove {", ".join(kinds)}, not "{what}"', st.words[0].pos)
        name = self.expand(st.words[1])
        if what == "LABEL":
            self.stage.labels.pop(name, None)
        if what == "ANNOTATION":
            self.stage.annotations.pop(name, None)
        return p.Remove(what=what, name=name, pos=st.pos)

    def _manifest(self, st: Statement) -> p.ReplaceManifest:
        assert st.command is not None
        limits.check_json_depth(st.command.text, "MANIFEST", st.command.pos)
        try:
            value = json.loads(st.command.text)
        except ValueError as err:
            raise PlanError(f"MANIFEST: not JSON ({err.msg})", st.command.pos) from None
        if not isinstance(value, dict):
            raise PlanError("MANIFEST: the manifest must be a JSON object", st.command.pos)
        return p.ReplaceManifest(manifest_json=st.command.text, pos=st.pos)
