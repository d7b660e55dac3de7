"""How long webhook delivery takes to find new outbox verdicts (not a test; prints figures).

    .venv/bin/python bench/delivery_discover.py [--files 100000] [--new 10]

Fills a temporary outbox with ``--files`` verdict files (small placeholders: discovery
reads names, not bodies), lets delivery register them once, writes ``--new`` more through
the outbox writer (which journals them), and times three discovery passes: the journal
read that every delivery pass does, the same with nothing new, and the full listing done
once per worker start. No HTTP is involved.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from stampless.delivery import Delivery  # noqa: E402
from stampless.outbox import write_once  # noqa: E402


def _timed(label: str, run: Callable[[], int]) -> None:
    started = time.perf_counter()
    found = run()
    ms = (time.perf_counter() - started) * 1000
    print(f"{label:<44} {ms:10.1f} ms   {found} new")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--new", type=int, default=10)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="stampless-bench-") as tmp:
        outbox = Path(tmp) / "outbox"
        outbox.mkdir()
        for i in range(args.files):
            # Placeholders written directly, as an older outbox would hold them.
            fd = os.open(outbox / f"OLD-{i:08d}.json", os.O_WRONLY | os.O_CREAT, 0o644)
            os.close(fd)
        delivery = Delivery(Path(tmp) / "delivery.db", outbox, url="http://127.0.0.1:9/")
        print(f"outbox of {args.files} files, {args.new} new verdicts")
        _timed("first pass (lists the outbox once)", delivery.discover)
        for i in range(args.new):
            write_once(outbox, f"NEW-{i:04d}", b"{}\n")
        _timed("pass after new verdicts (journal)", delivery.discover)
        _timed("pass with nothing new (journal)", delivery.discover)
        _timed("full listing (once per worker start)", lambda: delivery.discover(full=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
