"""acbuild convert beside docker2aci, and a registry pull beside skopeo, in one run.

    .venv/bin/python benchmarks/bench_convert.py --docker2aci /path/to/docker2aci [--runs 3]

docker2aci is not part of acbuild: build it yourself from appc/docker2aci (Go,
e.g. Debian's golang-go: GOPATH=... GO111MODULE=off go build) and give its path.
Needs root (buildah with vfs storage), buildah, skopeo and docker-registry.

The image: buildah, FROM scratch, three layers: Debian's own files from this
machine (/etc, /usr/sbin, /usr/share/perl: a real Debian tree, since no
network is allowed for mmdebstrap), the shared synthetic tree
(../shared/bench/make_rootfs.py, --profile, default small) and a layer that
deletes part of the first. It is written as a docker-archive and an OCI layout.

Rows (medians of --runs): acbuild convert of the docker-archive and of the OCI
layout against docker2aci of the docker-archive (docker2aci cannot read OCI
layouts, nor skopeo's docker-archive, whose ID/layer.tar are symlinks: it gets
a copy with them dereferenced, as `docker save` wrote them); a pull (manifest, config and layers into an empty blob cache) from a
docker-registry on 127.0.0.1 against `skopeo copy docker://... oci:DIR`.
Each row gives wall and CPU time (user + system, children included).
Targets: convert <= 0.5x docker2aci, pull <= 1.2x skopeo. A report, not a test.
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


def run(*cmd: str, cwd: Path | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr[-2000:]}")


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


def timed(fn, runs: int) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system, of this process and
    the commands it ran): on a shared machine the CPU time is the steadier figure."""
    import resource

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    walls, cpus = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), cpu()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(cpu() - start_cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docker2aci", required=True, help="path of a docker2aci binary built from appc/docker2aci")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profile", default="small", help="make_rootfs.py profile of the synthetic layer (default: small)")
    ap.add_argument("--rootfs-script", default=str(REPO.parent / "shared/bench/make_rootfs.py"))
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (the image is reused)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_convert needs root (buildah with vfs storage)")

    work = Path(args.keep or tempfile.mkdtemp(prefix="acbuild-bench-convert-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        archive, layout = build_image(work, args.profile, args.rootfs_script)
        out = work / "out"
        out.mkdir(exist_ok=True)
        acbuild = [sys.executable, "-m", "acbuild", "convert", "--overwrite"]

        legacy = dereferenced(archive, work / "image.docker-save.tar")

        def d2a() -> None:
            for old in out.glob("library-*.aci"):
                old.unlink()
            run(args.docker2aci, str(legacy), cwd=out)

        rows = [
            ("convert docker-archive", timed(lambda: run(*acbuild, f"docker-archive:{archive}", "-o", str(out / "a.aci")), args.runs),
             "docker2aci docker-archive", timed(d2a, args.runs), 0.5),
        ]
        rows.append(("convert OCI layout", timed(lambda: run(*acbuild, f"oci:{layout}:latest", "-o", str(out / "b.aci")), args.runs),
                     "docker2aci docker-archive", rows[0][3], 0.5))
        rows.append(pull_row(work, layout, args.runs))
        theirs = next(out.glob("library-*.aci"))
        print(f"entries: acbuild {entries(out / 'a.aci')}, docker2aci {entries(theirs)} "
              "(docker2aci adds /dev symlinks; both hold the same files)")
        size = sum(f.stat().st_size for f in (layout / "blobs/sha256").iterdir())
        print(f"\nimage: {size / 1e6:.0f} MB of blobs in 3 layers; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.2f} (other work on the machine skews timings)")
        print(f"{'acbuild':<24} {'wall s':>7} {'cpu s':>6}   {'other tool':<26} {'wall s':>7} {'cpu s':>6}"
              f"   ratio (wall / cpu)  target")
        for ours_name, ours, theirs_name, theirs, target in rows:
            print(f"{ours_name:<24} {ours[0]:7.2f} {ours[1]:6.2f}   {theirs_name:<26} {theirs[0]:7.2f} {theirs[1]:6.2f}"
                  f"   {ours[0] / theirs[0]:5.2f} / {ours[1] / theirs[1]:4.2f}        <= {target}")
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)])


def pull_row(work: Path, layout: Path, runs: int):
    from acbuild.oci.blobs import BlobCache
    from acbuild.oci.reference import parse_reference
    from acbuild.oci.registry import RegistryClient, RegistryOptions
    from tests.registry_fixture import start_registry

    reg = start_registry(work / "registry")
    try:
        run("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{reg.host}/bench:latest")
        ref = parse_reference(f"{reg.host}/bench:latest")

        def ours() -> None:
            shutil.rmtree(work / "blobs", ignore_errors=True)
            with RegistryClient.for_reference(ref, RegistryOptions(insecure=True)) as client:
                client.pull(ref, BlobCache(work / "blobs"))

        def skopeo() -> None:
            shutil.rmtree(work / "skopeo-layout", ignore_errors=True)
            run("skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{reg.host}/bench:latest",
                f"oci:{work / 'skopeo-layout'}:latest")

        return ("registry pull", timed(ours, runs), "skopeo copy -> oci:DIR", timed(skopeo, runs), 1.2)
    finally:
        reg.stop()


if __name__ == "__main__":
    main()
