"""What the benchmarks share: their command line and the synthetic tree.

The tree comes from ../shared/bench/make_rootfs.py (beside the repository), so
figures compare across tools and machines."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def arguments(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--profile", default="medium", help="make_rootfs.py profile (default: medium)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rootfs-script", default=str(REPO.parent / "shared/bench/make_rootfs.py"),
                    help="the generator (default: ../shared/bench/make_rootfs.py beside the repo)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir)")
    return ap.parse_args()


def generate(script: str, profile: str, dest: Path, *extra: str) -> None:
    """The deterministic synthetic tree (extra: e.g. --aci-layout NAME)."""
    print(f"generating {profile} tree in {dest} ...", flush=True)
    subprocess.run([sys.executable, script, profile, str(dest), *extra, "--no-digest"], check=True,
                   stdout=subprocess.DEVNULL)
