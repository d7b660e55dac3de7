"""RapidOCR (PP-OCR models on onnxruntime) as an optional second engine.

Install with ``pip install 'stampless[rapidocr]'``; the wheel ships its models, so it
works offline. It is slower than Tesseract on a whole page on these machines but reads
single text lines well, so stampless uses it as a second opinion on fields Tesseract
read with low confidence (``ocr.second_opinion = "rapidocr"``), or as the engine
(``ocr.engine = "rapidocr"``). One onnxruntime thread per engine: stampless runs one
page per core instead.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from PIL import Image

from stampless.config import OcrConfig
from stampless.errors import OcrEngineError
from stampless.ocr.engine import OcrEngine, Word


class RapidOcrEngine(OcrEngine):
    """RapidOCR 3 through its Python API; whitelists are applied by filtering."""

    name = "rapidocr"

    def __init__(self, config: OcrConfig) -> None:
        try:
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise OcrEngineError(
                "RapidOCR is not installed; install it with pip install 'stampless[rapidocr]', "
                "or set ocr.engine and ocr.second_opinion to use Tesseract only."
            ) from exc
        params = {
            "Global.log_level": "error",
            "EngineConfig.onnxruntime.intra_op_num_threads": 1,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
        try:
            self._ocr: Any = RapidOCR(params=params)
        except Exception as exc:  # any failure to load models is an engine failure
            raise OcrEngineError(f"RapidOCR could not start ({exc}); reinstall it.") from exc
        # onnxruntime sessions are thread-safe, but RapidOCR's pipeline object keeps state.
        self._lock = threading.Lock()

    def _run(self, image: Image.Image, **kwargs: Any) -> Any:
        array = np.asarray(image.convert("RGB"))
        try:
            with self._lock:
                return self._ocr(array, **kwargs)
        except Exception as exc:
            raise OcrEngineError(f"RapidOCR failed on an image ({exc}); try again.") from exc

    def read(self, image: Image.Image, *, psm: int = 3, cjk_only: bool = False) -> list[Word]:
        result = self._run(image)
        words: list[Word] = []
        if result.txts is None:
            return words
        for i, (text, score, quad) in enumerate(
            zip(result.txts, result.scores, result.boxes, strict=True)
        ):
            xs = [float(p[0]) for p in quad]
            ys = [float(p[1]) for p in quad]
            left, top = int(min(xs)), int(min(ys))
            words.append(
                Word(
                    text=str(text),
                    confidence=float(score),
                    box=(left, top, int(max(xs)) - left, int(max(ys)) - top),
                    line=(0, 0, i),
                )
            )
        return words

    def read_lines(
        self,
        images: list[Image.Image],
        *,
        whitelist: str | None = None,
        script: str = "any",
    ) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for image in images:
            result = self._run(image, use_det=False, use_cls=False)
            texts = list(result.txts or ())
            scores = list(result.scores or ())
            text = "".join(str(t) for t in texts)
            if whitelist:
                text = "".join(ch for ch in text if ch in whitelist or ch == " ")
            score = float(min(scores)) if scores and text else 0.0
            out.append((text, score))
        return out
