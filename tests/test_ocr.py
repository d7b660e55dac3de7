"""OCR with the real engines: bad input, clean pages, generated scans, the CLI.

The default configuration reads with PP-OCR (``ocr.engine = "auto"``) and asks Tesseract
to re-read digit fields it is unsure of, as ``make`` installs stampless. Tests of the
Tesseract reader pin ``engine = "tesseract"`` (:data:`TESSERACT`).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter

from stampless.compare import decide, verify_and_decide
from stampless.config import OcrConfig
from stampless.doctype import bundled_tasks_dir, load_doctype_file
from stampless.errors import InputError, OcrEngineError
from stampless.fixtures.scans import generate as generate_scans
from stampless.models import Record, VerdictKind
from stampless.normalize import normalize
from stampless.ocr import get_engine, open_image, read_document, verify_fields
from stampless.ocr.engine import OcrEngine, Word
from stampless.ocr.preprocess import median3

os.environ.setdefault("OMP_THREAD_LIMIT", "1")

TYPES = ("marriage_certificate", "business_license", "social_security_record")
CONFIG = OcrConfig()
TESSERACT = OcrConfig(engine="tesseract")


def doctype(name: str) -> Any:
    return load_doctype_file(bundled_tasks_dir() / f"{name}.py")


# --- bad input ---------------------------------------------------------------------


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height pixels but holds almost no data (a bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        open_image(tmp_path / "nope.jpg", CONFIG)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "scan.jpg"
    path.write_text("hello, this is text", encoding="utf-8")
    with pytest.raises(InputError, match="not an image"):
        open_image(path, CONFIG)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "scan.jpg"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        open_image(path, CONFIG)


def test_truncated_jpeg(tmp_path: Path) -> None:
    whole = tmp_path / "whole.jpg"
    Image.effect_noise((600, 400), 60).convert("RGB").save(whole, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated"):
        open_image(cut, CONFIG)
    assert open_image(whole, CONFIG).size == (600, 400)


def test_decompression_bomb(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    _png_header_only(path, 20_000, 20_000)
    with pytest.raises(InputError, match="pixels"):
        open_image(path, CONFIG)


def test_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.effect_noise((800, 800), 80).save(path)
    with pytest.raises(InputError, match="max_file_mb"):
        open_image(path, OcrConfig(max_file_mb=0.05))


def test_pdf_is_refused_or_rendered(tmp_path: Path) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(b"%PDF-1.4\n% not really a pdf\n")
    if shutil.which("pdftoppm") is None:
        with pytest.raises(InputError, match="pdftoppm"):
            open_image(path, CONFIG)
    else:
        with pytest.raises(InputError, match="PDF"):
            open_image(path, CONFIG)


def test_blank_page_needs_review(tmp_path: Path) -> None:
    path = tmp_path / "blank.png"
    Image.new("RGB", (1654, 2339), (250, 250, 248)).save(path)
    dt = doctype("social_security_record")
    result = read_document(path, dt, CONFIG, workers=1)
    assert all(f.value is None for f in result.fields.values())
    record = Record(
        system="social_security",
        key="11010519491231002X",
        fields={
            "person_id": "11010519491231002X",
            "person_name": "张三",
            "employer": "某公司",
            "period_from": "2020-01",
            "period_to": "2020-12",
            "months_paid": "12",
        },
    )
    claim = {"person_id": "11010519491231002X", "person_name": "张三"}
    assert decide(dt, claim, result, record).verdict is VerdictKind.needs_review


@settings(max_examples=60, deadline=None)
@given(
    st.integers(3, 40).flatmap(
        lambda h: st.integers(3, 40).flatmap(
            lambda w: st.binary(min_size=h * w, max_size=h * w).map(
                lambda b: np.frombuffer(b, np.uint8).reshape(h, w)
            )
        )
    )
)
def test_fast_median_equals_pillows(a: np.ndarray) -> None:
    expected = np.asarray(Image.fromarray(a, "L").filter(ImageFilter.MedianFilter(3)))
    assert np.array_equal(median3(a), expected)


def test_library_and_command_read_the_same_words(tmp_path: Path) -> None:
    from stampless.fixtures.records import records
    from stampless.fixtures.render import render_certificate

    record = records("business_license", 11, 1)[0]
    page = render_certificate("business_license", record, variant=2, dpi=120).convert("L")
    library = get_engine(OcrConfig(tesseract_library="auto"), "tesseract")
    command = get_engine(OcrConfig(tesseract_library="off"), "tesseract")
    assert "libtesseract" in library.backend
    assert command.backend.endswith("tesseract")
    for psm in (3, 6):
        by_library = library.read(page, psm=psm)
        by_command = command.read(page, psm=psm)
        assert [w.text for w in by_library] == [w.text for w in by_command]
        assert [w.box for w in by_library] == [w.box for w in by_command]
        assert len(by_library) > 20
        for a, b in zip(by_library, by_command, strict=True):
            assert abs(a.confidence - b.confidence) < 0.02
    # A whitelist is set on a kept handle and must not leak into the next call.
    code = next(w for w in by_library if sum(c.isdigit() for c in w.text) >= 10)
    left, top, width, height = code.box
    line = page.crop((left - 20, top - 10, left + width + 20, top + height + 10))
    digits = library.read_line(line, whitelist="0123456789")[0]
    assert digits.isdigit() and len(digits) >= 15
    assert library.read_line(line) != library.read_line(line, whitelist="0123456789")
    for whitelist in ("0123456789", None):
        text, conf = library.read_line(line, whitelist=whitelist)
        assert (text, pytest.approx(conf, abs=0.02)) == command.read_line(line, whitelist=whitelist)


def test_threads_reading_at_once_get_what_one_thread_gets() -> None:
    from stampless.fixtures.records import records
    from stampless.fixtures.render import render_certificate

    # Handles are kept per language and lent to one thread at a time; the library runs
    # without the GIL, so four threads really recognise at once.
    pages = [
        render_certificate(t, records(t, 5, 1)[0], variant=v, dpi=100).convert("L")
        for t, v in (("marriage_certificate", 1), ("business_license", 4))
    ]
    engine = get_engine(TESSERACT)
    jobs = [(page, psm, lang) for page in pages for psm in (3, 6) for lang in (False, True)]

    def read(job: tuple[Image.Image, int, bool]) -> list[Word]:
        page, psm, cjk_only = job
        return engine.read(page, psm=psm, cjk_only=cjk_only)

    alone = [read(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(read, jobs * 2))
    assert together == alone * 2
    assert all(len(words) > 10 for words in alone)


def test_each_engine_takes_the_other_as_second_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import stampless.ocr as ocr

    assert ocr.engine_in_use(CONFIG) == "ppocr"
    assert ocr.second_opinion(CONFIG) == "tesseract"
    assert ocr.second_opinion(TESSERACT) == "ppocr"
    assert ocr.second_opinion(OcrConfig(second_opinion="none")) is None
    # Older robot.toml files said "rapidocr" and kept min_confidence under [ocr].
    older = OcrConfig.model_validate({"engine": "rapidocr", "min_confidence": 0.7})
    assert older.engine == "ppocr" and older.calibration.min_confidence == 0.7
    # Without PP-OCR installed, Tesseract reads alone.
    monkeypatch.setattr(ocr, "ppocr_installed", lambda: False)
    assert ocr.second_opinion(TESSERACT) is None


def test_missing_tesseract_is_an_engine_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import pytesseract

    # The command path sets pytesseract's module-wide command; restored after the test.
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "tesseract")
    with pytest.raises(OcrEngineError, match="not installed"):
        get_engine(OcrConfig(tesseract_cmd="/nonexistent/tesseract"), "tesseract")


def test_tesseract_timeout_is_an_engine_error(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    Image.effect_noise((900, 900), 90).convert("RGB").save(path)
    config = OcrConfig(engine="tesseract", timeout_s=0.01)
    with pytest.raises(OcrEngineError, match="longer than"):
        read_document(path, doctype("marriage_certificate"), config, workers=1)


# --- clean pages ---------------------------------------------------------------------


@pytest.mark.slow
def test_clean_render_reads_every_field_and_saves_steps(tmp_path: Path) -> None:
    from stampless.fixtures.records import records
    from stampless.fixtures.render import render_certificate

    record = records("marriage_certificate", 7, 2)[1]
    path = tmp_path / "clean.jpg"
    render_certificate("marriage_certificate", record, variant=3, dpi=200).save(path, quality=85)
    steps = tmp_path / "steps"
    dt = doctype("marriage_certificate")
    result = read_document(path, dt, CONFIG, steps_dir=steps)
    for spec in dt.fields:
        assert result.fields[spec.name].value == normalize(spec.kind, record[spec.name]), spec.name
        assert result.fields[spec.name].valid
    assert (steps / "ocr-input.png").is_file()
    assert [s.name for s in result.steps] == [
        "prepare",
        "detect",
        "recognize",
        "layout",
        "locate",
        "decode",
        "second_reader",
    ]
    assert all(f.source and f.source.startswith("ppocr:label:") for f in result.fields.values())
    width, height = Image.open(steps / "ocr-input.png").size
    assert result.image_size == (width, height)
    assert result.words
    for word in result.words:
        left, top, w, h = word.box
        assert left >= 0 and left + w <= width + 2 and top >= 0 and top + h <= height + 2


class _SecondEngine(OcrEngine):
    """A second-opinion engine that answers a fixed line and records what it was asked."""

    name = "second"

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.asked: list[Image.Image] = []

    def read(self, image: Image.Image, *, psm: int = 3, cjk_only: bool = False) -> list[Word]:
        return []

    def read_lines(
        self, images: list[Image.Image], *, whitelist: str | None = None, script: str = "any"
    ) -> list[tuple[str, float]]:
        self.asked.extend(images)
        return [(self.answer, 0.9) for _ in images]


def test_second_opinion_is_asked_about_every_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stampless.ocr as ocr
    from stampless.fixtures.records import records
    from stampless.fixtures.render import render_certificate

    record = records("social_security_record", 7, 1)[0]
    path = tmp_path / "clean.png"
    render_certificate("social_security_record", record, variant=1, dpi=200).save(path)
    dt = doctype("social_security_record")
    second = _SecondEngine(answer="")  # reads nothing: the fields stay Tesseract's
    real_get_engine = ocr.get_engine
    monkeypatch.setattr(ocr, "second_opinion", lambda config: "second")
    monkeypatch.setattr(
        ocr,
        "get_engine",
        lambda config, kind=None: second if kind == "second" else real_get_engine(config, kind),
    )
    result = read_document(path, dt, TESSERACT)
    confident = [n for n, f in result.fields.items() if f.confidence >= CONFIG.min_confidence]
    assert "person_name" in confident  # asked although Tesseract was sure of it
    names = [s for s in dt.fields if s.kind == "name"]
    low = [s for s in dt.fields if result.fields[s.name].confidence < CONFIG.min_confidence]
    assert len(second.asked) == len({s.name for s in names + low})
    assert result.engine == "tesseract+second"


def test_second_opinion_agreeing_without_the_label_tail_lifts_confidence() -> None:
    from stampless.models import OcrField
    from stampless.ocr.extract import stop_labels
    from stampless.ocr.tesseract_reader import _second_opinion

    dt = doctype("marriage_certificate")
    spec = dt.field("holder_name")
    read = OcrField(value="尹晨", confidence=0.3, valid=True, box=(10, 10, 200, 40))
    page = Image.new("L", (400, 100), 255)
    # The second engine's crop caught the tail of the label 持证人.
    second = _second_opinion(_SecondEngine("人尹晨"), page, spec, read, stop_labels(dt))
    assert second.value == "尹晨" and second.confidence == pytest.approx(0.9)
    other = _second_opinion(_SecondEngine("尹星"), page, spec, read, stop_labels(dt))
    assert other.value == "尹星" and other.confidence < 0.3  # disagreement: a person looks


def _box(quad: np.ndarray) -> tuple[float, float, float, float]:
    return float(quad[:, 0].min()), float(quad[:, 1].min()), *quad.max(axis=0).tolist()


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


@pytest.mark.slow
@pytest.mark.parametrize("type_name", ["business_license", "social_security_record"])
def test_the_8bit_detector_finds_the_lines_the_float_one_finds(
    tmp_path: Path, type_name: str
) -> None:
    """The shipped 8-bit detector is RapidOCR's float one made smaller: on a hard page it
    finds the same lines (a box over each of the float model's, intersection over union at
    least 0.5), and neither detector finds nothing."""
    from stampless.fixtures.scans import generate
    from stampless.ocr.ppocr import get_ppocr

    scan = next(p for p in generate(tmp_path, type_name, 2, 77, difficulty="hard"))
    image = Image.open(scan).convert("RGB")
    image.thumbnail((1100, 1100))
    page = np.asarray(image)
    lines = {
        detector: [_box(q) for q in get_ppocr(OcrConfig(detector=detector)).detect(page)]
        for detector in ("float", "int8")
    }
    assert len(lines["float"]) >= 10
    found = [any(_iou(a, b) >= 0.5 for b in lines["int8"]) for a in lines["float"]]
    assert sum(found) >= 0.95 * len(found), (sum(found), len(found))
    assert abs(len(lines["int8"]) - len(lines["float"])) <= 0.1 * len(lines["float"])


@pytest.mark.slow
def test_a_value_whose_label_was_not_read_is_found_by_the_record_and_only_so(
    tmp_path: Path,
) -> None:
    """A label too small or blurred to read leaves its value unplaced: the record's value
    is then looked for on the lines no field took, as a whole line. One line supporting
    it verifies the field; a record that differs by one character finds none, and two
    fields that would take one line get it neither."""
    from stampless.models import OcrField

    dt = doctype("work_permit")
    scan = generate_scans(tmp_path, "work_permit", 1, 5, altered_share=0, absent_share=0)[0]
    truth = json.loads(scan.with_name(scan.stem + ".truth.json").read_text(encoding="utf-8"))
    looked = {k: str(v) for k, v in truth["lookup_record"].items() if k != "status"}
    result = read_document(scan, dt, CONFIG, workers=1)
    assert result.fields["employer"].spans  # read under its label

    def decided(fields: dict[str, str], *unplaced: str) -> Any:
        blank = OcrField(value=None, confidence=0.0, valid=False)
        ocr = result.model_copy(
            update={"fields": {**result.fields, **dict.fromkeys(unplaced, blank)}}
        )
        ocr.matrices.update(result.matrices)
        record = Record(system=dt.system or "", key=fields[dt.key_field], fields=fields)
        return verify_and_decide(dt, truth["claim"], ocr, record, CONFIG)

    verified, decision = decided(looked, "employer")
    employer = verified.fields["employer"]
    assert employer.source == "ppocr:search" and employer.check.status == "supported"
    assert decision.verdict == VerdictKind.verified
    # One character of the record's employer changed: no line supports it.
    other = (
        looked["employer"][:-3]
        + ("集" if looked["employer"][-3] != "集" else "团")
        + looked["employer"][-2:]
    )
    verified, decision = decided({**looked, "employer": other}, "employer")
    assert verified.fields["employer"].check.status != "supported"
    assert decision.verdict != VerdictKind.verified
    # Two fields unplaced whose record values are one printed line: neither takes it.
    verified, decision = decided(
        {**looked, "nationality": looked["employer"]}, "employer", "nationality"
    )
    assert verified.fields["employer"].check.status != "supported"
    assert verified.fields["nationality"].check.status != "supported"
    assert decision.verdict != VerdictKind.verified


@pytest.mark.slow
def test_a_value_after_a_misread_labels_colon_is_found_by_the_record(tmp_path: Path) -> None:
    """A label misread past recognition ('0记11期' for 登记日期) is still followed by its
    colon: the record's value is looked for after it too. Another date finds nothing."""
    from PIL import ImageDraw

    from stampless.fixtures.fonts import font

    image = Image.new("L", (1000, 160), 255)
    ImageDraw.Draw(image).text((40, 50), "0记11期：2021年09月03日", font=font("sans", 44), fill=0)
    image.save(tmp_path / "line.png")
    dt = doctype("marriage_certificate")
    result = read_document(tmp_path / "line.png", dt, CONFIG, workers=1)
    assert not result.fields["registered_on"].spans  # no label read

    def registered(on: str) -> Any:
        record = Record(system="", key="J", fields={"registered_on": on})
        return verify_fields(result, record, dt, CONFIG).fields["registered_on"]

    found = registered("2021-09-03")
    assert (found.value, found.source, found.check.status) == (
        "2021-09-03",
        "ppocr:search",
        "supported",
    )
    assert found.spans[0][1] == len("0记11期：")
    assert registered("2021-09-08").check.status != "supported"


@pytest.mark.slow
def test_a_name_in_doubt_is_confirmed_where_the_page_prints_it_again(tmp_path: Path) -> None:
    """A certificate prints the holder's name twice (持证人 and the person's 姓名). When
    the reading under its label is in doubt, the other place, printed clearly, verifies
    it; a reading that favours another name, or a record one character off, never is."""
    from PIL import ImageDraw

    from stampless.fixtures.fonts import font
    from stampless.models import CheckStatus, FieldCheck
    from stampless.ocr.extract import stop_labels
    from stampless.ocr.ppocr import get_ppocr
    from stampless.ocr.verify import _found_by_value

    image = Image.new("L", (900, 300), 255)
    draw = ImageDraw.Draw(image)
    draw.text((40, 50), "持证人：武玉蕾", font=font("sans", 44), fill=0)
    draw.text((40, 180), "姓名：武玉蕾", font=font("sans", 44), fill=0)
    image.save(tmp_path / "names.png")
    dt = doctype("marriage_certificate")
    result = read_document(tmp_path / "names.png", dt, CONFIG, workers=1)
    first = result.fields["holder_name"]
    index = first.spans[0][0]
    assert result.lines[index].text.startswith("持证人")

    def holder(name: str, check: FieldCheck) -> Any:
        read = first.model_copy(update={"check": check})
        ocr = result.model_copy(update={"fields": {**result.fields, "holder_name": read}})
        ocr.matrices.update(result.matrices)
        record = Record(system="", key="J", fields={"holder_name": name})
        # The search itself: verify_fields would check the clearly printed field again.
        engine = get_ppocr(CONFIG)
        found = _found_by_value(
            dt, record, dict(ocr.fields), ocr, engine.labels, engine.decode, stop_labels(dt), CONFIG
        )
        return found.get("holder_name")

    doubt = FieldCheck(status=CheckStatus.uncertain, margin=-1.0, views=[0.5, -2.0])
    confirmed = holder("武玉蕾", doubt)
    assert confirmed is not None and confirmed.check.status is CheckStatus.supported
    assert confirmed.spans[0][0] != index and confirmed.source == "ppocr:search"
    assert "read in doubt under its label" in confirmed.check.reason
    # One reading favouring another name by view_floor: not in doubt, never looked for.
    against = doubt.model_copy(update={"views": [0.5, -CONFIG.calibration.view_floor - 1]})
    assert holder("武玉蕾", against) is None
    # A record one character off: the other place does not support it either.
    assert holder("武玉雷", doubt) is None
    # Sent to a person by the second reader, which read another value where it is
    # printed: the doubt is about that place, and another place does not settle it.
    second = doubt.model_copy(
        update={"margin": CONFIG.calibration.verify_margin + 1, "views": None}
    )
    assert holder("武玉蕾", second) is None


def test_a_missing_8bit_detector_says_how_to_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stampless.ocr import ppocr

    monkeypatch.setattr(ppocr, "DET_INT8", tmp_path / "det_int8.onnx")
    with pytest.raises(OcrEngineError, match=r'is missing; .* ocr\.detector = "float"'):
        ppocr.PpOcr(OcrConfig(detector="int8"))


@pytest.mark.slow
def test_ppocr_reads_rare_name_characters(tmp_path: Path) -> None:
    """Names with characters Tesseract's chi_sim misreads with confidence (霞 as 起, 倩 as
    傅, 邱 as 印): PP-OCR reads them, as the reader and as Tesseract's second opinion."""
    from stampless.fixtures.records import records
    from stampless.fixtures.render import render_certificate

    record = {**records("marriage_certificate", 7, 1)[0], "holder_name": "邱霞"}
    record["spouse_name"] = "罗倩"
    path = tmp_path / "names.png"
    render_certificate("marriage_certificate", record, variant=1, dpi=200).save(path)
    dt = doctype("marriage_certificate")
    for config in (CONFIG, TESSERACT):
        result = read_document(path, dt, config)
        assert result.engine in ("ppocr+tesseract", "tesseract+ppocr")
        assert result.fields["holder_name"].value == "邱霞"
        assert result.fields["spouse_name"].value == "罗倩"


@pytest.mark.slow
def test_upside_down_page_is_turned(tmp_path: Path) -> None:
    from stampless.fixtures.records import records
    from stampless.fixtures.render import render_certificate

    record = records("social_security_record", 7, 1)[0]
    image = render_certificate("social_security_record", record, variant=1, dpi=200)
    path = tmp_path / "turned.png"
    image.rotate(180).save(path)
    result = read_document(path, doctype("social_security_record"), CONFIG, workers=1)
    assert result.fields["person_id"].value == record["person_id"]


# --- generated scans, end to end -------------------------------------------------------

SCANS_PER_TYPE = 4


def _evaluate(scan: Path) -> dict[str, Any]:
    truth = json.loads(scan.with_name(scan.stem + ".truth.json").read_text(encoding="utf-8"))
    dt = doctype(truth["type"])
    result = read_document(scan, dt, CONFIG, workers=1)
    looked = truth["lookup_record"]
    record = (
        Record(
            system=dt.system or "",
            key=looked[dt.key_field],
            fields={k: v for k, v in looked.items() if k != "status"},
        )
        if truth["record_exists"]
        else None
    )
    return {
        "kind": truth["kind"],
        "expected": truth["expected_verdict"],
        "verdict": verify_and_decide(dt, truth["claim"], result, record, CONFIG)[1].verdict.value,
        "scan_only": verify_and_decide(dt, {}, result, record, CONFIG)[1].verdict.value,
        "fields": {
            s.name: result.fields[s.name].value == normalize(s.kind, truth["fields"][s.name])
            for s in dt.fields
        },
        "kinds": {s.name: s.kind for s in dt.fields},
    }


@pytest.fixture(scope="module", params=["normal", "hard"])
def scan_results(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[dict[str, Any]]]:
    from stampless.fixtures.scans import generate

    difficulty = request.param
    out = tmp_path_factory.mktemp(f"scans-{difficulty}")
    scans: list[Path] = []
    # Rendered in this process: a pool of two would get each type's four pages as one chunk
    # and add only its start-up (the pages are the same whatever the number of workers).
    for type_name in TYPES:
        scans += generate(
            out / type_name,
            type_name,
            SCANS_PER_TYPE,
            31,
            difficulty=difficulty,
            altered_share=0.35,
            absent_share=0.1,
        )
    # One Tesseract per core: two pages at a time.
    with ThreadPoolExecutor(max_workers=2) as pool:
        return difficulty, list(pool.map(_evaluate, scans))


@pytest.mark.long
@pytest.mark.timeout(900)
@pytest.mark.slow
def test_generated_scans_meet_the_verdict_rules(
    scan_results: tuple[str, list[dict[str, Any]]],
) -> None:
    _, results = scan_results
    altered = [r for r in results if r["kind"] == "altered"]
    genuine = [r for r in results if r["kind"] == "genuine"]
    absent = [r for r in results if r["kind"] == "absent"]
    assert altered and genuine
    # The worst outcome never happens: an altered scan verified, with or without a claim.
    assert not [r for r in altered if r["verdict"] == "verified"]
    assert not [r for r in altered if r["scan_only"] == "verified"]
    assert all(r["verdict"] == "mismatch" for r in altered)
    assert all(r["verdict"] == "not_found" for r in absent)
    # A genuine scan is never called a forgery (the rest may go to review).
    assert not [r for r in genuine if r["verdict"] == "mismatch"]
    assert not [r for r in genuine if r["scan_only"] == "mismatch"]


@pytest.mark.slow
def test_generated_scans_number_fields_are_read(
    scan_results: tuple[str, list[dict[str, Any]]],
) -> None:
    difficulty, results = scan_results
    numbers = [
        ok
        for r in results
        for name, ok in r["fields"].items()
        if r["kinds"][name] in ("resident_id", "credit_code", "cert_no")
    ]
    dates = [ok for r in results for name, ok in r["fields"].items() if r["kinds"][name] == "date"]
    # Small, fixed sets (Tesseract is deterministic): floors that catch a regression. The
    # issue's targets (99 % normal, 95 % hard) are measured by bench/ocr_accuracy.py.
    floor = 0.85 if difficulty == "normal" else 0.6
    assert sum(numbers) / len(numbers) >= floor
    assert sum(dates) / len(dates) >= floor - 0.1


# --- command line ----------------------------------------------------------------------


@pytest.mark.slow
def test_cli_ocr_json(tmp_path: Path) -> None:
    from stampless.fixtures.records import records
    from stampless.fixtures.render import render_certificate

    record = records("business_license", 7, 1)[0]
    path = tmp_path / "licence.png"
    render_certificate("business_license", record, variant=0, dpi=200).save(path)
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stampless",
            "ocr",
            str(path),
            "--type",
            "business_license",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["type"] == "business_license"
    assert set(out["fields"]) == {s.name for s in doctype("business_license").fields}
    code = out["fields"]["credit_code"]
    assert code["value"] == record["credit_code"] and code["valid"] is True
    assert code["source"].startswith("ppocr:label:")
    assert out["engine"] == "ppocr+tesseract"
    assert 0 <= code["confidence"] <= 1
    assert out["seconds"] > 0


def test_doctor_names_the_ocr_backend_and_what_is_missing(tmp_path: Path) -> None:
    def doctor(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stampless", "doctor"],
            capture_output=True,
            text=True,
            cwd=tmp_path,  # no robot.toml here: the defaults
            env={**os.environ, "COLUMNS": "400", **env},
            timeout=60,
        )

    ok = doctor()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "read in-process" in ok.stdout and "PP-OCR reads and verifies" in ok.stdout
    alone = doctor(STAMPLESS__OCR__ENGINE="tesseract")
    assert alone.returncode == 0 and "Tesseract alone" in alone.stdout
    off = doctor(STAMPLESS__OCR__TESSERACT_LIBRARY="off")
    assert off.returncode == 0 and "runs the tesseract command" in off.stdout
    broken = doctor(STAMPLESS__OCR__TESSERACT_CMD="/nonexistent/tesseract")
    assert broken.returncode != 0
    assert "does not run" in broken.stdout and "apt-get install" in broken.stdout
    assert "Traceback" not in broken.stdout + broken.stderr


def test_cli_ocr_bad_input_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_text("not an image", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "stampless", "ocr", str(path), "--type", "marriage_certificate"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "not an image" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _detected_line(text: str, left: float, right: float, top: float = 0.0) -> Any:
    """A detected line of ``text`` whose characters are evenly spaced between its ends."""
    from stampless.ocr.ppocr import TextLine

    step = (right - left) / len(text)
    xs = [left + step * (i + 0.5) for i in range(len(text))]
    return TextLine(
        text,
        ((left, top), (right, top), (right, top + 40), (left, top + 40)),
        0.9,
        char_conf=[0.9] * len(text),
        char_x=xs,
        char_share=[(x - left) / (right - left) for x in xs],
    )


def test_a_label_tail_detected_apart_from_its_value_is_no_part_of_the_value() -> None:
    """A label line read with a character too many ('登记日期期:') leaves '期:' before the
    date in the row; the date is still one line's alone, so the record's value is scored
    on that line only (it was split over both, and a genuine date came out at -55 nats)."""
    from stampless.ocr.ppocr import get_ppocr
    from stampless.ocr.reader import Context, Page, layout, locate

    dt = load_doctype_file(bundled_tasks_dir() / "marriage_certificate.py")
    ctx = Context(dt, CONFIG, CONFIG.calibration, {}, get_ppocr(CONFIG), None)
    lines = [_detected_line("登记日期期:", 100, 300), _detected_line("2021年06月03日", 330, 680, 2)]
    page = locate(layout(Page(image=Image.new("RGB", (800, 100)), lines=lines), ctx), ctx)
    field = page.fields["registered_on"]
    assert field.raw == "期:2021年06月03日"  # the row as read, label tail and all
    assert (field.value, field.spans) == ("2021-06-03", [(1, 0, 11)])


def _misread_page(name: str, printed: str, misread_at: int, wrong: str, p_right: float) -> Any:
    """A page of one line, field ``name`` printed as ``printed``, whose recognizer favoured
    ``wrong`` at character ``misread_at`` and gave the printed character ``p_right``."""
    from stampless.models import OcrField
    from stampless.ocr.ctc import TopK
    from stampless.ocr.ppocr import TextLine, get_ppocr
    from stampless.ocr.reader import Page

    engine = get_ppocr(CONFIG)
    probs = np.full((2 * len(printed) + 1, len(engine.characters)), 1e-9, dtype=np.float32)
    for t in range(probs.shape[0]):
        probs[t, 0] = 1.0  # blanks between characters
    for i, ch in enumerate(printed):
        t = 2 * i + 1
        probs[t, 0] = 0.0
        if i == misread_at:
            probs[t, engine.index[wrong]] = 1.0 - p_right
            probs[t, engine.index[ch]] = p_right
        else:
            probs[t, engine.index[ch]] = 1.0
    matrix = TopK.from_probs(probs)
    text = engine.decode(matrix.greedy()[0])
    line = TextLine(text, ((0, 0), (100, 0), (100, 10), (0, 10)), 0.9, matrix=matrix)
    field = OcrField(value=None, valid=False, confidence=0.9, spans=[(0, 0, len(text))])
    page = Page(image=Image.new("RGB", (100, 10)), lines=[line])
    page.fields = {name: field}
    return page, engine, text


@pytest.mark.parametrize(
    ("doc_type", "name", "printed", "at", "wrong", "value"),
    [
        # A 0 read as 9 in a credit code: the check character fails.
        ("business_license", "credit_code", "91340104623532441J", 6, "9", "91340104623532441J"),
        # A 0 read as 2 in a date: there is no 22nd month.
        ("social_security_record", "period_from", "2015年01月", 5, "2", "2015-01"),
    ],
)
@pytest.mark.parametrize("p_right", [0.35, 1e-6])
def test_a_value_read_as_invalid_is_decoded_again_within_its_kind(
    doc_type: str, name: str, printed: str, at: int, wrong: str, value: str, p_right: float
) -> None:
    """The recognizer's second choice at the misread character makes a valid value; it is
    taken only if the image supports it (a second choice at 1e-6 is no reading)."""
    from stampless.models import OcrField
    from stampless.ocr.reader import Context, decode

    dt = load_doctype_file(bundled_tasks_dir() / f"{doc_type}.py")
    page, engine, text = _misread_page(name, printed, at, wrong, p_right)
    assert text != printed
    for spec in dt.fields:
        page.fields.setdefault(spec.name, OcrField(value=None, confidence=0.0, valid=False))
    field = decode(page, Context(dt, CONFIG, CONFIG.calibration, {}, engine, None)).fields[name]
    decoded = p_right > 0.1
    assert field.valid is decoded
    assert (field.value == value) is decoded
    if decoded:
        assert field.source == "ppocr:decoded" and 0 < field.confidence < 0.9
        assert page.steps[-1].name == "decode" and page.steps[-1].note == name


def test_text_under_a_seal_stays_and_the_seal_goes() -> None:
    """A red seal printed over black text (seal ink multiplies), blurred as a scanner
    blurs: the strokes' soft edges under the seal are reddish, and dropping them to paper
    left only broken stroke cores (股份 of a company name lost under a seal's star)."""
    from stampless.ocr.preprocess import remove_seal

    page = np.full((120, 240, 3), 235, dtype=np.float32)
    text = np.ones((120, 240), dtype=np.float32)
    for x in range(20, 220, 12):  # vertical strokes, 2 px wide: small print
        text[30:90, x : x + 2] = 0.12
    seal = np.ones((120, 240, 3), dtype=np.float32)
    yy, xx = np.mgrid[0:120, 0:240]
    disk = (yy - 60) ** 2 + (xx - 170) ** 2 < 55**2
    seal[disk] = (0.93, 0.33, 0.33)
    rgb = page * text[..., None] * seal
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(1.5)
    )
    out = np.asarray(remove_seal(image), dtype=np.float32)
    strokes = text < 0.5
    under, bare = strokes & disk, strokes & ~disk
    # The seal four pixels or more from any stroke, inside its disk.
    clear = np.all([np.roll(text, k, axis=1) > 0.5 for k in range(-4, 5)], axis=0)
    seal_only = disk & clear & ((yy - 60) ** 2 + (xx - 170) ** 2 < 50**2)
    # The seal itself is paper again; the strokes under it are as dark, nearly, as the
    # strokes beside it.
    assert out[seal_only].mean() > 200
    assert out[under].mean() < out[bare].mean() + 20
    assert out[under].mean() < out[seal_only].mean() - 60
