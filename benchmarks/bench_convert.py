"""acbuild convert beside docker2aci, and registry pulls beside skopeo, in one run.

    .venv/bin/python benchmarks/bench_convert.py --docker2aci-src DIR [--runs 3]
    .venv/bin/python benchmarks/bench_convert.py --docker2aci BINARY [--runs 3]

docker2aci is not part of acbuild: give a checkout of appc/docker2aci (v0.17.2,
with its vendor/ directory) as --docker2aci-src and the script builds it with
Debian's golang-go (`apt-get install golang-go`; GOPATH mode, GO111MODULE=off,
no network), or give a binary built that way. Needs root (buildah with vfs
storage), buildah, skopeo and docker-registry.

The image: buildah, FROM scratch, three layers: Debian's own files from this
machine (/etc, /usr/sbin, /usr/share/perl: a real Debian tree, since no
network is allowed for mmdebstrap), the shared synthetic tree
(../shared/bench/make_rootfs.py, --profile, default small) and a layer that
deletes part of the first. It is written as a docker-archive and an OCI layout.

Rows: acbuild convert of the docker-archive and of the OCI layout against
docker2aci of the docker-archive (docker2aci cannot read OCI layouts, nor
skopeo's docker-archive, whose ID/layer.tar are symlinks: it gets a copy with
them dereferenced, as `docker save` wrote them); a pull (manifest, config and
layers into an empty blob cache) from a docker-registry on 127.0.0.1 against
`skopeo copy docker://... oci:DIR`; and a pull of a 40-layer image from a TLS
registry with keep-alive (acbuild's default) against the same pull with every
connection closed after its request. Each row is the median of --runs runs (at
least 3) of each side, the two sides run alternately so that load changes hit
both; wall and CPU time (user + system, children included). The load average
is printed before and after. Targets: convert <= 0.5x docker2aci, pull <= 1.2x
skopeo. A report, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # tests/conftest.py imports its siblings by plain name


def run(*cmd: str, cwd: Path | None = None, env: dict | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr[-2000:]}")


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def build_docker2aci(src: Path, work: Path) -> Path:
    """docker2aci built from its source with Debian's golang-go (GOPATH mode, vendored deps)."""
    if shutil.which("go") is None:
        raise SystemExit("go not found: apt-get install golang-go")
    binary = work / "docker2aci"
    if binary.exists():
        return binary
    gopath = work / "gopath"
    link = gopath / "src/github.com/appc/docker2aci"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(src.resolve())
    print(f"building docker2aci from {src} with {subprocess.run(['go', 'version'], capture_output=True, text=True).stdout.strip()} ...", flush=True)
    env = dict(os.environ, GOPATH=str(gopath), GO111MODULE="off",
               GOCACHE=str(work / "gocache"), CGO_ENABLED="0")
    run("go", "build", "-o", str(binary), "github.com/appc/docker2aci", cwd=link, env=env)
    return binary


def build_image(work: Path, profile: str, script: str) -> tuple[Path, Path]:
    """The benchmark image as (docker-archive, OCI layout), built once per work dir."""
    archive, layout = work / "image.docker.tar", work / "layout"
    if archive.exists() and layout.exists():
        return archive, layout
    storage = ["--storage-driver", "vfs", "--root", str(work / "bh-root"), "--runroot", str(work / "bh-run")]
    synthetic = work / "synthetic"
    print(f"generating the {profile} synthetic tree ...", flush=True)
    subprocess.run([sys.executable, script, profile, str(synthetic), "--no-digest"], check=True,
                   stdout=subprocess.DEVNULL)

    def buildah(*args: str) -> str:
        done = subprocess.run(["buildah", *storage, *args], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"buildah {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout.strip()

    print("building the image with buildah ...", flush=True)
    c = buildah("from", "scratch")
    for src in ("/etc", "/usr/sbin", "/usr/share/perl"):
        buildah("copy", c, src, src)
    buildah("commit", "-q", c, "bench:1")
    c = buildah("from", "bench:1")
    buildah("copy", c, str(synthetic), "/srv/synthetic")
    buildah("commit", "-q", c, "bench:2")
    c = buildah("from", "bench:2")
    mount = buildah("mount", c)
    shutil.rmtree(Path(mount) / "usr/share/perl", ignore_errors=True)  # a directory whiteout
    buildah("umount", c)
    buildah("commit", "-q", c, "bench:latest")
    buildah("push", "-q", "bench:latest", f"oci:{layout}:latest")
    run("skopeo", "copy", "-q", f"oci:{layout}:latest", f"docker-archive:{archive}:bench:latest")
    shutil.rmtree(synthetic)
    return archive, layout


def dereferenced(archive: Path, dest: Path) -> Path:
    """The docker-archive with its `ID/layer.tar` symlinks replaced by the files
    they name, as `docker save` used to write it: docker2aci reads only that."""
    import tarfile

    if dest.exists():
        return dest
    with tarfile.open(archive) as src, tarfile.open(dest, "w") as out:
        members = {m.name: m for m in src.getmembers()}
        for m in src.getmembers():
            target = members.get(os.path.normpath(os.path.join(os.path.dirname(m.name), m.linkname))) if m.issym() else None
            if target is not None and target.isreg():
                info = tarfile.TarInfo(m.name)
                info.size, info.mode, info.mtime = target.size, 0o644, target.mtime
                out.addfile(info, src.extractfile(target))
            else:
                out.addfile(m, src.extractfile(m) if m.isreg() else None)
    return dest


def entries(aci: Path) -> int:
    import tarfile

    with tarfile.open(aci) as tf:
        return len(tf.getmembers())


def _cpu() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def side_by_side(ours, theirs, runs: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Median (wall, CPU) of `runs` runs of each, alternating ours and theirs (CPU:
    user + system of this process and the commands it ran, the steadier figure on a
    shared machine)."""
    times: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
    for _ in range(runs):
        for side, fn in enumerate((ours, theirs)):
            start, start_cpu = time.perf_counter(), _cpu()
            fn()
            times[side].append((time.perf_counter() - start, _cpu() - start_cpu))

    def medians(samples):
        return statistics.median(w for w, _ in samples), statistics.median(c for _, c in samples)

    return medians(times[0]), medians(times[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    tool = ap.add_mutually_exclusive_group(required=True)
    tool.add_argument("--docker2aci-src", type=Path, metavar="DIR",
                      help="a checkout of appc/docker2aci (with vendor/): built here with golang-go")
    tool.add_argument("--docker2aci", type=Path, metavar="BINARY", help="a docker2aci built from appc/docker2aci")
    ap.add_argument("--runs", type=int, default=3, help="runs of each side per row (at least 3; default 3)")
    ap.add_argument("--profile", default="small", help="make_rootfs.py profile of the synthetic layer (default: small)")
    ap.add_argument("--rootfs-script", default=str(REPO.parent / "shared/bench/make_rootfs.py"))
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (the image is reused)")
    args = ap.parse_args()
    if args.runs < 3:
        ap.error("--runs: at least 3 (the rows are medians)")
    if os.geteuid() != 0:
        raise SystemExit("bench_convert needs root (buildah with vfs storage)")

    work = Path(args.keep or tempfile.mkdtemp(prefix="acbuild-bench-convert-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        docker2aci = args.docker2aci or build_docker2aci(args.docker2aci_src, work)
        archive, layout = build_image(work, args.profile, args.rootfs_script)
        out = work / "out"
        out.mkdir(exist_ok=True)
        acbuild = [sys.executable, "-m", "acbuild", "convert", "--overwrite"]
        legacy = dereferenced(archive, work / "image.docker-save.tar")

        def d2a() -> None:
            for old in out.glob("library-*.aci"):
                old.unlink()
            run(str(docker2aci), str(legacy), cwd=out)

        before = load()
        print(f"load before: {before}", flush=True)
        rows = []
        ours, theirs = side_by_side(lambda: run(*acbuild, f"docker-archive:{archive}", "-o", str(out / "a.aci")),
                                    d2a, args.runs)
        rows.append(("convert docker-archive", ours, "docker2aci docker-archive", theirs, 0.5))
        ours, theirs = side_by_side(lambda: run(*acbuild, f"oci:{layout}:latest", "-o", str(out / "b.aci")),
                                    d2a, args.runs)
        rows.append(("convert OCI layout", ours, "docker2aci docker-archive", theirs, 0.5))
        rows += pull_rows(work, layout, args.runs)
        after = load()
        theirs_aci = next(out.glob("library-*.aci"))
        print(f"entries: acbuild {entries(out / 'a.aci')}, docker2aci {entries(theirs_aci)} "
              "(docker2aci adds /dev symlinks; both hold the same files)")
        size = sum(f.stat().st_size for f in (layout / "blobs/sha256").iterdir())
        print(f"\nimage: {size / 1e6:.0f} MB of blobs in 3 layers; {os.cpu_count()} CPUs; medians of {args.runs} "
              f"runs of each side, run alternately")
        print(f"load before: {before}\nload after:  {after}")
        print(f"{'acbuild':<26} {'wall s':>7} {'cpu s':>6}   {'other':<28} {'wall s':>7} {'cpu s':>6}"
              f"   ratio (wall / cpu)  target")
        for ours_name, ours, theirs_name, theirs, target in rows:
            print(f"{ours_name:<26} {ours[0]:7.3f} {ours[1]:6.2f}   {theirs_name:<28} {theirs[0]:7.3f} {theirs[1]:6.2f}"
                  f"   {ours[0] / theirs[0]:5.2f} / {ours[1] / theirs[1]:4.2f}        {f'<= {target}' if target else ''}")
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)])


def many_layers(dest: Path, count: int = 40) -> Path:
    """An OCI layout of `count` small gzip layers (one 64 KiB file each)."""
    from tests.imagetools import layer_tar
    from tests.test_oci_convert import make_layout

    if not (dest / "index.json").exists():
        make_layout(dest, [layer_tar([(f"layer{n}/file", os.urandom(64 << 10), {})]) for n in range(count)],
                    gzipped=tuple(range(count)))
    return dest


def pull_rows(work: Path, layout: Path, runs: int):
    from acbuild.net.http import ConnectionPool
    from acbuild.oci.blobs import BlobCache
    from acbuild.oci.reference import parse_reference
    from acbuild.oci.registry import RegistryClient, RegistryOptions
    import conftest  # noqa: F401  (first under its plain name, as pytest imports it: its siblings need that)
    from tests.netfixtures import make_test_ca
    from tests.registry_fixture import start_registry

    class NoKeepAlive(ConnectionPool):
        """Every connection closed after its request (acbuild before keep-alive)."""

        def give(self, key, conn) -> None:
            conn.close()

    def pull(ref, options, keep_alive: bool = True) -> None:
        shutil.rmtree(work / "blobs", ignore_errors=True)
        with RegistryClient.for_reference(ref, options) as client:
            if not keep_alive:
                client.pool = NoKeepAlive()
            client.pull(ref, BlobCache(work / "blobs"))

    rows = []
    many = many_layers(work / "many-layers")
    reg = start_registry(work / "registry")
    try:
        run("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{reg.host}/bench:latest")
        ref = parse_reference(f"{reg.host}/bench:latest")

        def skopeo() -> None:
            shutil.rmtree(work / "skopeo-layout", ignore_errors=True)
            run("skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{reg.host}/bench:latest",
                f"oci:{work / 'skopeo-layout'}:latest")

        ours, theirs = side_by_side(lambda: pull(ref, RegistryOptions(insecure=True)), skopeo, runs)
        rows.append(("registry pull", ours, "skopeo copy -> oci:DIR", theirs, 1.2))
    finally:
        reg.stop()
    (work / "ca").mkdir(exist_ok=True)
    ca = make_test_ca(work / "ca")
    reg = start_registry(work / "registry-tls", ca=ca)
    try:
        run("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{many}:latest", f"docker://{reg.host}/many:latest")
        ref = parse_reference(f"{reg.host}/many:latest")
        options = RegistryOptions(ca_file=ca.ca)
        ours, theirs = side_by_side(lambda: pull(ref, options), lambda: pull(ref, options, keep_alive=False), runs * 3)
        rows.append(("TLS pull, 40 layers", ours, "the same, no keep-alive", theirs, None))
    finally:
        reg.stop()
    return rows


if __name__ == "__main__":
    main()
