"""Statements -> Plan: give each parsed instruction its meaning.

Here words lose their quotes and gain their $VARIABLES with Docker's rules
(frontend/expand.py: ARGs in scope and ENVs set so far; an unset PATH is
Docker's default), and every error points at the word that caused it. RUN, CMD
and ENTRYPOINT commands are not substituted: the shell inside the image does
that, and ARG values reach RUN as environment. Dockerfile words compile to the
same plan instructions as the appc words: EXPOSE is a PORT, VOLUME a MOUNT,
CMD/ENTRYPOINT make the exec, MAINTAINER/STOPSIGNAL/HEALTHCHECK/ONBUILD are
annotations, `FROM stage` starts from an earlier stage.

As in Docker, an ARG before the first FROM is global: FROM lines see it, and a
stage sees it after declaring it again (`ARG NAME`).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable

from acbuild import limits
from acbuild import plan as p
from acbuild.errors import PlanError
from acbuild.frontend.dockerfile import DEFAULT_SHELL, DOCKER, DockerfileWords, Platforms
from acbuild.frontend.expand import ExpandError, expand_word
from acbuild.frontend.parse import Statement, Word, parse_acifile, parse_acifile_cached
from acbuild.frontend.run import RunWords
from acbuild.frontend.source import Heredoc
from acbuild.records import dataclass, field, replace

# What a stage's $PATH is when nothing set it (BuildKit's system.DefaultPathEnvUnix).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# FROM IMAGE.aci|DIR -> (its environment, its ONBUILD triggers, its SHELL or ()), or None
# when it cannot be read (the build then says why). Given by the CLI: reading images is
# not this layer's.
BaseInfo = Callable[[str], "tuple[dict[str, str], list[str], tuple[str, ...]] | None"]
_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Manifest entries an ACIfile may give only once per stage (a second one is
# almost always a mistake). WORKDIR, USER and GROUP may repeat, as in a Dockerfile:
# each applies to the RUN steps after it.
_ONCE = {"NAME", "EXEC"}


def compile_file(path, build_args: dict[str, str] | None = None, target: str | None = None,
                 tag: str | None = None, base_info: BaseInfo | None = None, platforms: Platforms | None = None) -> p.Plan:
    """Read, parse and compile an ACIfile or Dockerfile, name the stage it outputs
    (`target`, default the last) after `tag` (-t NAME[:TAG]), and check that it will
    have a name, before anything runs."""
    from pathlib import Path

    path = Path(path)
    try:
        text = limits.read_regular_file(path, "ACIfile", limits.MAX_ACIFILE_BYTES, error=PlanError).decode()
    except FileNotFoundError as err:
        from acbuild.errors import NotFoundError

        raise NotFoundError(f"cannot read {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise PlanError(f"{path}: not a text file ({err.reason})") from err
    plan = compile_text(text, str(path), build_args, base_info, platforms, cached_parse=True)
    if tag:
        plan = apply_tag(plan, target, tag)
    check_output(plan, target)
    return plan


def apply_tag(plan: p.Plan, target: str | None, tag: str) -> p.Plan:
    """-t NAME[:TAG]: NAME and a version label TAG for the output stage, unless the
    file sets them (its NAME and LABEL version win, as the README says)."""
    name, version = split_tag(tag)
    stage = plan.output(target)
    extra: list[p.Instruction] = []
    try:
        if not any(isinstance(s, p.SetName) for s in stage.steps):
            extra.append(p.SetName(name=name))
        labels = {k for s in stage.steps if isinstance(s, p.Label) for k, _ in s.items}
        if version and "version" not in labels:
            extra.append(p.Label(items=(("version", version),)))
    except PlanError as err:
        from acbuild.errors import UsageError

        raise UsageError(f"-t {tag}: {err.message}") from None
    stages = tuple(replace(s, steps=s.steps + tuple(extra)) if s is stage else s for s in plan.stages)
    return replace(plan, stages=stages)


def split_tag(tag: str) -> tuple[str, str]:
    """-t NAME[:TAG] -> (NAME, TAG or ""); a colon before the last "/" is a port."""
    if ":" in tag.rsplit("/", 1)[-1]:
        name, _, version = tag.rpartition(":")
        return name, version
    return tag, ""


def check_output(plan: p.Plan, target: str | None) -> None:
    stage = plan.output(target)
    if plan.unnamed(stage):
        raise PlanError(f'stage "{stage.name}": the image has no name: add NAME example.com/app', stage.base.pos)


def compile_text(text: str, filename: str = "ACIfile", build_args: dict[str, str] | None = None,
                 base_info: BaseInfo | None = None, platforms: Platforms | None = None,
                 *, cached_parse: bool = False) -> p.Plan:
    """`cached_parse`: through the parse cache (for build files, which are parsed again
    and again; not for texts made on the fly)."""
    statements = (parse_acifile_cached if cached_parse else parse_acifile)(text, filename)
    return Compiler(filename, dict(build_args or {}), base_info, platforms).compile(statements)


@dataclass
class _StageState:
    base: p.From
    index: int
    steps: list[p.Instruction] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, Word] = field(default_factory=dict)
    annotations: dict[str, Word] = field(default_factory=dict)
    once: dict[str, Statement] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)  # ARGs declared in this stage
    shell: tuple[str, ...] = DEFAULT_SHELL
    cmd_set: bool = False  # a CMD in this stage survives a later ENTRYPOINT
    onbuild: list[str] = field(default_factory=list)  # this stage's ONBUILD triggers
    platform: str = ""  # OS/ARCH[/VARIANT] its RUN steps run as ("" = the build's own)


class Compiler(DockerfileWords, RunWords):
    def __init__(self, filename: str, build_args: dict[str, str], base_info: BaseInfo | None = None,
                 platforms: Platforms | None = None):
        self.filename = filename
        self.build_args = build_args
        self.base_info = base_info
        self.platforms = platforms or Platforms()
        from pathlib import Path

        self.context_dir = Path(filename).parent  # a FROM word naming a local file is not a stage typo
        # ARGs before the first FROM, and BuildKit's automatic platform ARGs (global too)
        self.global_args: dict[str, str] = self.platforms.args() | {
            k: v for k, v in build_args.items() if k in self.platforms.args()}
        self.declared: set[str] = set(self.platforms.args())  # every ARG name declared anywhere
        self.used_args: set[str] = set()
        self.finished: dict[str, _StageState] = {}  # stage name -> its state at the end
        self.stages: list[p.Stage] = []
        self.stage: _StageState | None = None
        self.images: dict[str, p.From] = {}  # images COPY --from / RUN --mount=from= name: implicit stages
        self.escape = "\\"
        self.keyword = ""  # of the statement being compiled, for messages

    # -- driver -------------------------------------------------------------

    @property
    def args(self) -> dict[str, str]:
        """The ARGs in scope: the stage's own, or before any FROM the global ones."""
        return self.stage.args if self.stage is not None else self.global_args

    def compile(self, statements: list[Statement]) -> p.Plan:
        self._later_aliases = {st.alias.text.lower() for st in statements if st.keyword == "FROM" and st.alias is not None}
        for st in statements:
            self.keyword = st.keyword
            if st.keyword == "ARG":
                self._arg(st)
            elif st.keyword == "FROM":
                self._finish_stage()
                base = self._from(st)
                self.stage = _StageState(base=base, index=len(self.stages), platform=self._stage_platform(base))
                self._inherit(base)
            elif self.stage is None:
                raise PlanError(f"{st.keyword} before FROM: the file starts with FROM (only ARG may come first)", st.pos)
            else:
                self._step(st)
        self._finish_stage()
        if not self.stages:
            raise PlanError("no FROM instruction: nothing to build", None)
        names = [s.base.alias for s in self.stages if s.base.alias]
        for stage in self.stages:
            for step in stage.steps:
                sources = [("COPY --from", step.from_stage)] if isinstance(step, p.Copy) else \
                    [("RUN --mount=from", m.from_stage) for m in step.mounts] if isinstance(step, p.Run) else []
                for what, name in sources:
                    if not name or name in self.images or self._stage_before(name, stage.index):
                        continue
                    if self._stage_index(name) is not None:
                        raise PlanError(f'{what}: stage "{name}" is this one or comes after it: a stage copies '
                                        "only from earlier ones, so there can be no cycle", step.pos)
                    raise PlanError(f'{what}: no stage "{name}" before this one (stages: {", ".join(names) or "none named"})', step.pos)
        for base in self.images.values():  # after the file's stages, as BuildKit adds them
            self.stages.append(p.Stage(base=base, steps=(), index=len(self.stages), implicit=True))
        unused = tuple(sorted(set(self.build_args) - self.declared))
        return p.Plan(stages=tuple(self.stages), build_args=tuple(sorted(self.build_args.items())), source=self.filename,
                      unused_build_args=unused)

    def _inherit(self, base: p.From) -> None:
        """A stage built on an earlier one (or on a local image) starts with its ENV
        and SHELL, and runs its ONBUILD triggers first."""
        state = self.stage
        parent = self.finished.get(base.stage) if base.stage else None
        if parent is not None:
            state.env, state.shell, triggers = dict(parent.env), parent.shell, parent.onbuild
        elif self.base_info is not None and base.base != "scratch":
            env, triggers, shell = self.base_info(base.base) or ({}, [], ())
            state.env, state.shell = dict(env), shell or DEFAULT_SHELL
        else:
            return
        self._run_triggers(triggers, base.pos)

    def _stage_before(self, name: str, index: int) -> bool:
        return any((s.name == name) for s in self.stages[:index])

    def _stage_index(self, name: str) -> int | None:
        for i, s in enumerate(self.stages):
            if s.name == name:
                return i
        return None

    def _stage_name(self, word: str) -> str | None:
        """An earlier stage named by its AS name or its index (as COPY --from=0 and
        FROM 0 do), or None."""
        for s in self.stages:
            if word == s.base.alias or (word.isdigit() and int(word) == s.index):
                return s.name
        return None

    def _source_stage(self, text: str, word: Word, what: str) -> str:
        """What COPY --from=X or RUN --mount=from=X names: an earlier stage (by name
        or index), else an image, read as FROM X reads it (a file, a directory,
        docker://..., a name) and made an implicit stage, as BuildKit does. A later
        stage, an index or a near-miss of a stage name stays a stage, for the
        error that says which is missing."""
        found = self._stage_name(text)
        if found:
            return found
        if text.lower() in self._later_aliases or text.isdigit():
            return text.lower()
        self._check_not_a_missing_stage(text, word, what)
        self.images.setdefault(text, p.From(base=text, pos=word.pos, at={"base": word.pos}))
        return text

    def _finish_stage(self) -> None:
        if self.stage is not None:
            s = self.stage
            if s.onbuild:
                s.steps.append(p.Annotation(items=((DOCKER + "onbuild", json.dumps(s.onbuild)),), pos=s.base.pos))
            stage = p.Stage(base=s.base, steps=tuple(s.steps), index=s.index)
            self.stages.append(stage)
            self.finished[stage.name] = s
        self.stage = None

    def _step(self, st: Statement) -> None:
        state = self.stage
        assert state is not None
        self.keyword = st.keyword
        if st.keyword in _ONCE:
            if st.keyword in state.once:
                first = state.once[st.keyword].pos
                raise PlanError(f"{st.keyword} given twice in this stage (first at line {first.line})", st.pos)
            state.once[st.keyword] = st
        for instruction in self._instructions(st):
            if isinstance(instruction, p.Env):
                state.env.update(instruction.items)
            if isinstance(instruction, p.Remove) and instruction.what == "EXEC":
                state.once.pop(instruction.what, None)
            state.steps.append(instruction)

    def _instructions(self, st: Statement) -> list[p.Instruction]:
        """The plan instructions one statement stands for (most stand for one; none
        for ONBUILD, which changes what a child stage means)."""
        docker = self._dockerfile_instructions(st)
        return docker if docker is not None else [self._instruction(st)]

    def _instruction(self, st: Statement) -> p.Instruction:
        match st.keyword:
            case "COPY" | "ADD":
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

    def expansion_env(self) -> dict[str, str]:
        """What $VARS mean here: ENV before ARG (Docker: "an ENV always overrides an
        ARG of the same name"), and Docker's default PATH when nothing set one."""
        env = {"PATH": DEFAULT_PATH} if self.stage is not None else {}
        env |= self.args
        if self.stage is not None:
            env |= self.stage.env
        return env

    def expand(self, word: Word, escape: str | None = None) -> str:
        """Docker's word processing: quotes removed, escapes and $VARS applied."""
        try:
            result = expand_word(word.text, self.expansion_env(), escape or self.escape)
        except ExpandError as err:
            raise PlanError(f"{self.keyword}: {err}", word.pos) from None
        self.used_args |= result.used & set(self.args)
        return result.text

    def _expand_text(self, word: Word | None) -> str:
        return self.expand(word).strip() if word is not None else ""

    def _pairs(self, st: Statement, words=None) -> tuple[tuple[Word, str, str], ...]:
        words = st.words if words is None else words
        if st.keyword in ("ENV", "LABEL") and words and "=" not in self.expand(words[0]):
            # Docker's legacy form `ENV NAME the rest of the line`.
            if len(words) < 2:
                raise PlanError(f'{st.keyword}: expected NAME=VALUE, got "{self.expand(words[0])}"', words[0].pos)
            value = " ".join(self.expand(w) for w in words[1:])
            return ((words[0], self.expand(words[0]), value),)
        pairs = []
        for w in words:
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
            if name in flags and name not in ("mount", "exclude"):
                raise PlanError(f"{st.keyword}: --{name} given twice", w.pos)
            flags.setdefault(name, (w, self.expand(Word(value, w.pos))))
        return flags

    def _command(self, st: Statement) -> tuple[tuple[str, ...], bool]:
        """(argv, shell_form) for RUN/EXEC/CMD/ENTRYPOINT/EVENT. As in Docker, text
        that parses as a JSON array is the exec form (an array of anything but
        strings is an error); anything else is a command for the stage's SHELL."""
        assert st.command is not None
        text = st.command.text.strip()
        if text.startswith("["):
            limits.check_json_depth(text, st.keyword, st.command.pos)
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            if isinstance(value, list):
                if not all(isinstance(v, str) for v in value):
                    raise PlanError(f"{st.keyword}: when using JSON array syntax, arrays must be comprised of strings only",
                                    st.command.pos)
                return tuple(value), False
        shell = self.stage.shell if self.stage is not None else DEFAULT_SHELL
        return (*shell, text), True

    def _exec_form(self, st: Statement) -> tuple[str, ...]:
        argv, shell_form = self._command(st)
        if shell_form or not argv:
            raise PlanError(f'{st.keyword}: give a JSON array of strings, like ["/bin/sh", "-c"]', st.command.pos)
        return argv

    # -- instructions -----------------------------------------------------------

    def _arg(self, st: Statement) -> None:
        for word in st.words:
            name, has_default, default = word.text.partition("=")
            if not _ARG_NAME.match(name):
                raise PlanError(f'ARG: bad name "{name}" (letters, digits and _, not starting with a digit)', word.pos)
            if has_default:
                value = self.expand(Word(default, word.pos))
            elif name in self.args:  # declared again: keeps its value
                value = self.args[name]
            else:  # `ARG NAME` in a stage brings the global value in (Docker)
                value = self.global_args.get(name, "") if self.stage is not None else ""
            self.args[name] = self.build_args.get(name, value)
            self.declared.add(name)

    def _from(self, st: Statement) -> p.From:
        self.escape = st.escape
        flags = self._flags(st, {"insecure-skip-verify", "platform"})
        alias = self.expand(st.alias) if st.alias is not None else ""
        if alias and any(s.base.alias == alias for s in self.stages):
            raise PlanError(f'FROM: stage "{alias}" defined twice', st.alias.pos)
        base = self.expand(st.words[0])
        # An earlier stage's name wins over an image of that name, as in Docker.
        stage = self._stage_name(base) or ""
        if not stage:
            self._check_not_a_missing_stage(base, st.words[0], "FROM")
        return p.From(base=base, alias=alias, insecure_skip_verify="insecure-skip-verify" in flags, stage=stage,
                      platform=flags.get("platform", (None, ""))[1], pos=st.pos,
                      at={"base": st.words[0].pos, "alias": st.alias.pos if st.alias else st.pos,
                          "platform": flags["platform"][0].pos if "platform" in flags else st.pos})

    def _check_not_a_missing_stage(self, base: str, word: Word, what: str) -> None:
        """`FROM biulder` after `AS builder`: a stage that does not exist, not an image
        to fetch. Only a bare word (no "/", ":", "." or "@") close to a stage name,
        that names no local file, is taken as that mistake; anything else is an image."""
        import difflib

        names = [s.base.alias for s in self.stages if s.base.alias]
        later = base in self._later_aliases
        if later:
            raise PlanError(f'{what}: stage "{base}" is defined after this line; a stage can start only from an earlier one',
                            word.pos)
        if set(base) & set("/:.@") or base == "scratch" or not names:
            return
        close = difflib.get_close_matches(base, names, n=1, cutoff=0.75)
        if close and not (self.context_dir / base).exists():
            raise PlanError(f'{what}: no stage "{base}" (did you mean "{close[0]}"? stages so far: {", ".join(names)})', word.pos)

    def _copy(self, st: Statement) -> p.Copy:
        add = st.keyword == "ADD"
        allowed = {"chown", "chmod", "from", "link", "parents", "exclude"} - ({"from", "parents"} if add else set())
        flags = self._flags(st, allowed | ({"checksum", "keep-git-dir", "unpack"} if add else set()))
        if "unpack" in flags:  # --keep-git-dir: the git source says it
            raise PlanError(f"{st.keyword}: --unpack is not supported yet", flags["unpack"][0].pos)
        excludes = [(w, self.expand(Word(w.text[2:].partition("=")[2], w.pos))) for w in st.flags
                    if w.text[2:].partition("=")[0] == "exclude"]  # repeatable
        parents = self._bool_flag(st, flags, "parents")
        at = {name: word.pos for name, (word, _) in flags.items()}
        chmod = None
        if "chmod" in flags:
            word, text = flags["chmod"]
            if not re.fullmatch(r"[0-7]{3,4}", text):
                raise PlanError(f'{st.keyword}: bad --chmod "{text}" (octal, like 755 or 0644)', word.pos)
            chmod = int(text, 8)
        from_stage = ""
        if "from" in flags:
            word, text = flags["from"]
            from_stage = self._source_stage(text, word, "COPY --from")
        words = self._list_words(st)
        if len(words) < 2:
            raise PlanError(f"{st.keyword}: give one or more sources and a destination", st.pos)
        *sources, dest = words
        docs = {d.name: d for d in st.heredocs}
        inline, names = [], []
        for w in sources:
            doc = docs.get(_heredoc_name(w.text)) if w.text.startswith("<<") else None
            if doc is None:
                names.append(self.expand(w))
                continue
            names.append(doc.name)
            inline.append((doc.name, self._heredoc_text(doc)))
        for w, name in zip(sources, names):
            if add and re.match(r"(git@|git://|[a-z+]+://.*\.git(#|$))", name):
                raise PlanError(f'ADD "{name}": git sources are not supported (clone into the build context and COPY)', w.pos)
            if add and "://" in name and not re.match(r"https?://", name):
                raise PlanError(f'ADD "{name}": only http and https URLs can be downloaded', w.pos)
        at |= {f"sources.{i}": w.pos for i, w in enumerate(sources)} | {"dest": dest.pos}
        at |= {f"exclude.{i}": w.pos for i, (w, _) in enumerate(excludes)}
        fields = dict(sources=tuple(names), dest=self.expand(dest), chown=flags.get("chown", (None, ""))[1], chmod=chmod,
                      from_stage=from_stage, inline=tuple(inline), parents=parents,
                      exclude=tuple(text for _, text in excludes), pos=st.pos, at=at)
        if add:
            return p.Add(**fields, checksum=flags.get("checksum", (None, ""))[1])
        return p.Copy(**fields)

    def _bool_flag(self, st: Statement, flags: dict, name: str) -> bool:
        """--NAME or --NAME=true|false (BuildKit's BoolFlag)."""
        if name not in flags:
            return False
        word, text = flags[name]
        if "=" not in word.text:
            return True
        if text.lower() not in ("true", "false"):
            raise PlanError(f'{st.keyword}: --{name} takes true or false, not "{text}"', word.pos)
        return text.lower() == "true"

    def _list_words(self, st: Statement) -> tuple[Word, ...]:
        """COPY/ADD/VOLUME arguments: the words, or the strings of the JSON form."""
        if st.command is None:
            return st.words
        try:
            value = json.loads(st.command.text)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            # JSON strings are taken as written; quote them for the expansion.
            return tuple(Word('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"', st.command.pos) for v in value)
        if isinstance(value, list):
            raise PlanError(f"{st.keyword}: when using JSON array syntax, arrays must be comprised of strings only", st.command.pos)
        pos = st.command.pos
        return tuple(Word(m.group(), pos.replace(column=pos.column + m.start()))
                     for m in re.finditer(r"\S+", st.command.text))

    def _heredoc_text(self, doc: Heredoc) -> str:
        text = doc.text()
        return self.expand(Word(text.replace('"', '\\"'), self.stage.base.pos), "\\") if doc.expand else text

    def _exec(self, st: Statement) -> p.Exec:
        argv, _ = self._command(st)
        return p.Exec(argv=argv, pos=st.pos)

    def _event(self, st: Statement) -> p.EventHandler:
        argv, _ = self._command(st)
        return p.EventHandler(event=self.expand(st.words[0]), argv=argv, pos=st.pos, at={"event": st.words[0].pos})

    def _label(self, st: Statement) -> p.Label:
        pairs = self._unique_pairs(st, self.stage.labels, "label")
        return p.Label(items=tuple((n, v) for _, n, v in pairs), pos=st.pos, at=_item_positions(pairs))

    def _annotation(self, st: Statement) -> p.Annotation:
        pairs = self._unique_pairs(st, self.stage.annotations, "annotation")
        return p.Annotation(items=tuple((n, v) for _, n, v in pairs), pos=st.pos, at=_item_positions(pairs))

    def _unique_pairs(self, st: Statement, seen: dict, what: str):
        """The statement's NAME=VALUE pairs; a name set before in this stage is an error."""
        pairs = self._pairs(st)
        for w, name, _ in pairs:
            if name in seen:
                raise PlanError(f'duplicate {what} "{name}" (first set at line {seen[name].pos.line})', w.pos)
            seen[name] = w
        return pairs

    def _env(self, st: Statement) -> p.Env:
        # As in a Dockerfile, $VARS in an ENV see the values from before this line.
        pairs = self._pairs(st)
        return p.Env(items=tuple((n, v) for _, n, v in pairs), pos=st.pos, at=_item_positions(pairs))

    def _name(self, st: Statement) -> p.SetName:
        return p.SetName(name=self.expand(st.words[0]), pos=st.pos, at={"name": st.words[0].pos})

    def _working_directory(self) -> str:
        """The WORKDIR in effect: this stage's last, else the stages it is built on."""
        state = self.stage
        while state is not None:
            found = next((s.path for s in reversed(state.steps) if isinstance(s, p.WorkDir)), None)
            if found:
                return found
            state = self.finished.get(state.base.stage) if state.base.stage else None
        return "/"

    def _workdir(self, st: Statement) -> p.WorkDir:
        path = self._expand_text(st.command)
        if path and not path.startswith("/"):  # Docker: relative to the WORKDIR before it
            path = posixpath.join(self._working_directory(), path)
        return p.WorkDir(path=posixpath.normpath(path) if path else path, pos=st.pos, at={"path": st.command.pos})

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
        limits.check_json_depth(st.command.text, "ISOLATOR", st.command.pos)
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
        limits.check_json_depth(st.command.text, "MANIFEST", st.command.pos)
        return p.ReplaceManifest(manifest_json=st.command.text, pos=st.pos, at={"manifest_json": st.command.pos})


def _heredoc_name(word: str) -> str:
    return re.sub(r"""^\d*<<-?\s*|["']""", "", word)


def _item_positions(pairs) -> dict:
    return {f"items.{i}": w.pos for i, (w, _, _) in enumerate(pairs)}
