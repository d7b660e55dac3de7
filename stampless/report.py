"""The evidence report: one self-contained HTML page a reviewer or auditor can open.

Everything comes from the sealed bundle (and, when given, the audit chain): the verdict,
the field table (claim / OCR / record, mismatches in red), the scan and the OCR input
with the word boxes drawn over it (toggleable, CSS only), the screenshots in order with
their captions, the dialog texts, the record as read, the manifest's integrity check
and the request's audit entries. Images are embedded as ``data:`` URIs and the CSS is
inline, so the page has no external URL and can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from loguru import logger
from pydantic import ValidationError

from stampless._files import write_atomic
from stampless.audit import entries_for
from stampless.errors import InputError
from stampless.evidence import MANIFEST, verify_bundle
from stampless.models import FieldResult, OcrResult, Record, Verdict

TEMPLATE = "report.html.j2"
# The image OCR read (the word boxes are in its coordinates), as sealed now and before.
OCR_INPUT = ("preprocessed/ocr-input.webp", "preprocessed/ocr-input.png")
_MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
}


@dataclass
class _Image:
    name: str
    uri: str
    caption: str | None = None
    created_at: str | None = None


@dataclass
class _Box:
    left: float
    top: float
    width: float
    height: float
    label: str
    title: str
    low: bool = False


def _data_uri(path: Path) -> str | None:
    mime = _MIME.get(path.suffix.lower())
    if mime is None or not path.is_file():
        return None
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _load_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("report: {} is not valid JSON; left out", path.name)
        return None


def _image_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError):
        return None


def _boxes(ocr: OcrResult, size: tuple[int, int], min_conf: float) -> tuple[list[_Box], list[_Box]]:
    """Word and field boxes as percentages of the image, so they scale with it."""
    w, h = size
    words: list[_Box] = []
    for word in ocr.words:
        left, top, bw, bh = word.box
        conf = word.confidence if word.confidence <= 1 else word.confidence / 100
        words.append(
            _Box(
                100 * left / w,
                100 * top / h,
                100 * bw / w,
                100 * bh / h,
                word.text,
                f"{word.text} ({conf:.0%})",
                low=conf < min_conf,
            )
        )
    fields: list[_Box] = []
    for name, f in ocr.fields.items():
        if f.box is None:
            continue
        left, top, bw, bh = f.box
        fields.append(
            _Box(
                100 * left / w,
                100 * top / h,
                100 * bw / w,
                100 * bh / h,
                name,
                f"{name}: {f.value} ({f.confidence:.0%})",
            )
        )
    return words, fields


def _fields(verdict: Verdict | None, comparison: Any) -> list[FieldResult]:
    if verdict is not None and verdict.fields:
        return list(verdict.fields)
    rows = comparison.get("fields") if isinstance(comparison, dict) else comparison
    out: list[FieldResult] = []
    for row in rows if isinstance(rows, list) else []:
        try:
            out.append(FieldResult.model_validate(row))
        except ValidationError:
            continue
    return out


def _review_decision(bundle_dir: Path) -> dict[str, Any] | None:
    """The reviewer's decision, sealed beside the bundle in ``<id>.review/`` (manual tier).

    The original bundle is immutable, so the decision lives in its own sealed bundle that
    names the original manifest's SHA-256 (see stampless.review.store).
    """
    from stampless.review.store import review_bundle_id

    review_dir = bundle_dir.parent / review_bundle_id(bundle_dir.name)
    decision = _load_json(review_dir / "decision.json")
    if not isinstance(decision, dict):
        return None
    return {**decision, "intact": verify_bundle(review_dir).ok, "bundle": review_dir.name}


def render_report(bundle_dir: Path, *, audit_dir: Path | None = None) -> str:
    """The HTML report of a sealed bundle, as one self-contained string."""
    bundle_dir = Path(bundle_dir)
    manifest = _load_json(bundle_dir / MANIFEST)
    if not isinstance(manifest, dict):
        raise InputError(f"{bundle_dir} is not a sealed evidence bundle (no manifest.json).")
    request_id = str(manifest.get("request_id", bundle_dir.name))
    files = [f for f in manifest.get("files", []) if isinstance(f, dict)]

    verdict: Verdict | None = None
    verdict_raw = _load_json(bundle_dir / "verdict.json")
    if isinstance(verdict_raw, dict):
        try:
            verdict = Verdict.model_validate(verdict_raw)
        except ValidationError:
            logger.warning("report: verdict.json of {} does not match the model", request_id)
    fields = _fields(verdict, _load_json(bundle_dir / "comparison.json"))

    ocr: OcrResult | None = None
    ocr_raw = _load_json(bundle_dir / "ocr.json")
    if isinstance(ocr_raw, dict):
        try:
            ocr = OcrResult.model_validate(ocr_raw)
        except ValidationError:
            logger.warning("report: ocr.json of {} does not match the model", request_id)

    record: Record | None = None
    record_extra: dict[str, Any] | None = None
    record_raw = _load_json(bundle_dir / "record.json")
    if isinstance(record_raw, dict):
        try:
            record = Record.model_validate(record_raw)
        except ValidationError:
            record_extra = record_raw

    scans = [
        _Image(f["name"], uri, f.get("caption"), f.get("created_at"))
        for f in files
        if f.get("kind") == "scan" and (uri := _data_uri(bundle_dir / f["name"]))
    ]

    # The OCR boxes are in the coordinates of the image Tesseract read.
    overlay: _Image | None = None
    word_boxes: list[_Box] = []
    field_boxes: list[_Box] = []
    if ocr is not None:
        steps = sorted((f["name"] for f in files if f.get("kind") == "preprocessed"), reverse=True)
        candidates = [*OCR_INPUT, *steps, *(s.name for s in scans)]
        for name in candidates:
            path = bundle_dir / name
            size = _image_size(path)
            if size is None or (ocr.image_size and tuple(ocr.image_size) != size):
                continue
            uri = _data_uri(path)
            if uri:
                overlay = _Image(name, uri)
                word_boxes, field_boxes = _boxes(ocr, size, 0.6)
                break

    screenshots = [
        _Image(f["name"], uri, f.get("caption"), f.get("created_at"))
        for f in sorted(
            (f for f in files if f.get("kind") == "screenshot"), key=lambda f: f["name"]
        )
        if (uri := _data_uri(bundle_dir / f["name"]))
    ]
    dialogs = _load_json(bundle_dir / "dialogs.json")
    audit = entries_for(audit_dir, request_id) if audit_dir is not None else []
    integrity = verify_bundle(bundle_dir)

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(TEMPLATE).render(
        request_id=request_id,
        manifest=manifest,
        verdict=verdict,
        verdict_raw=verdict_raw if isinstance(verdict_raw, dict) else {},
        fields=fields,
        ocr=ocr,
        record=record,
        record_extra=record_extra,
        scans=scans,
        overlay=overlay,
        word_boxes=word_boxes,
        field_boxes=field_boxes,
        screenshots=screenshots,
        dialogs=dialogs if isinstance(dialogs, list) else [],
        audit=audit,
        integrity=integrity,
        files=files,
        meta=manifest.get("meta", {}) if isinstance(manifest.get("meta"), dict) else {},
        signature=manifest.get("signature") or {},
        review=_review_decision(bundle_dir),
    )


def default_report_path(bundle_dir: Path) -> Path:
    """``<evidence_dir>/../reports/<request_id>.html``: outside the bundle, which is sealed."""
    bundle_dir = Path(bundle_dir)
    return bundle_dir.parent.parent / "reports" / f"{bundle_dir.name}.html"


def write_report(
    bundle_dir: Path, out: Path | None = None, *, audit_dir: Path | None = None
) -> Path:
    """Render the report and write it atomically to ``out`` (default: beside the evidence)."""
    html = render_report(bundle_dir, audit_dir=audit_dir)
    target = Path(out) if out is not None else default_report_path(bundle_dir)
    write_atomic(target, html)
    return target
