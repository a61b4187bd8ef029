"""Dockerfiles as BuildKit reads them (issue 14).

The corpus (tests/data/dockerfiles/README.md) is BuildKit's own parser test files:
each must parse into the instructions BuildKit's `result` dump lists, with the same
command text and exec-form arguments, and plan to the plan written once for it."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from acbuild.frontend.parse import parse_acifile

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests/data/dockerfiles"
BUILDKIT = sorted(d for d in (CORPUS / "buildkit").iterdir() if d.is_dir())
NEGATIVE = sorted(d for d in (CORPUS / "buildkit-negative").iterdir() if d.is_dir())
REAL = sorted(d for d in (CORPUS / "real").iterdir() if d.is_dir())  # whole projects' Dockerfiles


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acbuild", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})})


def buildkit_result(path: Path) -> list[tuple[str, list[str]]]:
    """BuildKit's Node.Dump(): one `(keyword ["flags"] "arg"...)` per instruction;
    the strings are Go %q quoted (Python literals read them)."""
    out = []
    for line in path.read_text().splitlines():
        m = re.match(r'\((\w+)(?: \[[^\]]*\])?(.*)\)$', line)
        if not m:
            continue
        args = [ast.literal_eval(s) for s in re.findall(r'"(?:[^"\\]|\\.)*"', m.group(2))]
        out.append((m.group(1), args))
    return out


COMMANDS = {"run", "cmd", "entrypoint", "shell"}  # parseMaybeJSON: the text, or the JSON strings


@pytest.mark.parametrize("case", BUILDKIT, ids=[d.name for d in BUILDKIT])
def test_parses_into_the_instructions_buildkit_finds(case: Path):
    statements = parse_acifile((case / "Dockerfile").read_text(), "Dockerfile")
    expected = buildkit_result(case / "result")
    assert [st.spelled.lower() for st in statements] == [k for k, _ in expected]
    for st, (keyword, args) in zip(statements, expected):
        if keyword not in COMMANDS or st.command is None:
            continue
        import json

        text = st.command.text.strip()
        try:
            value = json.loads(text) if text.startswith("[") else None
        except ValueError:
            value = None
        ours = value if isinstance(value, list) else [text]
        assert ours == args, f"line {st.pos.line}"


# The parser test files that BuildKit's parser reads but its build refuses (the files
# test the parser only): (the line BuildKit's error points at, where in BuildKit at
# commit 73ed6825 the refusal is, BuildKit's message). acbuild refuses each at the same
# line; a plan.error for any other file fails test_plans_as_written_once.
_CMD_BEFORE_FROM = (1, "instructions/parse.go Parse -> commands.go CurrentStage", "no build stage in current context")
BUILDKIT_REFUSES = {
    # ENV name='a\'b': no escape inside single quotes, so the last ' opens a quote
    # that never closes (dockerfile2llb/convert.go dispatch expands ENV words).
    "env": (12, "shell/lex.go processSingleQuote",
            "unexpected end of statement while looking for matching single-quote"),
    # ADD \conf\\" /.znc: the " opens a double quote that never closes.
    "escapes": (6, "shell/lex.go processDoubleQuote",
                "unexpected end of statement while looking for matching double-quote"),
    "flags": (3, "instructions/bflag.go BFlags.Parse", "unknown flag: --user"),
    "health": (4, "instructions/parse.go parseHealthcheck", "HEALTHCHECK requires at least one argument"),
    "jeztah-invalid-json-json-inside-string": _CMD_BEFORE_FROM,
    "jeztah-invalid-json-json-inside-string-double": _CMD_BEFORE_FROM,
    "jeztah-invalid-json-single-quotes": _CMD_BEFORE_FROM,
    "jeztah-invalid-json-unterminated-bracket": _CMD_BEFORE_FROM,
    "jeztah-invalid-json-unterminated-string": _CMD_BEFORE_FROM,
    "json": _CMD_BEFORE_FROM,
    # Not a parser test file: the documented "not supported" refusal (issue 14).
    "buildkit-root": (None, "", "git sources are not supported"),
}


@pytest.mark.parametrize("case", BUILDKIT + REAL, ids=[d.name for d in BUILDKIT + REAL])
def test_plans_as_written_once(case: Path):
    """plan.yaml: the plan. plan.error: the one error, only for the files in
    BUILDKIT_REFUSES (BuildKit's build refuses them too, at the same line)."""
    result = cli("plan", "-f", "Dockerfile", "-t", "example.com/corpus", cwd=case)
    assert "Traceback" not in result.stderr
    if result.returncode == 0:
        got, expected = result.stdout, case / "plan.yaml"
    else:
        got, expected = result.stderr.splitlines()[0] + "\n", case / "plan.error"
    if not (case / "plan.yaml").exists() and not (case / "plan.error").exists() and os.environ.get("ACBUILD_WRITE_EXPECTED") == "1":
        expected.write_text(got)
    assert expected.exists(), f"{case.name}: {result.returncode=} but no {expected.name}: {got}"
    assert got == expected.read_text()
    if result.returncode != 0:
        assert case.name in BUILDKIT_REFUSES, f"{case.name}: BuildKit builds it, so acbuild must plan it: {got}"
        line, _, message = BUILDKIT_REFUSES[case.name]
        if line is not None:
            assert got.startswith(f"Dockerfile:{line}:"), (got, message)
        else:
            assert message in got


@pytest.mark.parametrize("case", NEGATIVE, ids=[d.name for d in NEGATIVE])
def test_buildkit_negative_files_are_one_clear_error(case: Path):
    result = cli("plan", "-f", "Dockerfile", "-t", "example.com/corpus", cwd=case)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Dockerfile") or result.stderr.startswith("acbuild: "), result.stderr


# -- builds (RUN on local busybox bases) -----------------------------------------------------

BUSYBOX = Path("/bin/busybox")
EXAMPLE = REPO / "examples/dockerfile"
SECRET = b"tok-1234567890-not-for-the-image"


def busybox_context(tmp_path: Path, dockerfile: str, name: str = "Dockerfile") -> Path:
    from conftest import require

    require(BUSYBOX.exists(), "needs Debian's busybox-static")
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "busybox").write_bytes(BUSYBOX.read_bytes())
    (ctx / "busybox").chmod(0o755)
    (ctx / name).write_text(dockerfile)
    return ctx


BASE = """FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
"""


def build(ctx: Path, out: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return cli("build", "--cache-dir", str(out.parent / "cache"), "-o", str(out), *args, cwd=cwd or ctx)


def manifest_of(image: Path) -> dict:
    import json

    return json.loads(cli("cat-manifest", str(image)).stdout)


def files_of(image: Path) -> dict[str, bytes]:
    import tarfile

    with tarfile.open(image) as tf:
        return {m.name: (tf.extractfile(m).read() if m.isfile() else b"") for m in tf.getmembers()}


def test_the_example_builds_runs_validates_and_keeps_the_secret_out(tmp_path, actool):
    """Issue 14, done when 3 and 4: a multi-stage Dockerfile with heredocs, ADD of a
    tarball, ENTRYPOINT+CMD, EXPOSE, VOLUME, USER, a secret mount and FROM builder."""
    from conftest import require

    require(BUSYBOX.exists(), "needs Debian's busybox-static")
    ctx = tmp_path / "ctx"
    import shutil

    shutil.copytree(EXAMPLE, ctx, ignore=shutil.ignore_patterns("busybox"))
    shutil.copy(BUSYBOX, ctx / "busybox")
    (tmp_path / "token.txt").write_bytes(SECRET)
    out, meta = tmp_path / "app.aci", tmp_path / "build.json"
    result = build(ctx, out, "-t", "example.com/dockerfile-app:1.0", "--secret", f"id=token,src={tmp_path / 'token.txt'}",
                   "--metadata-file", str(meta))
    assert result.returncode == 0, result.stderr
    image_id = result.stdout.strip()
    subprocess.run([actool, "validate", str(out)], check=True)

    manifest = manifest_of(out)
    app = manifest["app"]
    assert (manifest["name"], app["user"], app["group"]) == ("example.com/dockerfile-app", "app", "1001")
    assert {"name": "version", "value": "1.0"} in manifest["labels"]
    assert [(p["name"], p["protocol"], p["port"]) for p in app["ports"]] == [("8080-tcp", "tcp", 8080), ("53-udp", "udp", 53)]
    assert app["mountPoints"] == [{"name": "volume-data", "path": "/data"}]
    assert app["exec"][-3:] == ["entry", "one", "two"]

    launched = cli("launch", "--insecure-skip-verify", str(out))
    assert launched.returncode == 0, launched.stderr
    assert launched.stdout.splitlines() == [
        "1000", "1001", "hello from a heredoc", "served from a tarball that ADD unpacked", str(len(SECRET)), "args: one two"]

    # The secret: nowhere in the image, the cache or the build record. .dockerignore kept secret/ out.
    files = files_of(out)
    assert not any(SECRET in data for data in files.values())
    assert not any(name.startswith("rootfs/secret") or name.startswith("rootfs/run/secrets") for name in files)
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert SECRET not in path.read_bytes(), path
    assert SECRET not in meta.read_bytes()

    # The same image written with the appc words (examples/dockerfile/ACIfile.equivalent).
    again = build(ctx, tmp_path / "equivalent.aci", "-f", "ACIfile.equivalent", "--no-cache",
                  "--secret", f"id=token,src={tmp_path / 'token.txt'}")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == image_id


def test_dockerfile_is_found_and_dockerignore_keeps_files_out(tmp_path):
    """Before: build looked only for ./ACIfile, and .dockerignore was not read, so
    secret/key went into the image."""
    ctx = busybox_context(tmp_path, BASE + "COPY . /ctx/\nNAME example.com/ignore\n")
    (ctx / "secret").mkdir()
    (ctx / "secret/key").write_text("private")
    (ctx / "keep.txt").write_text("kept")
    (ctx / ".dockerignore").write_text("secret/\n")
    result = build(ctx, tmp_path / "out.aci")  # no -f: the context's Dockerfile
    assert result.returncode == 0, result.stderr
    names = files_of(tmp_path / "out.aci")
    assert "rootfs/ctx/keep.txt" in names and not any("secret" in n for n in names)
    # <Dockerfile>.dockerignore beside it wins over .dockerignore (BuildKit's order)
    (ctx / "Dockerfile.dockerignore").write_text("keep.txt\n")
    result = build(ctx, tmp_path / "out2.aci", "-f", "Dockerfile")
    assert result.returncode == 0, result.stderr
    names = files_of(tmp_path / "out2.aci")
    assert "rootfs/ctx/keep.txt" not in names and "rootfs/ctx/secret/key" in names


def test_path_expands_to_the_default_and_user_gets_the_primary_group(tmp_path):
    """Before: ENV PATH=/opt/bin:$PATH gave "/opt/bin:" and USER nobody ran with gid 0."""
    ctx = busybox_context(tmp_path, BASE + "RUN mkdir -p /etc && echo 'nobody:x:65534:65533::/:/bin/sh' >> /etc/passwd\n"
                          "ENV PATH=/opt/bin:$PATH\nUSER nobody\nRUN id -g > /tmp/gid; id -g; test \"$(id -g)\" = 65533\n")
    result = build(ctx, tmp_path / "out.aci", "-t", "example.com/path")
    assert result.returncode == 0, result.stderr
    app = manifest_of(tmp_path / "out.aci")["app"]
    assert {"name": "PATH", "value": "/opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"} in app["environment"]
    assert (app["user"], app["group"]) == ("nobody", "65533")


def test_misspelt_build_arg_warns_and_strict_refuses(tmp_path):
    ctx = busybox_context(tmp_path, "ARG VERSION=1\nFROM scratch\nARG VERSION\nLABEL version=$VERSION\n")
    planned = cli("plan", "-t", "example.com/x", "--build-arg", "VERSOIN=2", cwd=ctx)
    assert planned.returncode == 0
    assert 'warning: --build-arg "VERSOIN": no ARG in Dockerfile declares it (not consumed)' in planned.stderr
    strict = cli("plan", "-t", "example.com/x", "--build-arg", "VERSOIN=2", "--strict", cwd=ctx)
    assert strict.returncode == 3 and "VERSOIN" in strict.stderr


@pytest.mark.parametrize("text, where, message", [
    ("FROM scratch AS builder\nFROM scratch\nCOPY --from=biulder /a /b\n", "3:6", 'COPY --from: no stage "biulder" (did you mean "builder"?'),
    ("FROM scratch\nCOPY --from=3 /a /b\n", "2:1", 'COPY --from: no stage "3" before this one'),
    ("FROM scratch AS a\nRUN --mount=from=b,target=/b true\nFROM scratch AS b\n", "2:1", 'RUN --mount=from: stage "b" is this one or comes after it'),
    ("FROM scratch AS a\nCOPY --from=a /x /y\n", "2:1", 'stage "a" is this one or comes after it'),
    ("FROM scratch AS a\nCOPY --from=b /x /y\nFROM scratch AS b\n", "2:1", 'stage "b" is this one or comes after it'),
    ("FROM scratch\nRUN <<EOF\necho\n", "2:1", 'unterminated heredoc "EOF"'),
    ("FROM scratch\nENV A=${B?unset}\n", "2:5", "ENV: B: unset"),
    ("FROM scratch\nADD git@github.com:moby/buildkit.git /src\n", "2:5", "git sources are not supported"),
    ("FROM scratch\nCMD [\"a\", 1]\n", "2:5", "arrays must be comprised of strings only"),
])
def test_plan_finds_the_errors_the_build_would(tmp_path, text, where, message):
    (tmp_path / "Dockerfile").write_text(text)
    result = cli("plan", "-t", "example.com/x", cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith(f"Dockerfile:{where}: ") and message in result.stderr.splitlines()[0], result.stderr


def test_heredoc_forms(tmp_path):
    """BuildKit's rules (parser.go, dockerfile2llb/convert.go dispatchRun): a lone
    heredoc is the script, <<- strips tabs, a quoted delimiter turns off expansion,
    several heredocs on one line go to the command in order."""
    ctx = busybox_context(tmp_path, BASE + (
        "ARG WHO=world\n"
        "RUN <<EOF\nmkdir /out\necho one > /out/1\nEOF\n"
        "RUN <<-EOF\n\techo two > /out/2\n\tEOF\n"
        "COPY <<'EOF' /out/3\n$WHO stays\nEOF\n"
        "ARG WHO\nCOPY <<EOF /out/4\nhello $WHO\nEOF\n"
        "RUN cat <<A >/out/5 && cat <<B >/out/6\nfive\nA\nsix\nB\n"
        "RUN <<EOF\n#!/bin/sh\necho shebang > /out/7\nEOF\n"
        "NAME example.com/heredocs\n"))
    result = build(ctx, tmp_path / "out.aci")
    assert result.returncode == 0, result.stderr
    files = files_of(tmp_path / "out.aci")
    assert [files[f"rootfs/out/{n}"] for n in range(1, 8)] == [
        b"one\n", b"two\n", b"$WHO stays\n", b"hello world\n", b"five\n", b"six\n", b"shebang\n"]


def test_onbuild_triggers_run_in_the_child_stage(tmp_path):
    ctx = busybox_context(tmp_path, BASE + "ONBUILD RUN echo triggered > /triggered\n"
                          "FROM base\nNAME example.com/child\n")
    result = build(ctx, tmp_path / "out.aci")
    assert result.returncode == 0, result.stderr
    files = files_of(tmp_path / "out.aci")
    assert files["rootfs/triggered"] == b"triggered\n"
    notes = {a["name"]: a["value"] for a in manifest_of(tmp_path / "out.aci").get("annotations", [])}
    assert "appc.io/docker/onbuild" not in notes  # Docker: triggers do not pass to grandchildren


def test_add_url_needs_the_network_and_checks_the_checksum(tmp_path):
    """A real HTTP server on 127.0.0.1."""
    import hashlib
    import http.server
    import threading

    served = tmp_path / "www"
    served.mkdir()
    (served / "file.txt").write_bytes(b"downloaded\n")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(served))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/file.txt"
        good = "sha256:" + hashlib.sha256(b"downloaded\n").hexdigest()
        ctx = busybox_context(tmp_path, f"FROM scratch\nADD --checksum={good} {url} /srv/\nNAME example.com/url\n")
        refused = build(ctx, tmp_path / "no.aci")
        assert refused.returncode == 1 and "downloading needs the network" in refused.stderr
        ok = build(ctx, tmp_path / "ok.aci", "--network", "host")
        assert ok.returncode == 0, ok.stderr
        assert files_of(tmp_path / "ok.aci")["rootfs/srv/file.txt"] == b"downloaded\n"
        (ctx / "Dockerfile").write_text(f"FROM scratch\nADD --checksum=sha256:{'0' * 64} {url} /srv/\nNAME example.com/url\n")
        bad = build(ctx, tmp_path / "bad.aci", "--network", "host")
        assert bad.returncode == 1 and "(--checksum)" in bad.stderr
    finally:
        server.shutdown()


def test_from_an_image_file_sees_its_path_and_runs_its_onbuild_triggers(tmp_path):
    """$PATH in ENV sees the base image's value (read at plan time), and the base's
    ONBUILD triggers run first in the stage built on it (Docker's order)."""
    ctx = busybox_context(tmp_path, BASE + "ENV PATH=/opt/tools:/bin\nONBUILD RUN echo from-onbuild > /onbuild.txt\n"
                          "NAME example.com/base\n")
    assert build(ctx, ctx / "base.aci").returncode == 0
    (ctx / "Dockerfile").write_text("FROM base.aci\nENV PATH=/more:$PATH\nNAME example.com/child\n")
    planned = cli("plan", cwd=ctx)
    assert planned.returncode == 0, planned.stderr
    assert "/more:/opt/tools:/bin" in planned.stdout
    result = build(ctx, tmp_path / "child.aci")
    assert result.returncode == 0, result.stderr
    manifest = manifest_of(tmp_path / "child.aci")
    assert {"name": "PATH", "value": "/more:/opt/tools:/bin"} in manifest["app"]["environment"]
    assert files_of(tmp_path / "child.aci")["rootfs/onbuild.txt"] == b"from-onbuild\n"
    assert "appc.io/docker/onbuild" not in {a["name"] for a in manifest.get("annotations", [])}


def test_run_mounts_from_a_stage_and_tmpfs(tmp_path):
    """RUN --mount=from=STAGE binds a path of an earlier stage; type=tmpfs is an empty
    directory of that step only; a relative target is relative to WORKDIR (BuildKit)."""
    ctx = busybox_context(tmp_path, BASE + "RUN mkdir /data && echo shared > /data/x\n"
                          "FROM base AS user\nWORKDIR /work\n"
                          "RUN --mount=from=base,source=/data,target=mnt --mount=type=tmpfs,target=/scratch "
                          "cp mnt/x /copied && touch /scratch/t && test -z \"$(ls /work/mnt)\" || test -f /work/mnt/x\n"
                          "NAME example.com/mounts\n")
    result = build(ctx, tmp_path / "out.aci")
    assert result.returncode == 0, result.stderr
    files = files_of(tmp_path / "out.aci")
    assert files["rootfs/copied"] == b"shared\n"
    assert "rootfs/scratch/t" not in files and "rootfs/work/mnt/x" not in files


@pytest.mark.parametrize("text, message", [
    ("FROM scratch AS builder\nFROM biulder\n", 'FROM: no stage "biulder" (did you mean "builder"?'),
    ("FROM later\nFROM scratch AS later\n", 'FROM: stage "later" is defined after this line'),
])
def test_from_a_stage_that_does_not_exist_is_found_by_plan(tmp_path, text, message):
    """Before: FROM of a missing stage failed at build time with "fetching images by
    name is not supported yet", and acbuild plan said nothing."""
    (tmp_path / "Dockerfile").write_text(text)
    result = cli("plan", "-t", "example.com/x", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("Dockerfile:2:6: " if "biulder" in text else "Dockerfile:1:6: ")
    assert message in result.stderr


def test_from_an_earlier_stage_by_name_builds_on_it(tmp_path):
    """Before: "fetching images by name is not supported yet" at build time."""
    ctx = busybox_context(tmp_path, BASE + "RUN echo base > /base.txt\nLABEL from=base\n"
                          "FROM base AS child\nRUN cat /base.txt > /child.txt\nNAME example.com/child\n")
    result = build(ctx, tmp_path / "out.aci")
    assert result.returncode == 0, result.stderr
    files = files_of(tmp_path / "out.aci")
    assert files["rootfs/child.txt"] == b"base\n"
    assert {"name": "from", "value": "base"} in manifest_of(tmp_path / "out.aci")["labels"]


def test_ssh_agent_and_env_secret_reach_only_their_run(tmp_path):
    """RUN --mount=type=ssh sees the `--ssh default` agent (Debian's ssh-agent, started
    here) at SSH_AUTH_SOCK; `--secret id=X,env=VAR` reads the secret from VAR."""
    import shutil
    import signal

    from conftest import require

    require(shutil.which("ssh-agent") is not None, "needs Debian's openssh-client (ssh-agent)")
    sock = tmp_path / "agent.sock"
    agent = subprocess.run(["ssh-agent", "-a", str(sock), "-s"], capture_output=True, text=True, check=True)
    pid = int(re.search(r"SSH_AGENT_PID=(\d+)", agent.stdout).group(1))
    try:
        ctx = busybox_context(tmp_path, BASE + (
            "RUN --mount=type=ssh,required test -S \"$SSH_AUTH_SOCK\" && echo agent > /ssh.txt\n"
            "RUN --mount=type=secret,id=word,required wc -c < /run/secrets/word > /len.txt\n"
            "RUN test ! -e /run/secrets/word && test -z \"$SSH_AUTH_SOCK\"\n"
            "NAME example.com/ssh\n"))
        result = cli("build", "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "out.aci"),
                     "--ssh", f"default={sock}", "--secret", "id=word,env=THE_WORD", cwd=ctx, env={"THE_WORD": "s3cr3t-Word-Q"})
        assert result.returncode == 0, result.stderr
        files = files_of(tmp_path / "out.aci")
        assert files["rootfs/ssh.txt"] == b"agent\n" and files["rootfs/len.txt"].strip() == b"13"
        assert not any(b"s3cr3t-Word-Q" in data for data in files.values())
        missing = cli("build", "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "no.aci"), "--no-cache",
                      "--ssh", f"default={sock}", cwd=ctx)
        assert missing.returncode == 1 and 'no secret "word"' in missing.stderr
    finally:
        os.kill(pid, signal.SIGTERM)


def test_copy_from_an_image_is_an_implicit_stage(tmp_path):
    """COPY --from=IMAGE and RUN --mount=from=IMAGE, IMAGE not a stage: the image, read
    as FROM IMAGE reads it (here an .aci and an OCI layout acbuild wrote), as an
    implicit stage after the file's own (BuildKit's dockerfile2llb adds one for such
    an image). Before: "copying from an image is not supported yet"."""
    ctx = busybox_context(tmp_path, BASE + "RUN mkdir -p /etc && echo from-image > /etc/marker\nNAME example.com/base\n")
    assert build(ctx, ctx / "base.aci").returncode == 0
    assert build(ctx, tmp_path / "unused.aci", "-o", f"oci:{ctx / 'layout'}:1.0").returncode == 0
    (ctx / "Dockerfile").write_text(
        "FROM scratch\nCOPY --from=base.aci /bin/busybox /bin/busybox\n"
        "COPY --from=oci:layout:1.0 /etc/marker /from-oci\n"
        "RUN --mount=from=base.aci,source=/etc,target=/m [\"/bin/busybox\", \"cp\", \"/m/marker\", \"/from-mount\"]\n"
        "NAME example.com/copied\n")
    planned = cli("plan", cwd=ctx)
    assert planned.returncode == 0, planned.stderr
    import yaml

    stages = yaml.safe_load(planned.stdout)["stages"]
    assert [(s["name"], s.get("implicit", False)) for s in stages] == [("0", False), ("base.aci", True), ("oci:layout:1.0", True)]
    assert stages[1]["from"]["at"] == "Dockerfile:2:6"
    result = build(ctx, tmp_path / "out.aci", "--progress", "plain")
    assert result.returncode == 0, result.stderr
    files = files_of(tmp_path / "out.aci")
    assert files["rootfs/from-oci"] == files["rootfs/from-mount"] == b"from-image\n"
    assert files["rootfs/bin/busybox"] == BUSYBOX.read_bytes()
    assert "rootfs/etc/marker" not in files  # the image is a source, not the base
    assert manifest_of(tmp_path / "out.aci")["name"] == "example.com/copied"
    # the image is keyed by its content: a new image is a miss for the steps copying from it
    again = build(ctx, tmp_path / "out2.aci", "--progress", "plain")
    assert again.returncode == 0 and "COPY --from=base.aci /bin/busybox /bin/busybox  (cached)" in again.stderr
    (ctx / "Dockerfile.base").write_text(BASE + "RUN mkdir /etc && echo changed > /etc/marker\nNAME example.com/base\n")
    assert build(ctx, ctx / "base.aci", "-f", str(ctx / "Dockerfile.base")).returncode == 0
    changed = build(ctx, tmp_path / "out3.aci", "--progress", "plain")
    assert changed.returncode == 0, changed.stderr
    assert "COPY --from=base.aci /bin/busybox /bin/busybox  (cached)" not in changed.stderr
    assert files_of(tmp_path / "out3.aci")["rootfs/from-mount"] == b"changed\n"


def test_copy_from_a_missing_image_fails_at_its_word(tmp_path):
    ctx = busybox_context(tmp_path, "FROM scratch\nCOPY --from=missing.aci /a /a\nNAME example.com/x\n")
    result = build(ctx, tmp_path / "out.aci")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Dockerfile:2:6: FROM missing.aci: no such file" in result.stderr, result.stderr


def test_shell_is_kept_in_the_image_and_used_by_stages_built_on_it(tmp_path):
    """SHELL runs later shell forms (RUN, CMD), is kept as the annotation
    appc.io/docker/shell, and a stage built FROM that image file uses it too, as
    Docker keeps Shell in the image config. The shell here records that it ran
    ($0 is the command: Docker appends it to the SHELL words). Before: a stage on
    the image file ran /bin/sh -c."""
    shell = '["/bin/sh", "-c", "echo \\"$0\\" >> /shell.log; eval \\"$0\\""]'
    ctx = busybox_context(tmp_path, BASE + f"SHELL {shell}\nRUN echo parent\nNAME example.com/shell\n")
    assert build(ctx, ctx / "base.aci").returncode == 0
    notes = {a["name"]: a["value"] for a in manifest_of(ctx / "base.aci")["annotations"]}
    assert json.loads(notes["appc.io/docker/shell"]) == json.loads(shell)
    (ctx / "Dockerfile").write_text("FROM base.aci\nRUN echo child > /child.txt\nCMD echo hi\nNAME example.com/child\n")
    result = build(ctx, tmp_path / "child.aci")
    assert result.returncode == 0, result.stderr
    files = files_of(tmp_path / "child.aci")
    assert files["rootfs/shell.log"] == b"echo parent\necho child > /child.txt\n"
    assert manifest_of(tmp_path / "child.aci")["app"]["exec"] == [*json.loads(shell), "echo hi"]


def _tree(ctx: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(text)


def test_copy_parents_keeps_paths_as_buildkit_does(tmp_path):
    """The cases of BuildKit's frontend/dockerfile/dockerfile_parents_test.go
    (testCopyParents, testCopyRelativeParents, testCopyParentsMissingDirectory),
    with the base stage's tree copied from the context. Before: "--parents is not
    supported yet"."""
    ctx = tmp_path / "ctx"
    _tree(ctx, {"foo1/foo2/bar": "testing", "foo1/foo2/baz": "testing2", "t/a/b/c/d/foo": "", "t/a/b/c/d/e/bay": "",
                "t/a/b2/c/d/e/bar": "", "t/a/b/c2/d/e/baz": "", "t/a/b/c2/d/e2/baz": ""})
    cases = {
        "middle": "/test/a/b/./c/d",
        "end": "/test/a/b/c/d/.",
        "start": "./test/a/b/c/d",
        "double": "/test/a/./b/./c",
        "wildcard": "/test/a/./*/c",
        "doublewildcard": "/test/a/b*/./c/**/e",
        "doubleinputs": "/test/a/b/c*/./d/**/baz /test/a/b*/./c/**/bar",
        "wildcard-nonexistent": "/test/a/b3*/c",
    }
    (ctx / "Dockerfile").write_text(
        "FROM scratch AS base\nCOPY t /test/\n"
        "FROM scratch AS ctx\nCOPY --parents foo1/foo2/bar /\nWORKDIR /test\nCOPY --parents foo1/foo2/ba* .\n"
        + "".join(f"FROM scratch AS {name}\nCOPY --from=base --parents {src} /out/\n" for name, src in cases.items())
        + "FROM scratch\n" + "".join(f"COPY --from={name} / /{name}/\n" for name in ["ctx", *cases])
        + "NAME example.com/parents\n")
    result = build(ctx, tmp_path / "out.aci")
    assert result.returncode == 0, result.stderr
    files = {n.removeprefix("rootfs/") for n in files_of(tmp_path / "out.aci") if n.startswith("rootfs/")}
    got = {name: sorted(f.removeprefix(f"{name}/") for f in files if f.startswith(f"{name}/")) for name in ["ctx", *cases]}
    assert got["ctx"] == ["foo1", "foo1/foo2", "foo1/foo2/bar", "test", "test/foo1", "test/foo1/foo2",
                          "test/foo1/foo2/bar", "test/foo1/foo2/baz"]
    assert got["middle"] == ["out", "out/c", "out/c/d", "out/c/d/e", "out/c/d/e/bay", "out/c/d/foo"]
    assert got["end"] == got["start"] and "out/test/a/b/c/d/e/bay" in got["end"] and "out/test/a/b/c/d/foo" in got["end"]
    assert "out/b/c/d/foo" in got["double"] and not any(f.startswith("out/a") for f in got["double"])
    assert {"out/b/c/d/e/bay", "out/b2/c/d/e/bar"} <= set(got["wildcard"])
    assert {"out/c/d/e/bay", "out/c/d/e/bar"} <= set(got["doublewildcard"])
    assert {"out/d/e/baz", "out/d/e2/baz", "out/c/d/e/bar"} <= set(got["doubleinputs"])
    assert "out/d/e/bay" not in got["doubleinputs"]
    assert got["wildcard-nonexistent"] == ["out"]  # a glob that matches nothing copies nothing
    missing = ctx / "Dockerfile.missing"
    missing.write_text("FROM scratch\nCOPY --parents nowhere/file /out/\nNAME example.com/x\n")
    result = build(ctx, tmp_path / "missing.aci", "-f", str(missing))
    assert result.returncode == 1 and 'Dockerfile.missing:2:1: COPY: "nowhere/file" not found in the build context' in result.stderr


def test_copy_exclude_leaves_out_what_buildkit_does(tmp_path):
    """The cases of BuildKit's frontend/dockerfile/exclude_patterns_test.go
    (testExcludedFilesOnCopy): patterns match below each source; ADD too.
    Before: "--exclude is not supported yet"."""
    ctx = tmp_path / "ctx"
    _tree(ctx, {"dir1/file-101.png": "2", "dir1/file-102.txt": "3", "dir1/file-103.jpeg": "4", "dir2/file-201.pdf": "6",
                "dir2/file-202.jpeg": "7", "dir2/file-203.png": "8", "dir3/file-301.mp3": "9", "dir3/file-302.mpeg": "10",
                "dir4/file-401.txt": "11"})
    (ctx / "dir4/file-402.txt").symlink_to("file-401.txt")
    (ctx / "Dockerfile").write_text(
        "FROM scratch\n"
        "COPY --exclude=*/*.png --exclude=*/*.jpeg . /1\n"
        "COPY --exclude=*/*.pdf --exclude=*/*.txt . /2\n"
        "ADD --exclude=*.mp3 dir3/ /3/\n"
        "COPY --exclude=*.mp3 --exclude=*.jpeg --exclude=*.png --exclude=*.pdf --exclude=*.txt dir* /4/\n"
        "ADD --exclude=* dir* /6/\n"
        "NAME example.com/exclude\n")
    result = build(ctx, tmp_path / "out.aci")
    assert result.returncode == 0, result.stderr
    files = {n.removeprefix("rootfs/") for n in files_of(tmp_path / "out.aci") if n.startswith("rootfs/")}
    under = {d: sorted(f.removeprefix(f"{d}/") for f in files if f.startswith(f"{d}/") and "." in f.rsplit("/", 1)[-1])
             for d in "12346"}
    assert under["1"] == ["dir1/file-102.txt", "dir2/file-201.pdf", "dir3/file-301.mp3",
                          "dir3/file-302.mpeg", "dir4/file-401.txt", "dir4/file-402.txt"]
    assert under["2"] == ["dir1/file-101.png", "dir1/file-103.jpeg", "dir2/file-202.jpeg",
                          "dir2/file-203.png", "dir3/file-301.mp3", "dir3/file-302.mpeg"]
    assert under["3"] == ["file-302.mpeg"]
    assert under["4"] == ["file-302.mpeg"]
    assert under["6"] == [] and "6" in files
    planned = cli("plan", cwd=ctx)
    assert "- '*/*.png'" in planned.stdout and "exclude:" in planned.stdout


def test_automatic_platform_args_and_a_foreign_run(tmp_path):
    """BuildKit's automatic platform ARGs (frontend/dockerfile/docs/reference.md,
    "Automatic platform ARGs in the global scope"): global, so FROM lines see them
    and a stage sees them after `ARG NAME`; TARGET* follow --platform. A RUN in a
    stage for another machine is refused at plan time (acbuild has no emulator).
    Before: $TARGETARCH was empty and FROM --platform was ignored."""
    from acbuild.oci.manifests import host_platform

    host = host_platform()
    other = "linux/arm64" if host.architecture != "arm64" else "linux/amd64"
    (tmp_path / "Dockerfile").write_text(
        "FROM --platform=$BUILDPLATFORM scratch AS tools\nARG TARGETARCH TARGETOS BUILDPLATFORM\n"
        "RUN echo $TARGETARCH\nLABEL target=$TARGETOS-$TARGETARCH built-on=$BUILDPLATFORM\n"
        "FROM scratch\nARG TARGETPLATFORM\nLABEL target=$TARGETPLATFORM\nCOPY --from=tools /x /x\n")
    native = cli("plan", "-t", "example.com/x", cwd=tmp_path)
    assert native.returncode == 0, native.stderr
    import yaml

    stages = yaml.safe_load(native.stdout)["stages"]
    assert stages[0]["from"]["platform"] == str(host) and "platform" not in stages[1]["from"]
    labels = [s["items"] for st in stages for s in st["steps"] if s["instruction"] == "LABEL"]
    assert labels == [[["target", f"linux-{host.architecture}"], ["built-on", str(host)]], [["target", str(host)]]]
    assert stages[0]["steps"][0]["arg_env"] == [["BUILDPLATFORM", str(host)], ["TARGETARCH", host.architecture],
                                                ["TARGETOS", "linux"]]
    cross = cli("plan", "-t", "example.com/x", "--platform", other, cwd=tmp_path)
    assert cross.returncode == 0, cross.stderr  # the RUN stage is FROM --platform=$BUILDPLATFORM
    cross_labels = [s["items"] for st in yaml.safe_load(cross.stdout)["stages"] for s in st["steps"]
                    if s["instruction"] == "LABEL"]
    assert cross_labels == [[["target", f"linux-{other.split('/')[1]}"], ["built-on", str(host)]], [["target", other]]]
    (tmp_path / "Dockerfile").write_text(f"FROM --platform={other} scratch\nRUN true\n")
    foreign = cli("plan", "-t", "example.com/x", cwd=tmp_path)
    assert foreign.returncode == 1 and foreign.stderr.startswith(
        f"Dockerfile:2:1: RUN: this stage is for {other} (FROM --platform or --platform) and this machine is {host}")
    (tmp_path / "Dockerfile").write_text("FROM --platform=linux scratch\n")
    bad = cli("plan", "-t", "example.com/x", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith('Dockerfile:1:6: FROM: bad --platform "linux"'), bad.stderr


def test_from_platform_picks_from_an_oci_index(tmp_path):
    """FROM --platform=P of an OCI layout whose index lists several platforms takes
    P's image (and its os/arch labels); scratch gets P's labels. Two images acbuild
    wrote, put into one index by hand as `docker buildx` or `buildah manifest`
    would. Before: --platform was ignored and the host's image was taken."""
    import shutil

    ctx = tmp_path / "ctx"
    _tree(ctx, {"amd.txt": "amd64\n", "arm.txt": "arm64\n"})
    (ctx / "D.amd").write_text("FROM --platform=linux/amd64 scratch\nCOPY amd.txt /which\nNAME example.com/multi\n")
    (ctx / "D.arm").write_text("FROM --platform=linux/arm64 scratch\nCOPY arm.txt /which\nNAME example.com/multi\n")
    entries = []
    for arch in ("amd", "arm"):
        layout = ctx / f"L.{arch}"
        result = build(ctx, tmp_path / f"{arch}.aci", "-f", str(ctx / f"D.{arch}"), "-o", f"oci:{layout}")
        assert result.returncode == 0, result.stderr
        index = json.loads((layout / "index.json").read_text())
        entry = index["manifests"][0]
        entry["platform"] = {"os": "linux", "architecture": f"{arch}64"}
        entry.pop("annotations", None)
        entries.append(entry)
        shutil.copytree(layout / "blobs", ctx / "multi/blobs", dirs_exist_ok=True)
    (ctx / "multi/oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (ctx / "multi/index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    for arch in ("amd", "arm"):
        (ctx / "Dockerfile").write_text(f"FROM --platform=linux/{arch}64 oci:multi\nNAME example.com/picked\n")
        result = build(ctx, tmp_path / f"picked-{arch}.aci")
        assert result.returncode == 0, result.stderr
        assert files_of(tmp_path / f"picked-{arch}.aci")["rootfs/which"] == f"{arch}64\n".encode()
        labels = {label["name"]: label["value"] for label in manifest_of(tmp_path / f"picked-{arch}.aci")["labels"]}
        assert labels["arch"] == {"amd": "amd64", "arm": "aarch64"}[arch]
    (ctx / "Dockerfile").write_text("FROM --platform=linux/s390x oci:multi\nNAME example.com/picked\n")
    missing = build(ctx, tmp_path / "none.aci")
    assert missing.returncode == 1 and "Dockerfile:1:1: FROM oci:multi: no image for platform linux/s390x" in missing.stderr


def test_tag_names_the_oci_output(tmp_path):
    """-t NAME:TAG is the reference of an OCI output that -o names none for, as
    BuildKit's OCI exporter writes it (ref.name TAG) and docker build -t names a
    docker-archive (RepoTags NAME:TAG, even when the file sets NAME); an explicit
    oci:DIR:REF wins. skopeo (Debian's) reads the layout by that tag.
    Before: ref.name "latest" and RepoTags from the file's NAME."""
    import shutil
    import tarfile

    from conftest import require

    require(shutil.which("skopeo") is not None, "needs Debian's skopeo")
    ctx = busybox_context(tmp_path, "FROM scratch\nCOPY busybox /bin/busybox\nNAME example.com/in-file\n")
    result = build(ctx, tmp_path / "unused.aci", "-t", "example.com/app:1.0", "-o", f"oci:{tmp_path / 'layout'}")
    assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "layout/index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == ["1.0"]
    inspected = subprocess.run(["skopeo", "inspect", f"oci:{tmp_path / 'layout'}:1.0"], capture_output=True, text=True)
    assert inspected.returncode == 0, inspected.stderr
    result = build(ctx, tmp_path / "unused.aci", "-t", "example.com/app:1.0", "-o", f"oci:{tmp_path / 'explicit'}:stable")
    assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "explicit/index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == ["stable"]
    result = build(ctx, tmp_path / "unused.aci", "-t", "example.com/app:1.0", "-o", f"docker-archive:{tmp_path / 'app.tar'}")
    assert result.returncode == 0, result.stderr
    with tarfile.open(tmp_path / "app.tar") as tf:
        assert json.load(tf.extractfile("manifest.json"))[0]["RepoTags"] == ["example.com/app:1.0"]
    bad = build(ctx, tmp_path / "unused.aci", "-t", "example.com/app:1.0+x", "-o", f"oci:{tmp_path / 'bad'}")
    assert bad.returncode == 3 and "-t example.com/app:1.0+x: " in bad.stderr and not (tmp_path / "bad").exists()
