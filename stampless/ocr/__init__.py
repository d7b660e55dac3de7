"""OCR of scanned certificates: read every field of a document type, then verify each
field against the department's record.

Public entry points:

* :func:`open_image` — a scan as an RGB image, or one clear InputError.
* :func:`read_document` / :func:`read_image` — every field of a document type read from a
  scan, with a per-field confidence and the step that set it, as
  :class:`stampless.models.OcrResult`.
* :func:`verify_fields` — once the robot has the record: how well the image of each
  field supports the record's value (:mod:`.verify`), filled into ``OcrField.check``.
* :func:`get_engine`, :func:`engine_in_use` — the engines, created once per process.

Two readers, chosen by ``ocr.engine``:

* ``"ppocr"`` (the default, ``"auto"`` when it loads): PP-OCR finds text lines anywhere
  on the page and reads them, keeping the recognizer's probabilities;
  Tesseract is the second reader of digit and code fields (:mod:`.reader`).
* ``"tesseract"``: the Tesseract pipeline, with PP-OCR as a second opinion on names when
  installed (:mod:`.tesseract_reader`). It is also what runs when onnxruntime cannot
  load (``"auto"``).
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Literal

from loguru import logger
from PIL import Image

from stampless.config import OcrConfig
from stampless.doctype import DocumentType
from stampless.errors import OcrEngineError
from stampless.models import OcrResult, Record
from stampless.ocr.engine import OcrEngine, Word
from stampless.ocr.image import open_image
from stampless.ocr.ppocr import ppocr_installed

__all__ = [
    "OcrEngine",
    "Word",
    "engine_in_use",
    "get_engine",
    "load_scores",
    "open_image",
    "ppocr_installed",
    "read_document",
    "read_image",
    "save_scores",
    "second_opinion",
    "verify_fields",
]


@lru_cache(maxsize=8)
def _engine(
    kind: str,
    languages: str,
    cmd: str | None,
    library: str,
    timeout_s: float,
    detector: Literal["int8", "float"],
) -> OcrEngine:
    config = OcrConfig(
        languages=languages,
        tesseract_cmd=cmd,
        tesseract_library=library,
        timeout_s=timeout_s,
        detector=detector,
    )
    if kind == "ppocr":
        from stampless.ocr.ppocr import get_ppocr

        return get_ppocr(config)
    from stampless.ocr.tesseract import TesseractEngine

    return TesseractEngine(config)


def get_engine(config: OcrConfig, kind: str | None = None) -> OcrEngine:
    """The engine ``kind`` ("ppocr" or "tesseract"; default: the one in use), created once
    per process."""
    return _engine(
        kind or engine_in_use(config),
        config.languages,
        config.tesseract_cmd,
        config.tesseract_library,
        config.timeout_s,
        config.detector,
    )


def engine_in_use(config: OcrConfig) -> str:
    """ "ppocr" or "tesseract": ``ocr.engine``, with "auto" resolved to PP-OCR when it is
    installed and its models load, else Tesseract."""
    if config.engine != "auto":
        return config.engine
    return "ppocr" if _ppocr_loads(config.detector) else "tesseract"


@lru_cache(maxsize=2)
def _ppocr_loads(detector: Literal["int8", "float"]) -> bool:
    if not ppocr_installed():
        logger.warning("PP-OCR is not installed; reading scans with Tesseract alone")
        return False
    try:
        _engine("ppocr", "chi_sim+eng", None, "auto", 60.0, detector)
    except OcrEngineError as exc:
        logger.warning("PP-OCR could not load ({}); reading scans with Tesseract alone", exc)
        return False
    return True


def second_opinion(config: OcrConfig) -> str | None:
    """The second reader asked about uncertain fields, or None (``ocr.second_opinion``).

    With PP-OCR reading, Tesseract re-reads digit and code fields; with Tesseract
    reading, PP-OCR re-reads names and fields below their threshold. "auto" takes the
    other engine when it is available.
    """
    primary = engine_in_use(config)
    choice = config.second_opinion
    if choice == "none":
        return None
    if choice == "auto":
        other = "tesseract" if primary == "ppocr" else "ppocr"
        if other == "ppocr" and not ppocr_installed():
            return None
        return other
    return None if choice == primary else choice


def read_image(
    image: Image.Image,
    doctype: DocumentType,
    config: OcrConfig,
    *,
    steps_dir: Path | None = None,
    workers: int | None = None,
    engine: OcrEngine | None = None,
    thresholds: dict[str, float] | None = None,
    defer_steps: bool = False,
) -> OcrResult:
    """:func:`read_document` on an image already opened (see there)."""
    kind = engine.name if engine is not None else engine_in_use(config)
    primary = engine or get_engine(config, kind)
    second_kind = second_opinion(config)
    second = get_engine(config, second_kind) if second_kind else None
    if kind == "ppocr":
        from stampless.ocr.reader import read_page as read_ppocr

        return read_ppocr(
            image,
            doctype,
            config,
            primary,
            second,
            steps_dir=steps_dir,
            thresholds=thresholds,
            defer_steps=defer_steps,
        )
    from stampless.ocr.tesseract_reader import read_page as read_tesseract

    return read_tesseract(
        image,
        doctype,
        config,
        primary,
        second,
        steps_dir=steps_dir,
        workers=workers,
        thresholds=thresholds,
    )


def read_document(
    image: Path,
    doctype: DocumentType,
    config: OcrConfig,
    *,
    steps_dir: Path | None = None,
    workers: int | None = None,
    engine: OcrEngine | None = None,
    thresholds: dict[str, float] | None = None,
    defer_steps: bool = False,
) -> OcrResult:
    """Read every field of ``doctype`` from the scan at ``image``.

    Each preprocessing step's output is saved into ``steps_dir`` when
    ``config.preprocess.save_steps`` is set, and the image OCR read is saved as
    ``steps_dir/"ocr-input.png"`` (boxes in the result are in its coordinates).
    ``defer_steps`` (PP-OCR): those images are left unsaved on
    :attr:`OcrResult.pending_steps`, for a caller that encodes them once, in their final
    form, and the steps only for a doubt.
    ``workers`` threads re-read fields in parallel in the Tesseract reader (default: one
    per core, at most 2). ``thresholds`` are robot.toml's ``[types.T] thresholds``. Raises
    InputError for a bad image and OcrEngineError when the
    engine is missing, crashes or times out.
    """
    started = time.perf_counter()
    opened = open_image(Path(image), config)
    try:
        result = read_image(
            opened,
            doctype,
            config,
            steps_dir=steps_dir,
            workers=workers,
            engine=engine,
            thresholds=thresholds,
            defer_steps=defer_steps,
        )
    finally:
        opened.close()
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def verify_fields(
    result: OcrResult, record: Record, doctype: DocumentType, config: OcrConfig
) -> OcrResult:
    """``result`` with each field's :class:`~stampless.models.FieldCheck` against
    ``record`` (see :mod:`stampless.ocr.verify`); the reading itself is unchanged."""
    from stampless.ocr.verify import verify_result

    return verify_result(result, record, doctype, config)


def save_scores(result: OcrResult, path: Path) -> bool:
    """Write the recognizer's scores of ``result`` (PP-OCR) to ``path`` (.npz), so the
    fields can be verified again from the evidence alone; False if there are none."""
    import numpy as np

    if not result.matrices:
        return False
    arrays = {}
    for index, matrix in result.matrices.items():
        for name, array in matrix.to_arrays().items():
            arrays[f"{index}.{name}"] = array
    with path.open("wb") as out:
        np.savez_compressed(out, **arrays)
    return True


def load_scores(result: OcrResult, path: Path) -> OcrResult:
    """``result`` with the scores :func:`save_scores` wrote to ``path`` (when it exists)."""
    import numpy as np

    from stampless.ocr.ctc import TopK

    if not path.is_file():
        return result
    with np.load(path) as data:
        indices = {int(key.split(".")[0]) for key in data.files}
        for index in sorted(indices):
            result.matrices[index] = TopK.from_arrays(
                data[f"{index}.classes"], data[f"{index}.logp"], data[f"{index}.floor"]
            )
    return result
