"""Build stampless's 8-bit text detector from RapidOCR's float one, and measure both.

PP-OCR's detector (DBNet) is almost all convolutions; on one onnxruntime thread its
8-bit form ran in a third of the time on the development machine (a CPU with VNNI) and
finds the same lines. This script writes ``stampless/ocr/models/det_int8.onnx``:

1. it reads generated scans of the **tune** split (never the held-out one) through
   stampless's own reader and keeps the exact tensors the detector receives;
2. it quantizes the float model statically (QDQ, 8-bit weights and activations, the
   activations' ranges measured on those tensors);
3. it prints the CPU milliseconds of both models on the same pages, and how many of the
   float model's boxes the 8-bit model finds again (intersection over union >= 0.5).

It needs ``onnx`` (the ``quantize`` extra: ``pip install -e '.[quantize]'``); stampless
itself never does. Run it again after RapidOCR's detector changes:

    OMP_THREAD_LIMIT=1 .venv/bin/python bench/quantize_detector.py --count 3
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ocr_accuracy import TYPES, _doctype, _generate

from stampless.ocr.ppocr import DET_INT8


def _capture(pairs: list[Any]) -> list[Any]:
    """The detector's input tensors for ``pairs``' scans, as stampless's reader makes them."""
    from stampless.config import OcrConfig
    from stampless.ocr import read_document
    from stampless.ocr.ppocr import get_ppocr

    config = OcrConfig(engine="ppocr", detector="float")
    det = get_ppocr(config)._det._load_det_model()  # RapidOCR's TextDetector
    tensors: list[Any] = []
    session = det.session
    det.session = lambda x: tensors.append(x) or session(x)
    try:
        for scan, truth in pairs:
            type_name = json.loads(truth.read_text(encoding="utf-8"))["type"]
            read_document(scan, _doctype(type_name), config, workers=1)
    finally:
        det.session = session
    return tensors


def _boxes(probs: Any) -> list[tuple[int, int, int, int]]:
    """Bounding boxes of the probability map's connected text regions (DBNet's 0.3)."""
    import cv2
    import numpy as np

    mask = (probs[0, 0] > 0.3).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    return [tuple(int(v) for v in stats[i, :4]) for i in range(1, count) if stats[i, 4] >= 20]


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    return inter / float(aw * ah + bw * bh - inter) if inter else 0.0


def _measure(path: Path, tensors: list[Any]) -> tuple[float, list[Any]]:
    from stampless.ocr.ppocr import onnx_session

    session = onnx_session(path)
    name = session.get_inputs()[0].name
    session.run(None, {name: tensors[0]})
    outputs = []
    started = time.process_time()
    for x in tensors:
        outputs.append(session.run(None, {name: x})[0])
    return (time.process_time() - started) / len(tensors), outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3, help="tune scans per type and difficulty")
    parser.add_argument("--scans", type=Path, default=Path("var/bench-scans"))
    parser.add_argument("--out", type=Path, default=DET_INT8)
    args = parser.parse_args(argv)

    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        print("onnx is missing: pip install -e '.[quantize]'", file=sys.stderr)
        return 1
    from loguru import logger

    from stampless.fixtures.records import DOC_TYPES
    from stampless.ocr.ppocr import float_detector_path

    logger.remove()
    types = tuple(t for t in TYPES if t in DOC_TYPES)
    pairs = [
        pair
        for difficulty in ("normal", "hard")
        for pair in _generate(args.scans, args.count, difficulty, "tune", 1, types)
    ]
    tensors = _capture(pairs)
    print(f"calibration: {len(tensors)} pages of the tune split")

    class Pages(CalibrationDataReader):
        def __init__(self) -> None:
            self._left = iter(tensors)

        def get_next(self) -> dict[str, Any] | None:
            x = next(self._left, None)
            return None if x is None else {"x": x}

    source = float_detector_path()
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        written = Path(tmp) / "det_int8.onnx"
        quantize_static(
            str(prepared),
            str(written),
            Pages(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"],
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(written, args.out)

    float_s, float_out = _measure(source, tensors)
    int8_s, int8_out = _measure(args.out, tensors)
    found = total = 0
    for a, b in zip(float_out, int8_out, strict=True):
        mine = _boxes(b)
        for box in _boxes(a):
            total += 1
            found += any(_iou(box, other) >= 0.5 for other in mine)
    print(f"written: {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    print(
        f"CPU ms per page: float {float_s * 1000:.0f}, 8-bit {int8_s * 1000:.0f} "
        f"({float_s / int8_s:.2f}x)"
    )
    print(f"float model's regions found again: {found} of {total} ({found / total:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
