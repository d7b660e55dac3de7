"""Benchmark of evidence size: the bundles of a `stampless demo` run, file by file.

    .venv/bin/python bench/evidence_size.py [--run var/demo/latest] [--demo]

Reads the sealed bundles of a demo run (``--demo`` runs ``stampless demo`` first) and
prints each bundle's size by kind of file (scan, preprocessing steps, screenshots, the
rest), and the median of the robot- and manual-tier bundles, the ones a browser and OCR
fill. Target (issue 16): a robot-tier bundle <= 800 KB median on the demo's certificates.
Never part of the tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

KB = 1024


def bundle_sizes(bundle: Path) -> tuple[str, Counter[str]]:
    """The bundle's tier and its bytes per kind of file (from its signed manifest)."""
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    verdict = json.loads((bundle / "verdict.json").read_text(encoding="utf-8"))
    sizes: Counter[str] = Counter()
    for f in manifest["files"]:
        kind = f["kind"] if f["kind"] in ("scan", "preprocessed", "screenshot") else "other"
        sizes[kind] += int(f["size"])
    return verdict["tier"], sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("var/demo/latest"))
    parser.add_argument("--demo", action="store_true", help="run `stampless demo` first")
    args = parser.parse_args()
    if args.demo:
        subprocess.run([sys.executable, "-m", "stampless", "demo"], check=False)
    evidence = args.run / "evidence"
    if not evidence.is_dir():
        sys.exit(f"No demo run at {args.run}; run 'stampless demo' or pass --demo.")
    print(f"evidence of {args.run.resolve()}")
    print(f"{'request':<26}{'tier':<9}{'scan':>8}{'steps':>8}{'shots':>8}{'other':>8}{'total':>9}")
    browsed = []
    for bundle in sorted(p for p in evidence.iterdir() if (p / "manifest.json").is_file()):
        tier, sizes = bundle_sizes(bundle)
        total = sum(sizes.values())
        if tier != "instant":
            browsed.append(total)
        print(
            f"{bundle.name:<26}{tier:<9}"
            + "".join(
                f"{sizes[k] / KB:>7.0f}K" for k in ("scan", "preprocessed", "screenshot", "other")
            )
            + f"{total / KB:>8.0f}K"
        )
    if browsed:
        median = statistics.median(browsed) / KB
        print(
            f"robot and manual tier: {len(browsed)} bundles, median {median:.0f} KB, "
            f"max {max(browsed) / KB:.0f} KB (target: median <= 800 KB)"
        )


if __name__ == "__main__":
    main()
