"""The broken-input corpus: acbuild's validator against actool 0.8.11.

Every case is a real file built here (an .aci with tarfile, gzip or plain; an
image layout directory; a JSON manifest). Both tools validate it as
subprocesses. The rules:
- actool rejects  -> acbuild rejects, with a readable line naming the problem;
- a case in STRICTER -> actool really accepts it (so the list cannot rot) and
  acbuild rejects it on purpose (the README lists these);
- a VALID case -> both accept.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO

HEX = "ab" * 64


def manifest(**over: Any) -> dict:
    m = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/app",
         "labels": [{"name": "os", "value": "linux"}, {"name": "arch", "value": "amd64"}]}
    m.update(over)
    return m


def app(**over: Any) -> dict:
    a = {"exec": ["/bin/app"], "user": "0", "group": "0"}
    a.update(over)
    return manifest(app=a)


def iso(name: str, value: Any = None, **kw: Any) -> dict:
    item = {"name": name, **kw}
    if value is not None:
        item["value"] = value
    return app(isolators=[item])


@dataclass
class Entry:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""


def default_entries() -> list[Entry]:
    return [Entry("rootfs", tarfile.DIRTYPE), Entry("rootfs/bin", tarfile.DIRTYPE),
            Entry("rootfs/bin/app", data=b"#!/bin/sh\necho hi\n")]


@dataclass
class Case:
    id: str
    mention: str  # a word acbuild's output must contain
    manifest: Any = None  # dict, raw bytes, or None for no manifest entry
    entries: list[Entry] | None = None  # None: default rootfs
    kind: str = "aci"  # aci | layout | json
    extra: list[Entry] = field(default_factory=list)  # appended after the manifest


def tar_bytes(c: Case) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        entries = list(default_entries() if c.entries is None else c.entries)
        if c.manifest is not None:
            data = c.manifest if isinstance(c.manifest, bytes) else json.dumps(c.manifest).encode()
            entries.append(Entry("manifest", data=data))
        for e in entries + c.extra:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mode = 0o755 if e.type == tarfile.DIRTYPE else 0o644
            info.mtime = 1_500_000_000
            info.linkname = e.linkname
            info.size = len(e.data) if e.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(e.data) if info.size else None)
    return buf.getvalue()


def build(c: Case, tmp: Path, gz: bool) -> Path:
    if c.kind == "json":
        path = tmp / f"{c.id}.json"
        path.write_bytes(c.manifest if isinstance(c.manifest, bytes) else json.dumps(c.manifest).encode())
        return path
    if c.kind == "layout":
        path = tmp / c.id
        path.mkdir()
        for e in c.entries if c.entries is not None else default_entries():
            target = path / e.name
            if e.type == tarfile.DIRTYPE:
                target.mkdir(parents=True)
            elif e.type == tarfile.SYMTYPE:
                target.symlink_to(e.linkname)
            else:
                target.write_bytes(e.data)
        if c.manifest is not None:
            (path / "manifest").write_bytes(json.dumps(c.manifest).encode())
        return path
    path = tmp / f"{c.id}.aci"
    data = tar_bytes(c)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


R, D, S, L = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
ROOT = [Entry("rootfs", D)]

BROKEN = [
    # names and versions
    Case("name-uppercase", "ACIdentifier", manifest(name="Example.com/app")),
    Case("name-empty", "name must be set", manifest(name="")),
    Case("name-edge-dash", "start and end", manifest(name="-app")),
    Case("name-bad-char", "ACIdentifier", manifest(name="example.com/a b")),
    Case("ackind-wrong", "ACKind", manifest(acKind="Image")),
    Case("ackind-pod-in-aci", "ACKind", manifest(acKind="PodManifest")),
    Case("acversion-prefix-v", "SemVer", manifest(acVersion="v0.8.11")),
    Case("acversion-zero", "SemVer cannot be zero", manifest(acVersion="0.0.0")),
    Case("acversion-short", "SemVer", manifest(acVersion="0.8")),
    Case("acversion-missing", "acVersion must be set", {k: v for k, v in manifest().items() if k != "acVersion"}),
    Case("json-syntax", "not valid JSON", b'{"acKind": "ImageManifest",'),
    # labels
    Case("label-os-bad", 'bad os "windows"', manifest(labels=[{"name": "os", "value": "windows"}])),
    Case("label-os-case", 'bad os "Linux"', manifest(labels=[{"name": "os", "value": "Linux"}])),
    Case("label-arch-bad", 'bad arch "x86_64"',
         manifest(labels=[{"name": "os", "value": "linux"}, {"name": "arch", "value": "x86_64"}])),
    Case("label-duplicate", "duplicate labels", manifest(labels=[{"name": "v", "value": "1"}, {"name": "v", "value": "2"}])),
    Case("label-called-name", 'invalid label name: "name"', manifest(labels=[{"name": "name", "value": "x"}])),
    Case("label-name-upper", "ACIdentifier", manifest(labels=[{"name": "Version", "value": "1"}])),
    # app
    Case("app-user-missing", "user is required", manifest(app={"exec": ["/x"], "group": "0"})),
    Case("app-group-empty", "group is required", manifest(app={"exec": ["/x"], "user": "0", "group": ""})),
    Case("app-exec-string", "exec must be a list", app(exec="/bin/app")),
    Case("app-user-number", "user must be a string", app(user=0)),
    Case("env-name-digit", "valid identifier", app(environment=[{"name": "1FOO", "value": "x"}])),
    Case("env-duplicate", "duplicate environment", app(environment=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}])),
    Case("env-name-empty", "must not be empty", app(environment=[{"name": "", "value": "x"}])),
    Case("event-bad-name", "bad eventHandler", app(eventHandlers=[{"name": "pre-stop", "exec": ["/x"]}])),
    Case("event-duplicate", "Only one eventHandler",
         app(eventHandlers=[{"name": "pre-start", "exec": ["/x"]}, {"name": "pre-start", "exec": ["/y"]}])),
    Case("workdir-relative", "absolute", app(workingDirectory="srv")),
    Case("port-zero", "1-65535", app(ports=[{"name": "http", "protocol": "tcp", "port": 0}])),
    Case("port-range-end", "end of port range", app(ports=[{"name": "http", "protocol": "tcp", "port": 65535, "count": 2}])),
    Case("port-name-dot", "ACName", app(ports=[{"name": "http.alt", "protocol": "tcp", "port": 80}])),
    Case("port-negative", "non-negative", app(ports=[{"name": "http", "protocol": "tcp", "port": -1}])),
    Case("port-string", "non-negative", app(ports=[{"name": "http", "protocol": "tcp", "port": "80"}])),
    Case("mount-name-empty", "ACName cannot be empty", app(mountPoints=[{"name": "", "path": "/data"}])),
    Case("port-name-empty", "ACName cannot be empty", app(ports=[{"name": "", "protocol": "tcp", "port": 80}])),
    # isolators
    Case("iso-unknown", "invalid isolator", iso("resource/foo", {})),
    Case("iso-apparmor-master-only", "invalid isolator", iso("os/linux/apparmor-profile", {"profile": "x"})),
    Case("iso-null-value", "no value", iso("resource/cpu")),
    Case("iso-quantity-suffix-K", "suffix", iso("resource/memory", {"limit": "1K"})),
    Case("iso-quantity-garbage", "regular expression", iso("resource/cpu", {"limit": "abc"})),
    Case("iso-cpu-default-true", "default must be false", iso("resource/cpu", {"default": True})),
    Case("iso-iops-no-default", "default must be true", iso("resource/block-iops", {"limit": "10"})),
    Case("iso-iops-request", "request not supported",
         iso("resource/block-iops", {"default": True, "request": "1", "limit": "1"})),
    Case("iso-caps-empty", "set must be non-empty", iso("os/linux/capabilities-retain-set", {"set": []})),
    Case("iso-nnp-string", "bool", iso("os/linux/no-new-privileges", "yes")),
    Case("iso-oom-range", "between -1000 and 1000", iso("os/linux/oom-score-adj", 1001)),
    Case("iso-cpu-shares-range", "between 2 and 262144", iso("os/linux/cpu-shares", 1)),
    Case("iso-seccomp-errno", "errno", iso("os/linux/seccomp-retain-set", {"set": ["read"], "errno": "eperm"})),
    Case("iso-seccomp-twice", "too many instances", app(isolators=[
        {"name": "os/linux/seccomp-retain-set", "value": {"set": ["read"]}},
        {"name": "os/linux/seccomp-retain-set", "value": {"set": ["write"]}}])),
    Case("iso-seccomp-both", "incompatible", app(isolators=[
        {"name": "os/linux/seccomp-retain-set", "value": {"set": ["read"]}},
        {"name": "os/linux/seccomp-remove-set", "value": {"set": ["write"]}}])),
    Case("iso-selinux-colon", "invalid user value",
         iso("os/linux/selinux-context", {"user": "a:b", "role": "r", "type": "t", "level": "s0"})),
    Case("iso-sysctl-number", "string", iso("os/unix/sysctl", {"net.ipv4.ip_forward": 1})),
    # annotations and dependencies
    Case("annotation-date", "bad Date", manifest(annotations=[{"name": "created", "value": "2020-01-01"}])),
    Case("annotation-url-scheme", "http/https", manifest(annotations=[{"name": "homepage", "value": "ftp://x.org"}])),
    Case("annotation-duplicate", "duplicate annotations",
         manifest(annotations=[{"name": "a", "value": "1"}, {"name": "a", "value": "2"}])),
    Case("dep-name-empty", "ACIdentifier cannot be empty", manifest(dependencies=[{"imageName": ""}])),
    Case("dep-id-sha256", "unrecognized hash type", manifest(dependencies=[{"imageName": "x.org/b", "imageID": "sha256-aa"}])),
    Case("dep-id-no-dash", "badly formatted", manifest(dependencies=[{"imageName": "x.org/b", "imageID": "sha512"}])),
    Case("dep-label-os", 'bad os "plan9"',
         manifest(dependencies=[{"imageName": "x.org/b", "labels": [{"name": "os", "value": "plan9"}]}])),
    Case("dep-size-negative", "non-negative", manifest(dependencies=[{"imageName": "x.org/b", "size": -1}])),
    # archive layout
    Case("aci-no-manifest", "manifest", None),
    Case("aci-no-rootfs-entry", "rootfs", manifest(), entries=[Entry("rootfs/bin", D), Entry("rootfs/bin/app", data=b"x")]),
    Case("aci-extra-top-level", "unrecognized", manifest(), extra=[Entry("etc", D)]),
    Case("aci-extra-top-file", "unrecognized", manifest(), extra=[Entry("README", data=b"hi")]),
    Case("aci-absolute-path", "/rootfs/etc", manifest(), extra=[Entry("/rootfs/etc", D)]),
    Case("aci-dotdot-escape", "..", manifest(), extra=[Entry("rootfs/../../etc/passwd", data=b"x")]),
    Case("aci-two-manifests", "manifest", manifest(), extra=[Entry("manifest", data=json.dumps(manifest()).encode())]),
    Case("aci-duplicate-file", "duplicate", manifest(), extra=[Entry("rootfs/bin/app", data=b"again")]),
    Case("aci-garbage", "not an ACI", b"PK\x03\x04 a zip file", kind="json"),
    # layout directories
    Case("layout-extra", "unrecognized file path", manifest(), kind="layout", entries=ROOT + [Entry("notes.txt", data=b"x")]),
    Case("layout-no-rootfs", "no rootfs", manifest(), kind="layout", entries=[]),
    Case("layout-no-manifest", "no image manifest", None, kind="layout"),
    Case("layout-rootfs-symlink", "rootfs is not a directory", manifest(), kind="layout",
         entries=[Entry("real", D), Entry("rootfs", S, linkname="real")]),
    # pod manifests
    Case("pod-duplicate-app", "duplicate apps", {"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [
        {"name": "a", "image": {"id": "sha512-" + HEX}}, {"name": "a", "image": {"id": "sha512-" + HEX}}]}, kind="json"),
    Case("pod-host-volume-relative", "absolute", {"acKind": "PodManifest", "acVersion": "0.8.11",
                                                  "volumes": [{"name": "v", "kind": "host", "source": "data"}]}, kind="json"),
    Case("pod-app-name-empty", "ACName cannot be empty", {"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [
        {"name": "", "image": {"id": "sha512-" + HEX}}]}, kind="json"),
    Case("pod-empty-volume-source", "source for empty volume", {"acKind": "PodManifest", "acVersion": "0.8.11",
         "volumes": [{"name": "v", "kind": "empty", "source": "/srv"}]}, kind="json"),
    Case("pod-image-name-empty", "ACIdentifier cannot be empty", {"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [
        {"name": "a", "image": {"id": "sha512-" + HEX, "name": ""}}]}, kind="json"),
    Case("pod-image-id-empty", "hash", {"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [
        {"name": "a", "image": {"id": "", "name": "example.com/app"}}]}, kind="json"),
    Case("pod-volume-kind", "volume kind", {"acKind": "PodManifest", "acVersion": "0.8.11",
                                            "volumes": [{"name": "v", "kind": "tmpfs"}]}, kind="json"),
    Case("manifest-json-bad-label", "duplicate labels", manifest(labels=[{"name": "v", "value": "1"}, {"name": "v", "value": "2"}]),
         kind="json"),
]

# actool 0.8.11 accepts these; acbuild refuses them on purpose (README, "Stricter than actool").
STRICTER = [
    Case("strict-name-double-slash", "runs", manifest(name="example.com//app")),
    Case("strict-dep-id-not-hex", "128 lowercase hex", manifest(dependencies=[{"imageName": "x.org/b", "imageID": "sha512-zz"}])),
    Case("strict-whitelist-relative", "absolute", manifest(pathWhitelist=["bin/app"])),
    Case("strict-port-no-protocol", "protocol", app(ports=[{"name": "http", "port": 80}])),
    Case("strict-port-duplicate", "duplicate port", app(ports=[{"name": "h", "protocol": "tcp", "port": 80},
                                                               {"name": "h", "protocol": "tcp", "port": 81}])),
    Case("strict-mount-relative", "absolute", app(mountPoints=[{"name": "data", "path": "data"}])),
    Case("strict-caps-retain-and-remove", "together", app(isolators=[
        {"name": "os/linux/capabilities-retain-set", "value": {"set": ["CAP_CHOWN"]}},
        {"name": "os/linux/capabilities-remove-set", "value": {"set": ["CAP_KILL"]}}])),
    Case("strict-symlink-escape", "rootfs", manifest(), extra=[Entry("rootfs/bin/evil", S, linkname="../../../etc/shadow")]),
    Case("strict-symlink-absolute-escape", "rootfs", manifest(), extra=[Entry("rootfs/bin/up", S, linkname="/../..")]),
    Case("strict-hardlink-escape", "link", manifest(), extra=[Entry("rootfs/bin/hl", L, linkname="manifest")]),
    Case("strict-rootfs-dotdot-manifest", "..", None, extra=[Entry("rootfs/../manifest", data=json.dumps(manifest()).encode())]),
    Case("strict-duplicate-rootfs", "rootfs", manifest(), extra=[Entry("rootfs", D)]),
    Case("strict-pod-no-acversion", "acVersion", {"acKind": "PodManifest"}, kind="json"),
    Case("strict-quantity-dot", "no digits", iso("resource/memory", {"limit": "."})),
    Case("strict-quantity-minus-dot", "no digits", iso("resource/cpu", {"limit": "-."})),
]

# Stricter cases that are manifest checks, which `validate --lax` turns off.
LAX_ACCEPTS = {c.id for c in STRICTER if c.manifest is not None and not c.extra}

VALID = [
    Case("valid-minimal", "", manifest()),
    Case("valid-no-labels", "", {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/data"}),
    Case("valid-full", "", manifest(
        app={"exec": ["/bin/app", "--flag"], "user": "1000", "group": "1000", "supplementaryGIDs": [10, 20],
             "eventHandlers": [{"name": "pre-start", "exec": ["/bin/prep"]}], "workingDirectory": "/srv",
             "environment": [{"name": "PATH", "value": "/bin"}, {"name": "my.var-1", "value": "x"}],
             "isolators": [{"name": "resource/memory", "value": {"limit": "1Gi"}},
                           {"name": "resource/cpu", "value": {"request": "250m", "limit": "1"}},
                           {"name": "os/linux/capabilities-retain-set", "value": {"set": ["CAP_NET_BIND_SERVICE"]}},
                           {"name": "os/linux/no-new-privileges", "value": True},
                           {"name": "os/linux/seccomp-remove-set", "value": {"set": ["reboot"], "errno": "EPERM"}},
                           {"name": "os/linux/oom-score-adj", "value": -500}],
             "mountPoints": [{"name": "data", "path": "/data", "readOnly": True}],
             "ports": [{"name": "http", "protocol": "tcp", "port": 8080, "count": 2, "socketActivated": True}],
             "userAnnotations": {"a": "b"}, "userLabels": {"tier": "web"}},
        annotations=[{"name": "created", "value": "2020-01-01T00:00:00Z"},
                     {"name": "homepage", "value": "https://example.com/<app>&"}],
        dependencies=[{"imageName": "example.com/base", "imageID": "sha512-" + HEX,
                       "labels": [{"name": "version", "value": "1.0"}], "size": 1024}],
        pathWhitelist=["/bin/app"])),
    Case("valid-symlink-inside", "", manifest(), extra=[Entry("rootfs/bin/sh", S, linkname="app"),
                                                         Entry("rootfs/lnk", S, linkname="/bin/app")]),
    Case("valid-hardlink-inside", "", manifest(), extra=[Entry("rootfs/bin/app2", L, linkname="rootfs/bin/app")]),
    Case("valid-darwin", "", manifest(labels=[{"name": "os", "value": "darwin"}, {"name": "arch", "value": "x86_64"}])),
    Case("valid-future-acversion", "", manifest(acVersion="1.2.3-rc.1+build")),
    # from the spec's own list of valid ACIdentifiers
    Case("valid-name-tilde-user", "", manifest(name="example.com/~bob/database")),
    Case("valid-name-tilde-app", "", manifest(name="example.com/~user/app_v1")),
    Case("valid-port-other-protocol", "", app(ports=[{"name": "h3", "protocol": "quic", "port": 443}])),
    Case("valid-quantity-spaces", "", iso("resource/memory", {"limit": " 1Gi "})),
    Case("valid-layout", "", manifest(), kind="layout", entries=ROOT),
    Case("valid-image-json", "", app(), kind="json"),
    Case("valid-pod-json", "", {"acKind": "PodManifest", "acVersion": "0.8.11",
                                "apps": [{"name": "web", "image": {"id": "sha512-" + HEX, "name": "example.com/app"},
                                          "mounts": [{"volume": "data", "path": "/data"}]}],
                                "volumes": [{"name": "data", "kind": "host", "source": "/srv/data"}]}, kind="json"),
]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)


def acbuild_validate(path: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "acbuild", "validate", str(path)])


def check_readable(res: subprocess.CompletedProcess, path: Path, mention: str) -> None:
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out
    assert res.returncode == 1, f"exit {res.returncode}: {out}"
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(f"{path}: ")]
    assert lines, f"no `FILE: problem` line: {out}"
    assert mention.lower() in res.stdout.lower(), f"{mention!r} not mentioned in: {out}"


def _param(cases: list[Case]):
    # Alternate gzip and plain tar so both readers are exercised.
    return [pytest.param(c, i % 2 == 0, id=c.id) for i, c in enumerate(cases)]


def test_corpus_is_large_enough():
    assert len(BROKEN) + len(STRICTER) >= 35
    assert len({c.id for c in BROKEN + STRICTER + VALID}) == len(BROKEN + STRICTER + VALID)


@pytest.mark.parametrize("case,gz", _param(BROKEN))
def test_actool_rejects_so_acbuild_rejects(case: Case, gz: bool, tmp_path: Path, actool: str):
    path = build(case, tmp_path, gz)
    ref = run([actool, "validate", str(path)])
    assert ref.returncode != 0, f"actool accepts {case.id}; the case is not broken: {ref.stdout}{ref.stderr}"
    check_readable(acbuild_validate(path), path, case.mention)
    # actool's own checks refuse it, so --lax (only those) must too, and not as "stricter".
    lax = run([sys.executable, "-m", "acbuild", "validate", "--lax", str(path)])
    check_readable(lax, path, case.mention)
    assert "stricter than actool" not in acbuild_validate(path).stdout


@pytest.mark.parametrize("case,gz", _param(STRICTER))
def test_stricter_than_actool(case: Case, gz: bool, tmp_path: Path, actool: str):
    path = build(case, tmp_path, gz)
    ref = run([actool, "validate", str(path)])
    assert ref.returncode == 0, f"actool now rejects {case.id}; move it to BROKEN: {ref.stdout}{ref.stderr}"
    res = acbuild_validate(path)
    check_readable(res, path, case.mention)
    if case.id in LAX_ACCEPTS:
        # --lax drops acbuild's extra manifest checks (archive layout checks always stay).
        lax = run([sys.executable, "-m", "acbuild", "validate", "--lax", str(path)])
        assert lax.returncode == 0, lax.stdout + lax.stderr


@pytest.mark.parametrize("case,gz", _param(VALID))
def test_both_accept_valid(case: Case, gz: bool, tmp_path: Path, actool: str):
    path = build(case, tmp_path, gz)
    ref = run([actool, "validate", str(path)])
    assert ref.returncode == 0, ref.stdout + ref.stderr
    for res in (acbuild_validate(path), run([sys.executable, "-m", "acbuild", "validate", "--lax", str(path)])):
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout == f"{path}: ok\n"


def test_several_files_one_line_per_problem(tmp_path: Path):
    good = build(VALID[0], tmp_path, True)
    bad = build(Case("two-problems", "", manifest(name="", acVersion="0.0.0"), kind="json"), tmp_path, False)
    res = run([sys.executable, "-m", "acbuild", "validate", str(good), str(bad)])
    assert res.returncode == 1
    assert res.stdout.splitlines() == [
        f"{good}: ok",
        f"{bad}: manifest: acVersion: SemVer cannot be zero",
        f"{bad}: manifest: name must be set",
    ]
    quiet = run([sys.executable, "-m", "acbuild", "validate", "-q", str(good)])
    assert (quiet.returncode, quiet.stdout) == (0, "")


def test_missing_file_is_not_found(tmp_path: Path):
    res = run([sys.executable, "-m", "acbuild", "validate", str(tmp_path / "nope.aci")])
    assert res.returncode == 2 and "no such file" in res.stderr and "Traceback" not in res.stderr
