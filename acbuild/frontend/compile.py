"""Statements -> Plan: give each parsed instruction its meaning.

Here words lose their quotes and gain their $VARIABLES (ARGs and ENVs set so far,
as in a Dockerfile), values are checked against the appc rules, and every error
points at the word that caused it. RUN and EXEC commands are not substituted:
the shell inside the image does that, and ARG values reach RUN as environment.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from acbuild import plan as p
from acbuild.errors import PlanError
from acbuild.frontend.parse import Statement, Word, parse_acifile

_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<arg>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Manifest entries an ACIfile may give only once per stage (a second one is
# almost always a mistake). WORKDIR, USER and GROUP may repeat, as in a Dockerfile:
# each applies to the RUN steps after it.
_ONCE = {"NAME", "EXEC"}


def compile_file(path, build_args: dict[str, str] | None = None, target: str | None = None) -> p.Plan:
    """Read, parse and compile an ACIfile, and check that the stage it outputs
    (`target`, default the last) will have a name, before anything runs."""
    from pathlib import Path

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        from acbuild.errors import NotFoundError

        raise NotFoundError(f"cannot read {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise PlanError(f"{path}: not a text file ({err.reason})") from err
    plan = compile_text(text, str(path), build_args)
    check_output(plan, target)
    return plan


def check_output(plan: p.Plan, target: str | None) -> None:
    stage = plan.output(target)
    if plan.unnamed(stage):
        raise PlanError(f'stage "{stage.name}": the image has no name: add NAME example.com/app', stage.base.pos)


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
        instruction = self._instruction(st)
        if isinstance(instruction, p.Env):
            state.env.update(instruction.items)
        if isinstance(instruction, p.Remove) and instruction.what == "EXEC":
            state.once.pop(instruction.what, None)
        state.steps.append(instruction)

    def _instruction(self, st: Statement) -> p.Instruction:
        match st.keyword:
            case "COPY":
                return self._copy(st)
            case "RUN":
                return self._run(st)
            case "EXEC":
                return self._exec(st)
            case "EVENT":
                return self._event(st)
            case "LABEL":
                return self._label(st)
            case "ANNOTATION":
                return self._annotation(st)
            case "ENV":
                return self._env(st)
            case "NAME":
                return self._name(st)
            case "WORKDIR":
                return self._workdir(st)
            case "USER":
                return self._user(st)
            case "GROUP":
                return self._group(st)
            case "SUPPLEMENTARY-GROUPS":
                return self._supplementary_groups(st)
            case "PORT":
                return self._port(st)
            case "MOUNT":
                return self._mount(st)
            case "ISOLATOR":
                return self._isolator(st)
            case "DEPENDENCY":
                return self._dependency(st)
            case "PATH-WHITELIST":
                return self._path_whitelist(st)
            case "REMOVE":
                return self._remove(st)
            case "MANIFEST":
                return self._manifest(st)
        raise PlanError(f"{st.keyword} cannot be used here", st.pos)  # pragma: no cover - the grammar has no other

    # -- words ----------------------------------------------------------------

    def expand(self, word: Word) -> str:
        """Remove quotes and substitute $VAR / ${VAR} / ${VAR:-default} / ${VAR:+alt}."""
        text, out, i = word.text, [], 0
        quote = ""
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
                out.append(self._lookup(m))
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

    def _command(self, st: Statement) -> tuple[tuple[str, ...], bool]:
        """(argv, shell_form) for RUN/EXEC/EVENT. Exec form is a JSON list of strings."""
        assert st.command is not None
        text = st.command.text
        if st.json_form:
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                return tuple(value), False
        command = text.strip()
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
        alias = self.expand(st.alias) if st.alias is not None else ""
        if alias and any(s.base.alias == alias for s in self.stages):
            raise PlanError(f'FROM: stage "{alias}" defined twice', st.alias.pos)
        return p.From(base=self.expand(st.words[0]), alias=alias, insecure_skip_verify="insecure-skip-verify" in flags,
                      pos=st.pos, at={"base": st.words[0].pos, "alias": st.alias.pos if st.alias else st.pos})

    def _copy(self, st: Statement) -> p.Copy:
        flags = self._flags(st, {"chown", "chmod", "from"})
        at = {name: word.pos for name, (word, _) in flags.items()}
        chmod = None
        if "chmod" in flags:
            word, text = flags["chmod"]
            if not re.fullmatch(r"[0-7]{3,4}", text):
                raise PlanError(f'COPY: bad --chmod "{text}" (octal, like 755 or 0644)', word.pos)
            chmod = int(text, 8)
        *sources, dest = st.words
        at |= {f"sources.{i}": w.pos for i, w in enumerate(sources)} | {"dest": dest.pos}
        return p.Copy(sources=tuple(self.expand(w) for w in sources), dest=self.expand(dest),
                      chown=flags.get("chown", (None, ""))[1], chmod=chmod, from_stage=flags.get("from", (None, ""))[1],
                      pos=st.pos, at=at)

    def _run(self, st: Statement) -> p.Run:
        network, mounts, at = "", [], {}
        for w in st.flags:
            name, _, raw = w.text[2:].partition("=")
            value = self.expand(Word(raw, w.pos))
            if name == "network":
                network, at["network"] = value, w.pos
            elif name == "mount":
                mounts.append(self._mount_flag(value, w))
            else:
                raise PlanError(f"RUN: unknown flag --{name} (known: --mount, --network)", w.pos)
        argv, shell = self._command(st)
        arg_env = tuple(sorted(self.args.items()))
        return p.Run(argv=argv, network=network, mounts=tuple(mounts), shell_form=shell, arg_env=arg_env, pos=st.pos, at=at)

    def _mount_flag(self, value: str, w: Word) -> p.RunMount:
        opts: dict[str, str] = {}
        for part in value.split(","):
            key, eq, val = part.partition("=")
            opts[key.strip()] = val if eq else "true"
        kind = opts.pop("type", "bind")
        target = opts.pop("target", opts.pop("dst", opts.pop("destination", "")))
        source = opts.pop("source", opts.pop("src", "")) or ("." if kind == "bind" else "")
        read_only = kind == "bind" and opts.pop("rw", opts.pop("readwrite", "false")) != "true"
        opts.pop("ro", None)
        mount_id = opts.pop("id", "")
        if opts:
            raise PlanError(f"RUN --mount: unknown option {sorted(opts)[0]}", w.pos)
        try:
            return p.RunMount(type=kind, target=target, source=source, read_only=read_only, id=mount_id)
        except PlanError as err:
            raise PlanError(err.message, w.pos) from None

    def _exec(self, st: Statement) -> p.Exec:
        argv, _ = self._command(st)
        return p.Exec(argv=argv, pos=st.pos)

    def _event(self, st: Statement) -> p.EventHandler:
        argv, _ = self._command(st)
        return p.EventHandler(event=self.expand(st.words[0]), argv=argv, pos=st.pos, at={"event": st.words[0].pos})

    def _label(self, st: Statement) -> p.Label:
        state = self.stage
        pairs = self._pairs(st)
        for w, name, _ in pairs:
            if name in state.labels:
                raise PlanError(f'duplicate label "{name}" (first set at line {state.labels[name].pos.line})', w.pos)
            state.labels[name] = w
        return p.Label(items=tuple((n, v) for _, n, v in pairs), pos=st.pos, at=_item_positions(pairs))

    def _annotation(self, st: Statement) -> p.Annotation:
        state = self.stage
        pairs = self._pairs(st)
        for w, name, _ in pairs:
            if name in state.annotations:
                raise PlanError(f'duplicate annotation "{name}" (first set at line {state.annotations[name].pos.line})', w.pos)
            state.annotations[name] = w
        return p.Annotation(items=tuple((n, v) for _, n, v in pairs), pos=st.pos, at=_item_positions(pairs))

    def _env(self, st: Statement) -> p.Env:
        # As in a Dockerfile, $VARS in an ENV see the values from before this line.
        pairs = self._pairs(st)
        return p.Env(items=tuple((n, v) for _, n, v in pairs), pos=st.pos, at=_item_positions(pairs))

    def _name(self, st: Statement) -> p.SetName:
        return p.SetName(name=self.expand(st.words[0]), pos=st.pos, at={"name": st.words[0].pos})

    def _workdir(self, st: Statement) -> p.WorkDir:
        return p.WorkDir(path=self.expand(st.words[0]), pos=st.pos, at={"path": st.words[0].pos})

    def _user(self, st: Statement) -> p.User:
        return p.User(user=self.expand(st.words[0]), pos=st.pos, at={"user": st.words[0].pos})

    def _group(self, st: Statement) -> p.Group:
        return p.Group(group=self.expand(st.words[0]), pos=st.pos, at={"group": st.words[0].pos})

    def _int(self, st: Statement, w: Word, what: str) -> int:
        text = self.expand(w)
        if not re.fullmatch(r"[0-9]+", text):
            raise PlanError(f'{st.keyword}: {what} must be a whole number, not "{text}"', w.pos)
        return int(text)

    def _supplementary_groups(self, st: Statement) -> p.SupplementaryGroups:
        gids = tuple(self._int(st, w, "a group id") for w in st.words)
        return p.SupplementaryGroups(gids=gids, pos=st.pos, at={f"gids.{i}": w.pos for i, w in enumerate(st.words)})

    def _port(self, st: Statement) -> p.Port:
        words = list(st.words)
        socket = False
        if len(words) > 3 and self.expand(words[-1]) == "socket-activated":
            socket = True
            words.pop()
        if len(words) > 4:
            raise PlanError('PORT: the fifth argument can only be "socket-activated"', words[4].pos)
        count = self._int(st, words[3], "the count") if len(words) > 3 else 1
        at = dict(zip(("name", "protocol", "port", "count"), (w.pos for w in words)))
        return p.Port(name=self.expand(words[0]), protocol=self.expand(words[1]), port=self._int(st, words[2], "the port"),
                      count=count, socket_activated=socket, pos=st.pos, at=at)

    def _mount(self, st: Statement) -> p.MountPoint:
        read_only = False
        if len(st.words) > 2:
            flag = self.expand(st.words[2])
            if flag != "read-only":
                raise PlanError(f'MOUNT: the third argument can only be "read-only", not "{flag}"', st.words[2].pos)
            read_only = True
        return p.MountPoint(name=self.expand(st.words[0]), path=self.expand(st.words[1]), read_only=read_only, pos=st.pos,
                            at={"name": st.words[0].pos, "path": st.words[1].pos})

    def _isolator(self, st: Statement) -> p.Isolator:
        assert st.command is not None
        name = self.expand(st.words[0])
        try:
            value = json.loads(st.command.text)
        except ValueError as err:
            raise PlanError(f"ISOLATOR: the value is not JSON ({err.msg})", st.command.pos) from None
        return p.Isolator(name=name, value_json=json.dumps(value, sort_keys=True, separators=(",", ":")), pos=st.pos,
                          at={"name": st.words[0].pos, "value_json": st.command.pos})

    def _dependency(self, st: Statement) -> p.Dependency:
        flags = self._flags(st, {"image-id", "size"})
        size = 0
        if "size" in flags:
            word, text = flags["size"]
            if not text.isdigit():
                raise PlanError(f'DEPENDENCY: --size must be a number of bytes, not "{text}"', word.pos)
            size = int(text)
        pairs = self._pairs(st, st.words[1:])
        at = {"image_name": st.words[0].pos} | {f"labels.{i}": w.pos for i, (w, _, _) in enumerate(pairs)}
        if "image-id" in flags:
            at["image_id"] = flags["image-id"][0].pos
        return p.Dependency(image_name=self.expand(st.words[0]), image_id=flags.get("image-id", (None, ""))[1],
                            labels=tuple((n, v) for _, n, v in pairs), size=size, pos=st.pos, at=at)

    def _path_whitelist(self, st: Statement) -> p.PathWhitelist:
        return p.PathWhitelist(paths=tuple(self.expand(w) for w in st.words), pos=st.pos,
                               at={f"paths.{i}": w.pos for i, w in enumerate(st.words)})

    def _remove(self, st: Statement) -> p.Remove:
        remove = p.Remove(what=self.expand(st.words[0]).upper(), name=self.expand(st.words[1]), pos=st.pos,
                          at={"what": st.words[0].pos})
        if remove.what == "LABEL":
            self.stage.labels.pop(remove.name, None)
        if remove.what == "ANNOTATION":
            self.stage.annotations.pop(remove.name, None)
        return remove

    def _manifest(self, st: Statement) -> p.ReplaceManifest:
        assert st.command is not None
        return p.ReplaceManifest(manifest_json=st.command.text, pos=st.pos, at={"manifest_json": st.command.pos})


def _item_positions(pairs) -> dict:
    return {f"items.{i}": w.pos for i, (w, _, _) in enumerate(pairs)}
