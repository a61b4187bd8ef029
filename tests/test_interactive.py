"""The interactive verbs through the real command line, as a user's shell script
runs them: real busybox, real namespaces for RUN, real actool."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUSYBOX = "/bin/busybox"
EPOCH = "1700000000"


def acbuild(*args, cwd: Path, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH}
    env.pop("ACBUILD_DEBUG", None)
    result = subprocess.run([sys.executable, "-m", "acbuild", *map(str, args)], cwd=cwd, env=env, input=stdin,
                            capture_output=True, text=True)
    assert "Traceback" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, f"acbuild {' '.join(map(str, args))}: {result.stderr}"
    return result


def image_id(result: subprocess.CompletedProcess) -> str:
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("sha512-"), result.stdout
    return line


def build(acifile_text: str, tmp: Path, context: Path, name: str = "built") -> str:
    f = tmp / f"{name}.ACIfile"
    f.write_text(acifile_text)
    return image_id(acbuild("build", "-q", "-f", f, "--context", context, "-o", tmp / f"{name}.aci", cwd=tmp))


def session(steps: list[list[str]], cwd: Path) -> None:
    for step in steps:
        acbuild(*step, cwd=cwd)


def manifest(cwd: Path, *extra) -> dict:
    return json.loads(acbuild(*extra, "cat-manifest", cwd=cwd).stdout)


@pytest.fixture
def base_rootfs(tmp_path: Path) -> Path:
    """A busybox rootfs directory: the base of the eight-line session."""
    root = tmp_path / "base"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    return root


@pytest.fixture
def work(tmp_path: Path) -> Path:
    w = tmp_path / "work"
    w.mkdir()
    (w / "hello").write_text("#!/bin/sh\necho hello\n")
    os.chmod(w / "hello", 0o755)
    return w


def eight_lines(base: str) -> list[list[str]]:
    return [
        ["begin", base],
        ["set-name", "example.com/hello"],
        ["copy", "hello", "/bin/hello"],
        ["run", "--", "/bin/busybox", "--install", "-s", "/bin"],
        ["label", "add", "version", "1.0"],
        ["set-exec", "--", "/bin/hello"],
    ]


EIGHT_ACIFILE = """\
FROM {base}
NAME example.com/hello
COPY hello /bin/hello
RUN ["/bin/busybox", "--install", "-s", "/bin"]
LABEL version=1.0
EXEC ["/bin/hello"]
"""


def test_eight_line_session_matches_acifile_and_validates(work, base_rootfs, tmp_path, actool):
    session(eight_lines(str(base_rootfs)), work)
    history = acbuild("history", cwd=work).stdout
    written = image_id(acbuild("write", "--overwrite", "hello.aci", cwd=work))
    acbuild("end", cwd=work)
    assert not (work / ".acbuild").exists()
    subprocess.run([actool, "validate", work / "hello.aci"], check=True)
    assert build(EIGHT_ACIFILE.format(base=base_rootfs), tmp_path, work, "hand") == written
    assert build(history, tmp_path, work, "history") == written


def test_eight_line_session_from_an_aci_base(work, base_rootfs, tmp_path, actool):
    base_aci = tmp_path / "base.aci"
    (tmp_path / "base.ACIfile").write_text(f"FROM {base_rootfs}\nNAME example.com/base\n")
    acbuild("build", "-q", "-f", tmp_path / "base.ACIfile", "-o", base_aci, cwd=tmp_path)
    shutil.copy(base_aci, work / "base.aci")
    session(eight_lines("./base.aci"), work)
    history = acbuild("history", cwd=work).stdout
    written = image_id(acbuild("write", "hello.aci", cwd=work))
    acbuild("end", cwd=work)
    subprocess.run([actool, "validate", work / "hello.aci"], check=True)
    assert build(EIGHT_ACIFILE.format(base="base.aci"), tmp_path, work, "hand") == written
    assert build(history, tmp_path, work, "history") == written


# -- parity: interactive == its history == a hand-written ACIfile ------------------------

SCENARIOS = {
    "manifest-verbs": (
        [
            ["begin"],
            ["set-name", "example.com/meta"],
            ["label", "add", "version", "2.1"],
            ["label", "add", "channel", "beta"],
            ["label", "rm", "channel"],
            ["annotation", "add", "authors", "Jo <jo@example.com>"],
            ["env", "add", "GREETING", "hello world"],
            ["environment", "add", "MODE", "prod"],
            ["environment", "remove", "MODE"],
            ["port", "add", "http", "tcp", "8080", "--count", "2", "--socket-activated"],
            ["mount", "add", "data", "/var/data", "--read-only"],
            ["dep", "add", "example.com/base", "--label", "version=1", "--size", "10"],
            ["set-user", "1000"],
            ["set-group", "1000"],
            ["set-supp-groups", "10", "20"],
            ["set-event-handler", "pre-start", "--", "/bin/true"],
            ["set-exec", "--", "/bin/app", "--flag"],
        ],
        """\
FROM scratch
NAME example.com/meta
LABEL version=2.1
ANNOTATION authors="Jo <jo@example.com>"
ENV GREETING="hello world"
PORT http tcp 8080 2 socket-activated
MOUNT data /var/data read-only
DEPENDENCY --size=10 example.com/base version=1
USER 1000
GROUP 1000
SUPPLEMENTARY-GROUPS 10 20
EVENT pre-start ["/bin/true"]
EXEC ["/bin/app", "--flag"]
""",
    ),
    "host-paths-and-run": (
        [
            ["begin"],
            ["set-name", "example.com/busybox"],
            ["copy", BUSYBOX, "/bin/busybox"],
            ["copy-to-dir", "hello", "/usr/bin"],
            ["set-wd", "/srv"],
            ["run", "--", "/bin/busybox", "sh", "-c", "echo $PWD > where"],
            ["set-exec", "--", "/bin/busybox", "sh"],
        ],
        None,  # sources on two roots (/bin and the work dir): the hand-written file is the history's
    ),
    "changed-twice": (
        [
            ["begin"],
            ["set-name", "example.com/first"],
            ["label", "add", "version", "1"],
            ["label", "add", "version", "2"],
            ["set-exec", "--", "/bin/one"],
            ["set-exec", "--", "/bin/two"],
            ["set-name", "example.com/second"],
        ],
        """\
FROM scratch
NAME example.com/second
LABEL version=2
EXEC ["/bin/two"]
""",
    ),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_parity(name, work, tmp_path):
    steps, hand = SCENARIOS[name]
    session(steps, work)
    history = acbuild("history", cwd=work).stdout
    written = image_id(acbuild("write", "out.aci", cwd=work))
    acbuild("end", cwd=work)
    ctx = next(line.split(": ", 1)[1] for line in history.splitlines() if line.startswith("# context: "))
    assert build(history, tmp_path, Path(ctx), "history") == written
    if hand is not None:
        assert build(hand, tmp_path, work, "hand") == written


def test_manifest_after_each_kind_of_verb(work, tmp_path):
    isolator = tmp_path / "mem.json"
    isolator.write_text('{"limit": "1G"}')
    # WORKDIR touches the rootfs, so it comes before the dependency (which a rootfs step would render).
    session([["begin"], ["set-name", "example.com/m"], ["set-working-directory", "/app"],
             ["isolator", "add", "resource/memory", isolator],
             ["port", "add", "dns", "udp", "53"], ["mount", "add", "tmp", "/tmp"],
             ["annotation", "add", "homepage", "https://example.com"],
             ["dependency", "add", "example.com/dep", "--image-id", "sha512-" + "a" * 128],
             ["set-event-handler", "post-stop", "--", "/bin/cleanup"]], work)
    acbuild("isolator", "add", "resource/cpu", "-", cwd=work, stdin='{"request": "250m"}')
    m = manifest(work)
    app = m["app"]
    assert [i["name"] for i in app["isolators"]] == ["resource/memory", "resource/cpu"]
    assert app["ports"] == [{"name": "dns", "protocol": "udp", "port": 53, "count": 1, "socketActivated": False}]
    assert app["mountPoints"][0]["path"] == "/tmp"
    assert app["workingDirectory"] == "/app"
    assert app["eventHandlers"] == [{"name": "post-stop", "exec": ["/bin/cleanup"]}]
    assert m["dependencies"][0]["imageID"] == "sha512-" + "a" * 128
    for verb, name in (("isolator", "resource/cpu"), ("port", "dns"), ("mount", "tmp"), ("annotation", "homepage"),
                       ("dependency", "example.com/dep")):
        acbuild(verb, "remove", name, cwd=work)
    m = manifest(work)
    assert [i["name"] for i in m["app"]["isolators"]] == ["resource/memory"]
    assert "ports" not in m["app"] and "dependencies" not in m and "annotations" not in m
    pretty = acbuild("cat-manifest", "--pretty", cwd=work).stdout
    assert pretty.startswith("{\n    ")
    replacement = tmp_path / "new.json"
    replacement.write_text(json.dumps({"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/new"}))
    acbuild("replace-manifest", replacement, cwd=work)
    assert manifest(work)["name"] == "example.com/new"
    assert "MANIFEST {" in acbuild("history", cwd=work).stdout


def test_record_annotations_like_go_acbuild(work, tmp_path):
    session([["begin", "--record-annotations"], ["set-name", "example.com/a"], ["label", "add", "version", "1"]], work)
    notes = {a["name"]: a["value"] for a in manifest(work)["annotations"]}
    assert notes == {"appc.io/acbuild/command-1": 'acbuild set-name "example.com/a"',
                     "appc.io/acbuild/command-2": 'acbuild label add "version" "1"'}
    history = acbuild("history", cwd=work).stdout
    written = image_id(acbuild("write", "a.aci", cwd=work))
    assert build(history, tmp_path, work) == written


# -- bad input: one line, the documented exit code, no traceback --------------------------

NEEDS_BUILD = [["copy", "hello", "/x"], ["label", "add", "a", "b"], ["run", "--", "true"], ["write", "x.aci"],
               ["end"], ["history"], ["cat-manifest"], ["set-exec", "--", "/x"]]


@pytest.mark.parametrize("args", NEEDS_BUILD, ids=lambda a: a[0])
def test_verbs_without_begin(args, work):
    r = acbuild(*args, cwd=work, check=False)
    assert (r.returncode, r.stderr) == (2, "acbuild: no build in progress here; run acbuild begin\n")
    assert not (work / ".acbuild").exists()


BAD = [
    (["frobnicate"], 3, "invalid choice: 'frobnicate'"),
    (["label", "add", "version"], 3, "required: VALUE"),
    (["label"], 3, "required: add|remove"),
    (["label", "add", "Bad Name", "x"], 3, 'label add: ACIdentifier must contain only lower case'),
    (["label", "add", "name", "x"], 3, 'cannot be called "name"'),
    (["label", "remove", "nothere"], 2, 'label "nothere" is not set'),
    (["label", "rm", "nothere"], 2, 'label "nothere" is not set'),
    (["annotation", "remove", "nothere"], 2, 'annotation "nothere" is not set'),
    (["annotation", "add", "created", "yesterday"], 3, 'annotation add: created: bad Date'),
    (["env", "remove", "NOPE"], 2, 'env "NOPE" is not set'),
    (["environment", "add", "1BAD", "x"], 3, 'environment add: environment variable does not have valid identifier "1BAD"'),
    (["port", "remove", "http"], 2, 'port "http" is not set'),
    (["port", "add", "http", "tcp", "99999"], 3, "port add: port must be in 1-65535 range"),
    (["port", "add", "http", "tcp", "80", "--count", "x"], 3, "--count: invalid int value"),
    (["mount", "remove", "data"], 2, 'mount "data" is not set'),
    (["mount", "add", "data", "relative/path"], 3, "the path must be absolute"),
    (["isolator", "remove", "resource/memory"], 2, 'isolator "resource/memory" is not set'),
    (["isolator", "add", "resource/memory", "missing.json"], 2, "read missing.json"),
    (["isolator", "add", "resource/nonsense", "-"], 3, "invalid isolator"),
    (["dependency", "remove", "example.com/x"], 2, 'dependency "example.com/x" is not set'),
    (["dep", "add", "example.com/x", "--image-id", "md5-abc"], 3, 'dependency add: unrecognized hash type: md5'),
    (["copy", "no-such-file", "/x"], 2, "copy: no-such-file: no such file or directory"),
    (["copy", "hello"], 3, "required: DEST"),
    (["copy-to-dir", "hello"], 3, "copy-to-dir: give one or more sources"),
    (["run"], 3, "run: missing command"),
    (["run", "--", "/bin/false-does-not-exist"], 1, "RUN"),
    (["set-exec"], 3, "set-exec: missing command"),
    (["set-event-handler", "pre-stop", "--", "/x"], 3, "invalid choice: 'pre-stop'"),
    (["set-name", "Not Valid"], 3, "set-name: ACIdentifier"),
    (["set-user", ""], 3, "set-user: empty value"),
    (["set-supp-groups", "wheel"], 3, '"wheel" is not a group id'),
    (["set-wd", "relative"], 3, "the path must be absolute"),
    (["replace-manifest", "missing.json"], 2, "replace-manifest: read missing.json"),
    (["write", "out.tar"], 3, "must end in .aci"),
    (["write", "--key", "k", "out.aci"], 3, "go with --sign"),
    (["begin"], 1, "a build is already in progress here; run acbuild end first"),
    (["--modify", "x.aci", "begin"], 3, "--modify cannot be used with begin"),
    (["script", "missing.acb"], 2, "script: missing.acb: no such file"),
]


@pytest.mark.parametrize("args,code,message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input(args, code, message, work):
    acbuild("begin", cwd=work)
    r = acbuild(*args, cwd=work, check=False, stdin="{}")
    assert r.returncode == code, r.stderr
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert acbuild("cat-manifest", cwd=work).returncode == 0  # the session survives


# -- work paths and locking ----------------------------------------------------------------


def test_two_work_paths_in_parallel(tmp_path, work):
    results = {}

    def one(name: str) -> None:
        wp = tmp_path / name
        try:
            for step in (["begin"], ["set-name", f"example.com/{name}"], ["copy", BUSYBOX, "/bin/busybox"],
                         ["run", "--", "/bin/busybox", "sh", "-c", "echo $0 > /name", name],
                         ["write", tmp_path / f"{name}.aci"], ["end"]):
                acbuild("--work-path", wp, *step, cwd=work)
            results[name] = "ok"
        except AssertionError as e:
            results[name] = str(e)

    threads = [threading.Thread(target=one, args=(n,)) for n in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"left": "ok", "right": "ok"}


def test_a_locked_work_path_refuses_then_recovers(work):
    acbuild("begin", cwd=work)
    with open(work / ".acbuild" / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        r = acbuild("label", "add", "version", "1", cwd=work, check=False)
        assert (r.returncode, r.stderr) == (1, f"acbuild: another acbuild is working here ({work})\n")
    acbuild("label", "add", "version", "1", cwd=work)
    assert {"name": "version", "value": "1"} in manifest(work)["labels"]


def test_a_running_verb_holds_the_lock(work):
    session([["begin"], ["copy", BUSYBOX, "/bin/busybox"]], work)
    env = {**os.environ}
    slow = subprocess.Popen([sys.executable, "-m", "acbuild", "run", "--", "/bin/busybox", "sh", "-c",
                             "touch /started; sleep 3"], cwd=work, env=env, stderr=subprocess.PIPE, text=True)
    try:
        # the RUN writes into its overlay upper dir (engine.execute.layer), or the rootfs without overlayfs
        started = [work / ".acbuild/currentaci" / d / "started" for d in ("layer", "rootfs")]
        for _ in range(200):
            if any(p.exists() for p in started):
                break
            threading.Event().wait(0.05)
        r = acbuild("set-name", "example.com/x", cwd=work, check=False)
        assert r.returncode == 1 and "another acbuild is working here" in r.stderr
    finally:
        assert slow.wait() == 0, slow.stderr.read()
    acbuild("set-name", "example.com/x", cwd=work)


def test_begin_from_a_directory_holding_the_work_path(tmp_path):
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "file").write_text("x")
    acbuild("--work-path", src / "sub", "begin", src, cwd=tmp_path)
    rootfs = src / "sub/.acbuild/currentaci/rootfs"
    assert sorted(p.relative_to(rootfs).as_posix() for p in rootfs.rglob("*")) == ["file", "sub"]
    acbuild("begin", ".", cwd=src)  # DIR is the work path itself
    assert sorted(p.name for p in (src / ".acbuild/currentaci/rootfs").iterdir()) == ["file", "sub"]


# -- script and --modify -------------------------------------------------------------------


def test_example_script(tmp_path, actool):
    r = acbuild("script", REPO / "examples/hello-script/hello.acb", cwd=tmp_path)
    assert image_id(r)
    subprocess.run([actool, "validate", tmp_path / "hello-script.aci"], check=True)
    assert not (tmp_path / ".acbuild").exists()
    m = json.loads(acbuild("cat-manifest", tmp_path / "hello-script.aci", cwd=tmp_path).stdout)
    assert m["app"]["exec"] == ["/bin/sh", "-c", 'echo "$GREETING"']


def test_script_errors_point_at_the_line(tmp_path):
    script = tmp_path / "bad.acb"
    script.write_text("# comment\nbegin\n\nset-name example.com/x \\\n  # no\nlabel rm nothere\n")
    r = acbuild("script", script, cwd=tmp_path, check=False)
    assert r.returncode == 2
    assert r.stderr.startswith(f'{script}:6:1: label "nothere" is not set'), r.stderr


def test_modify_an_image(work, tmp_path, actool):
    session([["begin"], ["set-name", "example.com/mod"], ["copy", BUSYBOX, "/bin/busybox"]], work)
    acbuild("write", "app.aci", cwd=work)
    acbuild("end", cwd=work)
    acbuild("--modify", "app.aci", "label", "add", "version", "2.0", cwd=work)
    acbuild("--modify", "app.aci", "run", "--", "/bin/busybox", "touch", "/modified", cwd=work)
    m = json.loads(acbuild("--modify", "app.aci", "cat-manifest", cwd=work).stdout)
    assert {"name": "version", "value": "2.0"} in m["labels"]
    subprocess.run([actool, "validate", work / "app.aci"], check=True)
    listing = subprocess.run(["tar", "tzf", work / "app.aci"], capture_output=True, text=True, check=True).stdout
    assert "rootfs/modified" in listing.split()
    r = acbuild("--modify", "app.aci", "label", "rm", "nothere", cwd=work, check=False)
    assert r.returncode == 2 and not list(work.glob(".app.aci.*"))
    assert not (work / ".acbuild").exists()


def test_write_sign_replaces_image_and_signature_together(work, gpg_homes):
    home = gpg_homes()  # its gpg-agent is stopped when the test ends
    home.make_key("Signer <s@example.com>", expire="1d")
    session([["begin"], ["set-name", "example.com/signed"]], work)
    acbuild("write", "--sign", "--gpg-home", home.path, "s.aci", cwd=work)
    home.gpg("--verify", work / "s.aci.asc", work / "s.aci")
    acbuild("label", "add", "version", "2", cwd=work)
    acbuild("write", "--overwrite", "s.aci", cwd=work)  # unsigned now: the old .asc must go
    assert not (work / "s.aci.asc").exists()
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".s.aci")) == []
