"""Speed and look of the scan generator (issue 13). Prints figures; never a test.

For each split, document type and difficulty it writes ``--count`` scans in one process
and prints the milliseconds per scan (process CPU time, which the other users of a
shared machine do not inflate, and wall time). With ``--sheet PATH`` it also saves a
contact sheet: one scan per layout per type, labelled with the layout, the capture,
the DPI and the faces, to look at whether the pages look like certificates.

    .venv/bin/python bench/scan_generator.py --count 12 --split classic tune heldout
    .venv/bin/python bench/scan_generator.py --count 0 --sheet bench/out/sheet.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_THREAD_LIMIT", "1")

SHEET_WIDTH = 420  # pixels per thumbnail


def _speed(splits: list[str], types: list[str], difficulties: list[str], count: int) -> None:
    from stampless.fixtures.scans import generate

    print(f"{'split':8} {'difficulty':10} {'type':24} {'cpu ms/scan':>11} {'wall ms/scan':>12}")
    for split in splits:
        for difficulty in difficulties:
            for doc_type in types:
                with tempfile.TemporaryDirectory() as folder:
                    # The first item builds the record index and font caches; not timed.
                    generate(Path(folder) / "warm", doc_type, 1, 999, difficulty, split=split)
                    cpu, wall = time.process_time(), time.perf_counter()
                    generate(Path(folder), doc_type, count, 3, difficulty, split=split)
                    cpu = (time.process_time() - cpu) / count * 1000
                    wall = (time.perf_counter() - wall) / count * 1000
                print(f"{split:8} {difficulty:10} {doc_type:24} {cpu:11.0f} {wall:12.0f}")


def _sheet(path: Path, split: str, difficulty: str, types: list[str], seed: int) -> None:
    """One scan per layout per type, the first the split draws in each layout."""
    from PIL import Image, ImageDraw

    from stampless.fixtures.fonts import font
    from stampless.fixtures.scans import generate, split_layouts

    rows: list[list[tuple[Image.Image, str]]] = []
    with tempfile.TemporaryDirectory() as folder:
        for doc_type in types:
            wanted = split_layouts(doc_type, split)
            found: dict[str, tuple[Image.Image, str]] = {}
            # Forty items draw every layout of a split with near certainty.
            for jpg in generate(
                Path(folder) / doc_type, doc_type, 40, seed, difficulty, split=split
            ):
                truth: dict[str, Any] = json.loads(
                    jpg.with_suffix(".truth.json").read_text(encoding="utf-8")
                )
                layout = truth["layout_id"]
                if layout in found:
                    continue
                with Image.open(jpg) as image:
                    thumb = image.convert("RGB")
                    thumb.thumbnail((SHEET_WIDTH, SHEET_WIDTH))
                caption = (
                    f"{doc_type} {layout} {truth.get('capture', 'scan')} {truth['dpi']}dpi "
                    f"{truth['faces']['label']}/{truth['faces']['value']}"
                )
                found[layout] = (thumb, caption)
            rows.append([found[name] for name in wanted if name in found])
    columns = max(len(r) for r in rows)
    cell_h = SHEET_WIDTH + 24
    sheet = Image.new("RGB", (columns * (SHEET_WIDTH + 8), len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    caption_font = font("sans", 12)
    for r, row in enumerate(rows):
        for c, (thumb, caption) in enumerate(row):
            x, y = c * (SHEET_WIDTH + 8), r * cell_h
            sheet.paste(thumb, (x, y))
            draw.text((x, y + SHEET_WIDTH + 4), caption, fill="black", font=caption_font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    print(f"contact sheet of {sum(len(r) for r in rows)} scans written to {path}")


def main(argv: list[str] | None = None) -> int:
    from stampless.fixtures.records import DOC_TYPES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=12, help="scans per row (0: no timing)")
    parser.add_argument("--split", nargs="+", default=["classic", "tune"])
    parser.add_argument("--difficulty", nargs="+", default=["normal", "hard"])
    parser.add_argument("--type", nargs="+", default=sorted(DOC_TYPES), dest="types")
    parser.add_argument("--sheet", type=Path, help="write a contact sheet PNG here")
    parser.add_argument("--sheet-split", default="heldout")
    parser.add_argument("--sheet-difficulty", default="normal")
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args(argv)
    if args.count > 0:
        _speed(args.split, args.types, args.difficulty, args.count)
    if args.sheet:
        _sheet(args.sheet, args.sheet_split, args.sheet_difficulty, args.types, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
