"""PP-OCR (RapidOCR's ONNX models on onnxruntime): the primary reader.

Two models, both shipped inside the ``rapidocr`` wheel, so they work offline:

* the **detector** (DBNet) finds text lines anywhere on a page, whatever the layout; it
  runs through RapidOCR's own pipeline (:meth:`PpOcr.detect`);
* the **recognizer** (an SVTR network with a CTC head) reads each line. stampless runs
  it directly on onnxruntime (:meth:`PpOcr.recognize`), because it needs what RapidOCR's
  pipeline throws away: the per-timestep character probabilities, kept compressed as a
  :class:`stampless.ocr.ctc.TopK` per line so that a field can later be *verified*
  against the department's value (:mod:`stampless.ocr.verify`), not only read.

One onnxruntime thread per model: stampless reads one page per core instead.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stampless.config import OcrConfig
from stampless.errors import OcrEngineError
from stampless.ocr.ctc import TopK
from stampless.ocr.engine import OcrEngine, Word

# The recognizer's input height; widths are scaled to keep the aspect ratio.
REC_HEIGHT = 48
# The recognizer emits one timestep per this many input columns.
REC_STRIDE = 8
# PP-OCR's recognizers are trained on lines padded to at least this width (48 x 320), so
# a shorter line is padded to it (tune split, hard: 80.7 % straight-through against 78.9 %
# unpadded, for 0.12 s more per page; bench/RESULTS.md).
REC_MIN_WIDTH = 320
# The model file names, newest first; the first one the installed rapidocr ships is used.
REC_MODELS = (
    "PP-OCRv6_rec_small.onnx",
    "PP-OCRv5_rec_mobile_infer.onnx",
    "ch_PP-OCRv4_rec_infer.onnx",
)
# The float detector RapidOCR ships (its default), and stampless's 8-bit form of it: three
# times faster on one thread, the same lines (bench/quantize_detector.py made it from the
# float model and tune pages, and measures both).
DET_MODEL = "PP-OCRv6_det_small.onnx"
DET_INT8 = Path(__file__).resolve().parent / "models" / "det_int8.onnx"


@lru_cache(maxsize=1)
def ppocr_installed() -> bool:
    """True when rapidocr and onnxruntime can be imported (their models ship with them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("rapidocr", "onnxruntime"))


@dataclass
class TextLine:
    """One detected and recognized line of text, in page coordinates.

    ``quad`` is the line's four corners (top-left, top-right, bottom-right, bottom-left);
    ``char_x`` the x coordinate where each character of ``text`` peaks and
    ``char_share`` how far along the line that is (0 to 1); ``matrix`` the recognizer's
    compressed probabilities (None for engines without them).
    """

    text: str
    quad: tuple[tuple[float, float], ...]
    confidence: float
    char_conf: list[float] = field(default_factory=list)
    char_x: list[float] = field(default_factory=list)
    char_share: list[float] = field(default_factory=list)  # along the line, 0..1
    matrix: TopK | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        xs = [p[0] for p in self.quad]
        ys = [p[1] for p in self.quad]
        left, top = math.floor(min(xs)), math.floor(min(ys))
        return left, top, math.ceil(max(xs)) - left, math.ceil(max(ys)) - top

    @property
    def height(self) -> float:
        (x0, y0), _, _, (x3, y3) = self.quad[:4]
        return float(math.hypot(x3 - x0, y3 - y0))


@dataclass(frozen=True)
class Recognized:
    """The recognizer's reading of one crop."""

    text: str
    confidence: float
    char_conf: list[float]
    char_steps: list[int]  # timestep each character peaks at
    steps: int  # timesteps that cover the crop
    matrix: TopK


class PpOcr(OcrEngine):
    """PP-OCR detection and recognition. Safe to call from several threads."""

    name = "ppocr"

    def __init__(self, config: OcrConfig) -> None:
        if not ppocr_installed():
            raise OcrEngineError(
                "PP-OCR (rapidocr and onnxruntime) is not installed; install stampless again "
                '(pip install stampless), or set ocr.engine = "tesseract".'
            )
        try:
            from rapidocr import RapidOCR

            params = {
                "Global.log_level": "error",
                "Global.use_cls": False,
                "Global.use_rec": False,
                # The page is already scaled for detection by stampless (by text height).
                "Global.max_side_len": 100_000,
                "Global.min_side_len": 16,
                "Det.limit_type": "max",
                "Det.limit_side_len": 100_000,
                "EngineConfig.onnxruntime.intra_op_num_threads": 1,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
            if config.detector == "int8":
                if not DET_INT8.is_file():
                    raise OcrEngineError(
                        f"stampless's 8-bit text detector ({DET_INT8}) is missing; install "
                        'stampless again, or set ocr.detector = "float".'
                    )
                params["Det.model_path"] = str(DET_INT8)
            self._det: Any = RapidOCR(params=params)
            self._rec = onnx_session(_rec_model_path())
        except OcrEngineError:
            raise
        except Exception as exc:  # any failure to load a model is an engine failure
            raise OcrEngineError(
                f"PP-OCR could not start ({exc}); reinstall rapidocr and onnxruntime, or set "
                'ocr.engine = "tesseract".'
            ) from exc
        meta = self._rec.get_modelmeta().custom_metadata_map
        # Class 0 is CTC's blank; the model's characters follow; the last class is a space.
        self.characters: list[str] = ["", *meta["character"].splitlines(), " "]
        self.index = {ch: i for i, ch in enumerate(self.characters) if i}
        self._input = self._rec.get_inputs()[0].name
        # RapidOCR's pipeline object keeps per-call state; onnxruntime sessions do not.
        self._det_lock = threading.Lock()

    # --- detection -------------------------------------------------------------------

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        """Quadrilaterals (4x2 float arrays, clockwise from top-left) of the text lines."""
        try:
            with self._det_lock:
                result = self._det(image, use_det=True, use_cls=False, use_rec=False)
        except Exception as exc:
            raise OcrEngineError(f"PP-OCR detection failed on a page ({exc}); try again.") from exc
        boxes = getattr(result, "boxes", None)
        if boxes is None:
            return []
        return [np.asarray(b, dtype=np.float32) for b in boxes]

    # --- recognition -----------------------------------------------------------------

    def recognize(self, crops: list[np.ndarray]) -> list[Recognized]:
        """Read each crop (an HxW or HxWx3 uint8 array) as one line of text.

        One crop per run, padded to :data:`REC_MIN_WIDTH`: on one onnxruntime thread,
        batches padded to their widest line cost more per page (bench/ocr_speed.py), and
        batching buys nothing without more threads.
        """
        return [self._run(_rec_input(crop)) for crop in crops]

    def _run(self, x: np.ndarray) -> Recognized:
        width = x.shape[2]
        if width < REC_MIN_WIDTH:
            x = np.pad(x, ((0, 0), (0, 0), (0, REC_MIN_WIDTH - width)))
        try:
            probs = self._rec.run(None, {self._input: x[None]})[0][0]
        except Exception as exc:
            raise OcrEngineError(f"PP-OCR recognition failed ({exc}); try again.") from exc
        steps = min(probs.shape[0], math.ceil(width / REC_STRIDE) + 1)
        matrix = TopK.from_probs(probs[:steps])
        labels, at = matrix.greedy()
        conf = [float(np.exp(matrix.logp[t, 0])) for t in at]
        return Recognized(
            text="".join(self.characters[label] for label in labels),
            confidence=float(np.mean(conf)) if conf else 0.0,
            char_conf=conf,
            char_steps=at,
            steps=steps,
            matrix=matrix,
        )

    def labels(self, text: str) -> list[int] | None:
        """``text`` as the recognizer's class indices; None if a character is not in its set."""
        out = []
        for ch in text:
            index = self.index.get(ch)
            if index is None:
                return None
            out.append(index)
        return out

    def decode(self, labels: tuple[int, ...] | list[int]) -> str:
        return "".join(self.characters[label] for label in labels)

    # --- the OcrEngine interface (PP-OCR as a second opinion on a crop) ---------------

    def read(self, image: Image.Image, *, psm: int = 3, cjk_only: bool = False) -> list[Word]:
        page = np.asarray(image.convert("L"))
        quads = self.detect(np.stack([page] * 3, axis=-1))
        lines = self.recognize([crop_quad(page, q) for q in quads])
        words = []
        for i, (quad, line) in enumerate(zip(quads, lines, strict=True)):
            left, top = float(quad[:, 0].min()), float(quad[:, 1].min())
            width, height = float(quad[:, 0].max()) - left, float(quad[:, 1].max()) - top
            box = (int(left), int(top), int(width), int(height))
            words.append(Word(text=line.text, confidence=line.confidence, box=box, line=(0, 0, i)))
        return words

    def read_lines(
        self,
        images: list[Image.Image],
        *,
        whitelist: str | None = None,
        script: str = "any",
    ) -> list[tuple[str, float]]:
        out = []
        for reading in self.recognize([np.asarray(im.convert("L")) for im in images]):
            text = reading.text
            if whitelist:
                text = "".join(ch for ch in text if ch in whitelist or ch == " ")
            out.append((text, reading.confidence if text else 0.0))
        return out


def onnx_session(path: Path) -> Any:
    """An onnxruntime session of the model at ``path`` on one thread (stampless runs one
    page per core), with onnxruntime's own warnings off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _rapidocr_models() -> Path:
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or spec.origin is None:
        raise OcrEngineError("rapidocr is not installed; install stampless again.")
    return Path(spec.origin).parent / "models"


def float_detector_path() -> Path:
    """RapidOCR's float detection model (what :data:`DET_INT8` was made from)."""
    return _rapidocr_models() / DET_MODEL


def _rec_model_path() -> Path:
    models = _rapidocr_models()
    for name in REC_MODELS:
        if (models / name).is_file():
            return models / name
    raise OcrEngineError(
        f"No PP-OCR recognition model in {models}; reinstall rapidocr (pip install "
        "--force-reinstall rapidocr)."
    )


def _rec_input(crop: np.ndarray) -> np.ndarray:
    """A crop as the recognizer's input: 3x48xW float32 in [-1, 1]."""
    import cv2

    if crop.ndim == 2:
        crop = np.stack([crop] * 3, axis=-1)
    h, w = crop.shape[:2]
    width = max(REC_STRIDE, math.ceil(REC_HEIGHT * w / max(1, h)))
    resized = cv2.resize(crop, (width, REC_HEIGHT), interpolation=cv2.INTER_LINEAR)
    return (resized.astype(np.float32).transpose(2, 0, 1) / 127.5) - 1.0


def crop_quad(page: np.ndarray, quad: np.ndarray, *, pad: float = 0.0) -> np.ndarray:
    """The text line inside ``quad`` straightened to a rectangle (a 2-D uint8 array).

    ``pad`` widens the crop by that share of the line's height on every side.
    """
    import cv2

    q = np.asarray(quad, dtype=np.float32)
    if pad:
        q = _grow(q, pad)
    width = max(1, round(max(np.linalg.norm(q[0] - q[1]), np.linalg.norm(q[3] - q[2]))))
    height = max(1, round(max(np.linalg.norm(q[0] - q[3]), np.linalg.norm(q[1] - q[2]))))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(q, target)
    return cv2.warpPerspective(
        page, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC
    )


def _grow(quad: np.ndarray, share: float) -> np.ndarray:
    """``quad`` widened outward by ``share`` of its height on every side."""
    height = float(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2])))
    across = quad[3] - quad[0]
    across = across / max(1e-6, float(np.linalg.norm(across)))
    along = quad[1] - quad[0]
    along = along / max(1e-6, float(np.linalg.norm(along)))
    d = share * height
    return np.array(
        [
            quad[0] - d * along - d * across,
            quad[1] + d * along - d * across,
            quad[2] + d * along + d * across,
            quad[3] - d * along + d * across,
        ],
        dtype=np.float32,
    )


_engines: dict[tuple[str, float], PpOcr] = {}
_engines_lock = threading.Lock()


def get_ppocr(config: OcrConfig) -> PpOcr:
    """The process's PP-OCR engine (models load once, about a second)."""
    with _engines_lock:
        key = (config.detector, config.timeout_s)
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = PpOcr(config)
        return engine
