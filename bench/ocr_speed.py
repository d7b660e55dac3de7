"""Where a page's OCR time goes, on one core (issue 13's seconds-per-page target). Prints
figures; never a test.

Reads ``--count`` generated scans per document type (the tune split; ``stampless
fixtures scans``), verifies each against its record, and prints per page:

* the CPU and wall seconds of the whole reading and decision;
* the wall seconds of each named pass (``ocr.json``'s steps) and of the verification;
* recognition of the same line crops run one at a time against batches padded to their
  widest line (what RapidOCR does), so the choice in ``stampless.ocr.ppocr`` can be
  checked on this machine's onnxruntime.

    OMP_THREAD_LIMIT=1 .venv/bin/python bench/ocr_speed.py --count 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_THREAD_LIMIT", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ocr_accuracy import TYPES, _doctype, _generate, _record


def _padded(engine: Any, inputs: list[Any], columns: int) -> None:
    """Run ``inputs`` in width-sorted batches of at most ``columns`` padded columns (0: one
    line per run), each line padded to the batch's widest and at least REC_MIN_WIDTH."""
    import numpy as np

    from stampless.ocr.ppocr import REC_HEIGHT, REC_MIN_WIDTH

    batch: list[Any] = []
    for x in [*sorted(inputs, key=lambda a: a.shape[2]), None]:
        if x is not None and (not batch or (len(batch) + 1) * x.shape[2] <= columns):
            batch.append(x)
            continue
        widest = max(REC_MIN_WIDTH, batch[-1].shape[2])
        padded = np.zeros((len(batch), 3, REC_HEIGHT, widest), dtype=np.float32)
        for k, item in enumerate(batch):
            padded[k, :, :, : item.shape[2]] = item
        engine._rec.run(None, {engine._input: padded})
        batch = [] if x is None else [x]


def _cpu(call: Any) -> float:
    started = time.process_time()
    call()
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=4, help="scans per document type")
    parser.add_argument("--difficulty", default="normal")
    parser.add_argument("--scans", type=Path, default=Path("var/bench-scans"))
    args = parser.parse_args(argv)

    import numpy as np
    from loguru import logger
    from PIL import Image

    logger.remove()
    from stampless.compare import verify_and_decide
    from stampless.config import OcrConfig
    from stampless.fixtures.records import DOC_TYPES
    from stampless.ocr import read_document
    from stampless.ocr.ppocr import _rec_input, crop_quad, get_ppocr

    types = tuple(t for t in TYPES if t in DOC_TYPES)
    pairs = _generate(args.scans, args.count, args.difficulty, "tune", 1, types)
    config = OcrConfig(engine="ppocr")
    engine = get_ppocr(config)
    read_document(pairs[0][0], _doctype(types[0]), config, workers=1)  # models loaded

    cpu, wall, passes = [], [], defaultdict(list)
    singles, batched = [], []
    for jpg, truth_path in pairs:
        truth = json.loads(truth_path.read_text(encoding="utf-8"))
        doctype = _doctype(truth["type"])
        started, cpu_started = time.perf_counter(), time.process_time()
        ocr = read_document(jpg, doctype, config, workers=1)
        read_s = time.perf_counter() - started
        verify_and_decide(doctype, truth["claim"], ocr, _record(doctype, truth), config)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
        for step in ocr.steps:
            passes[step.name].append(step.seconds)
        passes["verify and decide"].append(wall[-1] - read_s)

        # The same lines, cropped from the page at the size the reading used.
        page = Image.open(jpg).convert("L")
        gray = np.asarray(page.resize(ocr.image_size) if page.size != ocr.image_size else page)
        inputs = [_rec_input(crop_quad(gray, np.asarray(ln.quad))) for ln in ocr.lines]
        singles.append(_cpu(lambda xs=inputs: [_padded(engine, [x], 0) for x in xs]))
        batched.append(_cpu(lambda xs=inputs: _padded(engine, xs, 4096)))

    def line(name: str, values: list[float]) -> str:
        p95 = sorted(values)[max(0, round(0.95 * len(values)) - 1)]
        return f"| {name} | {statistics.mean(values):.3f} | {p95:.3f} |"

    print(f"## Seconds per page ({len(pairs)} {args.difficulty} tune pages, one core)\n")
    print("| measure | mean | p95 |\n|---|---|---|")
    print(line("CPU, read and decide", cpu))
    print(line("wall, read and decide", wall))
    for name, values in passes.items():
        print(line(f"wall, {name}", values))
    print(line("recognizer CPU, one line per run", singles))
    print(line("recognizer CPU, padded batches of 4096 columns", batched))
    return 0


if __name__ == "__main__":
    sys.exit(main())
