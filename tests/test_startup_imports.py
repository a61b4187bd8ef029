"""What start-up loads (issue 15): `acbuild --help` and an interactive metadata verb
must not import the libraries and modules that only other commands need. The set of
modules is checked, not the time (timings never decide pass/fail; the figures come
from benchmarks/bench_startup.py).

Each command runs in a fresh interpreter whose exit hook writes sys.modules to a file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Never for these commands: the grammar, YAML, GnuPG, netlink, HTTP, TOML, ctypes
# (the sandbox's libc handle), and the modules that do builds, images and networks.
HEAVY = ("lark", "yaml", "gnupg", "pyroute2", "http.client", "ssl", "urllib.request", "tomllib", "ctypes",
         "tqdm", "isal", "tarfile", "acbuild.frontend", "acbuild.trust", "acbuild.net", "acbuild.oci",
         "acbuild.fetch.fetcher", "acbuild.store", "acbuild.aci.archive", "acbuild.aci.writer",
         "acbuild.engine.execute.sandbox", "acbuild.engine.execute.hardening", "acbuild.engine.cache",
         "acbuild.engine.driver")
# --help lists the commands: it needs no instruction model and no dataclasses at all.
HELP_ALSO = ("acbuild.plan", "acbuild.aci.types", "acbuild.aci.manifest", "acbuild.engine", "dataclasses")

PROBE = """\
import atexit, runpy, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write("\\n".join(sorted(sys.modules))))
sys.argv = ["acbuild", *sys.argv[2:]]
runpy.run_module("acbuild", run_name="__main__")
"""


def imported(tmp_path: Path, *args: str, cwd: Path | None = None) -> set[str]:
    out = tmp_path / "modules.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return set(out.read_text().split("\n"))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_help_imports_no_heavy_module(tmp_path):
    modules = imported(tmp_path, "--help")
    assert "acbuild.cli.build" in modules  # the probe saw the real run: every command registered
    assert loaded(modules, HEAVY + HELP_ALSO) == []


@pytest.mark.parametrize("verb", [["label", "add", "version", "1.0"], ["annotation", "add", "a", "b"],
                                  ["environment", "add", "K", "V"], ["label", "remove", "version"]])
def test_metadata_verb_imports_no_heavy_module(tmp_path, verb):
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "acbuild", "--work-path", str(work), "begin"], check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
    if verb[1] == "remove":
        subprocess.run([sys.executable, "-m", "acbuild", "--work-path", str(work), "label", "add", "version", "1"],
                       check=True, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
    modules = imported(tmp_path, "--work-path", str(work), *verb)
    assert "acbuild.engine.session" in modules  # the verb really ran through Session.apply
    assert loaded(modules, HEAVY) == []


def test_history_still_falls_back_to_manifest(tmp_path):
    """The compile check moved from each verb to `acbuild history`: a label set twice
    (the ACIfile compiler refuses the second) still prints as MANIFEST {json}."""
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def acbuild(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "acbuild", "--work-path", str(work), *args],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    acbuild("begin")
    acbuild("set-name", "example.com/x")
    acbuild("label", "add", "version", "1")
    acbuild("label", "add", "version", "2")
    text = acbuild("history")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines[:3] == ["FROM scratch", "NAME example.com/x", "LABEL version=1"]
    assert lines[3].startswith("MANIFEST ") and '"version","value":"2"' in lines[3].replace(" ", "")



def test_interactive_run_loads_no_openssl(tmp_path):
    """`acbuild run` hashes nothing: hashlib (OpenSSL's libcrypto) stays out; the seccomp
    program's cache key is spelled from file stats."""
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (["begin"], ["copy", "/bin/busybox", "/bin/busybox"]):
        subprocess.run([sys.executable, "-m", "acbuild", "--work-path", str(work), *args], check=True, env=env,
                       capture_output=True)
    modules = imported(tmp_path, "--work-path", str(work), "run", "--", "/bin/busybox", "true", cwd=tmp_path)
    assert "acbuild.engine.execute.sandbox_process" in modules  # the RUN really ran
    assert loaded(modules, ("hashlib", "_hashlib")) == []


def test_cached_build_loads_no_exporter_resources_or_platform(tmp_path):
    """A build whose result is cached reads its -o, its build file (the parse cache) and
    its context: not the OCI exporter, importlib.resources, platform or Lark."""
    (tmp_path / "f").write_text("x\n")
    (tmp_path / "ACIfile").write_text("FROM scratch\nNAME example.com/x\nCOPY f /f\n")
    build = ["build", "-q", "--cache-dir", str(tmp_path / "cache"), "-f", str(tmp_path / "ACIfile"),
             "-o", str(tmp_path / "x.aci")]
    subprocess.run([sys.executable, "-m", "acbuild", *build], check=True, capture_output=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    modules = imported(tmp_path, *build, cwd=tmp_path)
    assert "acbuild.engine.cache.keys" in modules  # the build really ran, from the cache
    assert loaded(modules, ("acbuild.oci.export", "acbuild.engine.cache.share", "importlib.resources", "platform",
                            "lark")) == []
