"""The scan generator: reproducible bytes, truth consistent with the fixture records,
labels a real Tesseract can read, degradation within the stated ranges, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from stampless.checksums import is_valid_credit_code, is_valid_resident_id
from stampless.errors import InputError
from stampless.fixtures.degrade import (
    PHOTO_RANGES,
    PHOTO_SHARE,
    RANGES,
    SCAN_RANGES,
    apply_capture,
    degrade_scan,
    draw_capture,
)
from stampless.fixtures.fonts import HELD_OUT_FACES, TUNE_FACES
from stampless.fixtures.records import DOC_TYPES, KEY_FIELD, record_by_key
from stampless.fixtures.render import HELD_OUT_LAYOUT, LAYOUTS, capital_amount
from stampless.fixtures.scans import (
    CLAIM_FIELDS,
    DRAWN_FIELDS,
    generate,
    plan_item,
    render_certificate,
)
from stampless.models import Request

TYPES = sorted(DOC_TYPES)

# The labels docs/document-types.md says each document prints.
LABELS = {
    "marriage_certificate": (
        "持证人",
        "登记日期",
        "结婚证字号",
        "姓名",
        "性别",
        "国籍",
        "出生日期",
        "身份证件号",
    ),
    "business_license": (
        "统一社会信用代码",
        "名称",
        "类型",
        "法定代表人",
        "注册资本",
        "成立日期",
        "住所",
    ),
    "social_security_record": (
        "姓名",
        "社会保障号码",
        "参保单位",
        "缴费起止年月",
        "累计缴费月数",
    ),
    "work_permit": ("姓名", "国籍", "护照号码", "许可证号", "工作单位", "有效期至", "出生日期"),
}
TITLES = {
    "marriage_certificate": "结婚证",
    "business_license": "营业执照",
    "social_security_record": "参保缴费证明",
    "work_permit": "外国人工作许可证",
}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", "business_license", 2, 11, "hard", 0.5, 0.2)
    # Two worker processes write the same bytes as one.
    generate(tmp_path / "b", "business_license", 2, 11, "hard", 0.5, 0.2, workers=2)
    assert [p.name for p in first] == ["BL-11-0000.jpg", "BL-11-0001.jpg"]
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 6
    assert a == b
    other = generate(tmp_path / "c", "business_license", 1, 12, "hard", 0.5, 0.2)
    assert other[0].read_bytes() != a["BL-11-0000.jpg"]


@pytest.mark.parametrize("split", ["tune", "heldout"])
def test_splits_give_identical_bytes_for_the_same_arguments(tmp_path: Path, split: str) -> None:
    args = ("marriage_certificate", 3, 11, "hard", 0.3, 0.1)
    first = generate(tmp_path / "a", *args, split=split)
    generate(tmp_path / "b", *args, split=split, workers=2)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    prefix = "MC-H-11" if split == "heldout" else "MC-11"
    assert [p.name for p in first] == [f"{prefix}-000{i}.jpg" for i in range(3)]
    classic = generate(tmp_path / "c", *args)
    assert all(a.read_bytes() != b.read_bytes() for a, b in zip(first, classic, strict=True))


def test_heldout_split_is_disjoint_from_tune() -> None:
    for doc_type in TYPES:
        held_out = HELD_OUT_LAYOUT[doc_type]
        tune_layouts, heldout_layouts = set(), set()
        tune_faces: set[str] = set()
        for index in range(120):
            tune, tune_rng = plan_item(doc_type, 5, index, split="tune")
            held, held_rng = plan_item(doc_type, 5, index, split="heldout")
            tune_layouts.add(LAYOUTS[doc_type][tune.look.layout])
            heldout_layouts.add(LAYOUTS[doc_type][held.look.layout])
            tune_faces |= set(tune.look.faces)
            # Every held-out page prints its labels or its values in a face tune never draws.
            assert set(held.look.faces) & set(HELD_OUT_FACES), held.look
            assert held.name != tune.name and held.name.startswith(held.name[:2] + "-H-")
            # The item's random stream (record, kind of forgery, noise) is another one.
            assert held_rng.getrandbits(64) != tune_rng.getrandbits(64)
        assert held_out not in tune_layouts
        assert held_out in heldout_layouts and heldout_layouts == set(LAYOUTS[doc_type])
        assert not tune_faces & set(HELD_OUT_FACES) and tune_faces == set(TUNE_FACES)
    # No item stream of one split is an item stream of the other, across seeds and indices.
    streams = {
        split: {
            plan_item("business_license", seed, index, split=split)[1].getrandbits(64)
            for seed in range(6)
            for index in range(40)
        }
        for split in ("tune", "heldout")
    }
    assert not streams["tune"] & streams["heldout"]


@pytest.mark.parametrize("doc_type", TYPES)
def test_plans_agree_with_fixture_records(doc_type: str) -> None:
    key = KEY_FIELD[doc_type]
    kinds: dict[str, int] = {}
    altered_fields: set[str] = set()
    n = 200
    for index in range(n):
        item, _ = plan_item(doc_type, 5, index, records_seed=7, altered_share=0.3, absent_share=0.1)
        kinds[item.kind] = kinds.get(item.kind, 0) + 1
        assert item.name == f"{item.name[:2]}-5-{index:04d}"
        assert item.claim == {f: item.fields[f] for f in CLAIM_FIELDS[doc_type]}
        assert set(item.fields) == set(DRAWN_FIELDS[doc_type])
        for field, value in item.fields.items():
            if field.endswith("_id"):
                assert is_valid_resident_id(value), (field, value)
            if field == "credit_code":
                assert is_valid_credit_code(value), value
        stored = record_by_key(doc_type, item.fields[key], 7)
        if item.kind == "genuine":
            assert item.expected_verdict == "verified"
            assert stored is not None and stored["status"] == "valid"
            assert {f: stored[f] for f in item.fields} == item.fields
        elif item.kind == "altered":
            assert item.expected_verdict == "mismatch"
            assert item.record is not None and item.altered_field in CLAIM_FIELDS[doc_type]
            true = record_by_key(doc_type, item.record[key], 7)
            assert true is not None and true["status"] == "valid"
            differing = [f for f in item.fields if item.fields[f] != true[f]]
            assert differing == [item.altered_field]
            assert item.original_value == true[item.altered_field]
            altered_fields.add(item.altered_field)
            # The claimed key still finds a valid record: the verifier sees a mismatch.
            assert stored is not None and stored["status"] == "valid"
            assert any(stored[f] != item.claim[f] for f in item.claim)
        else:
            assert item.kind == "absent" and item.expected_verdict == "not_found"
            assert stored is None and item.lookup_record is None
    # Shares are close to the requested ones (golden-ratio spread, not coin flips).
    assert abs(kinds["altered"] - 0.3 * n) <= 3
    assert abs(kinds["absent"] - 0.1 * n) <= 3
    assert altered_fields == set(CLAIM_FIELDS[doc_type])


def test_truth_and_request_files(tmp_path: Path) -> None:
    out = tmp_path / "scans"
    jpgs = generate(out, "marriage_certificate", 4, 1, "easy", 0.5, 0.25, records_seed=7)
    assert len(jpgs) == 4
    for jpg in jpgs:
        truth = json.loads(jpg.with_suffix(".truth.json").read_text(encoding="utf-8"))
        raw = json.loads(jpg.with_suffix(".request.json").read_text(encoding="utf-8"))
        request = Request.model_validate(raw)
        assert request.id == jpg.stem == truth["name"]
        assert request.scan == jpg.name and (jpg.parent / request.scan).is_file()
        assert request.claim == truth["claim"] and request.priority == 0
        assert raw["case_id"] is None
        item, _ = plan_item(
            "marriage_certificate",
            1,
            truth["index"],
            records_seed=7,
            altered_share=0.5,
            absent_share=0.25,
        )
        assert truth["fields"] == item.fields
        assert truth["expected_verdict"] == item.expected_verdict
        assert truth["record_exists"] is (item.kind != "absent")
        assert truth["difficulty"] == "easy" and truth["dpi"] == 300
        with Image.open(jpg) as image:
            assert image.format == "JPEG"
            assert round(image.info["dpi"][0]) == 300
            assert "exif" not in image.info
            # The page (corners in truth) lies wholly inside the image.
            for x, y in truth["page_corners"]:
                assert 0 < x < image.width and 0 < y < image.height
    kinds = {json.loads(p.with_suffix(".truth.json").read_text())["kind"] for p in jpgs}
    assert kinds == {"genuine", "altered", "absent"}


@pytest.mark.parametrize("split", ["classic", "tune", "heldout"])
def test_truth_says_how_each_scan_was_drawn(tmp_path: Path, split: str) -> None:
    jpgs = generate(tmp_path, "business_license", 4, 2, "normal", split=split)
    for jpg in jpgs:
        truth = json.loads(jpg.with_suffix(".truth.json").read_text(encoding="utf-8"))
        item, _ = plan_item("business_license", 2, truth["index"], split=split)
        assert truth["split"] == split
        assert truth["layout_id"] == LAYOUTS["business_license"][item.look.layout]
        assert truth["faces"] == dict(zip(("label", "value"), item.look.faces, strict=True))
        style = truth["style"]
        for key in ("layout", "serif_values", "spaced_labels", "alt_form", "colon"):
            assert key in style
        assert truth["seal_target"] in (None, *DRAWN_FIELDS["business_license"])
        assert truth["seal_target"] == (item.look.seal_target if split != "classic" else None)
        assert set(truth["field_boxes"]) >= set(DRAWN_FIELDS["business_license"])
        for x0, y0, x1, y1 in truth["field_boxes"].values():
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        for key in ("kind", "fields", "claim", "record", "lookup_record", "expected_verdict"):
            assert key in truth
        assert truth["capture"] in ("scan", "photo")
        for key in ("shadow", "moire", "defocus_radius", "keystone", "jpeg_quality", "dpi"):
            assert isinstance(truth[key], int | float), key
        with Image.open(jpg) as image:
            assert round(image.info["dpi"][0]) == truth["dpi"]
        if split == "classic":
            assert truth["layout_id"] in ("edition_2019", "edition_earlier")
            assert set(truth["faces"].values()) == {"serif", "sans"}
            assert truth["capture"] == "scan" and 200 <= truth["dpi"] <= 300
        else:
            assert 150 <= truth["dpi"] <= 400


@pytest.mark.parametrize("difficulty", sorted(RANGES))
def test_degradation_parameters_stay_in_range(difficulty: str) -> None:
    r = RANGES[difficulty]
    page = Image.new("RGB", (600, 400), (250, 250, 250))
    page.info["dpi"] = (300, 300)
    for i in range(25):
        scan = degrade_scan(page, random.Random(i), difficulty)
        p = scan.params
        assert abs(p.rotation_deg) <= r.rotation_deg
        assert r.perspective[0] <= p.perspective <= r.perspective[1]
        assert r.dpi[0] <= p.dpi <= r.dpi[1]
        assert r.jpeg_quality[0] <= p.jpeg_quality <= r.jpeg_quality[1]
        assert r.contrast[0] <= p.contrast <= r.contrast[1]
        assert r.blur_radius[0] <= p.blur_radius <= r.blur_radius[1]
        assert r.noise_sigma[0] <= p.noise_sigma <= r.noise_sigma[1]
        assert r.salt_pepper[0] <= p.salt_pepper <= r.salt_pepper[1]
        assert r.lighting[0] <= p.lighting <= r.lighting[1]
        image = scan.image()
        assert round(image.info["dpi"][0]) == p.dpi
        for x, y in p.page_corners:
            assert p.margin_px - 1 <= x <= image.width - p.margin_px + 1
            assert p.margin_px - 1 <= y <= image.height - p.margin_px + 1
    # The stated limits themselves (the ranges).
    assert RANGES["easy"].rotation_deg <= 1 and RANGES["easy"].jpeg_quality[0] >= 70
    assert RANGES["easy"].dpi == (300, 300)
    assert RANGES["normal"].rotation_deg <= 4 and RANGES["normal"].jpeg_quality == (40, 70)
    assert RANGES["hard"].rotation_deg == 7 and RANGES["hard"].jpeg_quality == (25, 70)
    assert RANGES["hard"].dpi == (150, 300)


@pytest.mark.parametrize("difficulty", ["normal", "hard"])
def test_captures_mix_scans_and_photographs_within_their_ranges(difficulty: str) -> None:
    scans, photos = SCAN_RANGES[difficulty], PHOTO_RANGES[difficulty]
    page = Image.new("RGB", (500, 350), (250, 248, 244))
    drawn = [draw_capture(random.Random(f"c{i}"), difficulty) for i in range(120)]
    shots = [c for c in drawn if c.capture == "photo"]
    assert abs(len(shots) / len(drawn) - PHOTO_SHARE[difficulty]) < 0.12
    for c in drawn:
        r: Any = photos if c.capture == "photo" else scans
        assert r.dpi[0] <= c.dpi <= r.dpi[1]
        assert r.jpeg_quality[0] <= c.jpeg_quality <= r.jpeg_quality[1]
        assert abs(c.rotation_deg) <= r.rotation_deg
        assert r.lighting[0] <= c.lighting <= r.lighting[1]
    assert {c.dpi for c in drawn} <= set(range(120 if difficulty == "hard" else 150, 401))
    for c in shots:
        assert photos.keystone[0] <= c.keystone <= photos.keystone[1]
        assert c.shadow == 0 or photos.shadow[0] <= c.shadow <= photos.shadow[1]
        assert c.moire == 0 or photos.moire[0] <= c.moire <= photos.moire[1]
        assert c.defocus_radius == 0 or photos.defocus[0] <= c.defocus_radius
    # Each effect is drawn for some photographs and not for others.
    for effect in ("shadow", "moire", "defocus_radius"):
        assert 0 < sum(getattr(c, effect) > 0 for c in shots) < len(shots), effect
    photo = next(c for c in shots if c.shadow and c.moire)
    page.info["dpi"] = (photo.dpi, photo.dpi)
    first, again = apply_capture(page, photo), apply_capture(page, photo)
    assert first.jpeg == again.jpeg
    image = first.image()
    assert round(image.info["dpi"][0]) == photo.dpi and first.params.capture == "photo"
    for x, y in first.params.page_corners:
        assert 0 < x < image.width and 0 < y < image.height
    # Every effect changes the pixels: take each away in turn.
    for effect in ("shadow", "moire", "keystone", "sharpen"):
        other = apply_capture(page, dataclasses.replace(photo, **{effect: 0}))
        assert other.jpeg != first.jpeg, effect


def test_degrade_is_deterministic_and_changes_the_page() -> None:
    from stampless.fixtures.scans import degrade

    record = plan_item("social_security_record", 7, 0)[0].fields
    clean = render_certificate("social_security_record", record, variant=1, dpi=150)
    a = degrade(clean, random.Random(42), "hard")
    b = degrade(clean, random.Random(42), "hard")
    assert a.tobytes() == b.tobytes()
    assert a.size != clean.size  # a margin of scanner background was added


def test_render_is_fast_and_sized_like_a4() -> None:
    for doc_type in TYPES:
        record = plan_item(doc_type, 7, 1)[0].fields
        render_certificate(doc_type, record)  # warm the font cache
        best = min(
            _timed(lambda t=doc_type, r=record, v=v: render_certificate(t, r, variant=v))
            for v in range(3)
        )
        # About 0.1-0.3 s on an idle core; the bound only catches a runaway (CI shares cores).
        assert best < 3.0, f"{doc_type} took {best:.2f} s"
        w, h = render_certificate(doc_type, record).size
        # A4/A5 proportions; the work permit's first layout is a card enlarged 2.7 times.
        assert (w, h) in ((2480, 1754), (1654, 2339), (2300, 1450))
        assert render_certificate(doc_type, record, dpi=150).size == (w // 2, h // 2 + h % 2)


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def test_capital_numerals() -> None:
    assert capital_amount(100) == "壹佰万元整"
    assert capital_amount(50) == "伍拾万元整"
    assert capital_amount(110) == "壹佰壹拾万元整"
    assert capital_amount(1050) == "壹仟零伍拾万元整"
    assert capital_amount(3000) == "叁仟万元整"
    assert capital_amount(10000) == "壹亿元整"
    assert capital_amount(10005) == "壹亿零伍万元整"
    assert capital_amount(12345) == "壹亿贰仟叁佰肆拾伍万元整"


@pytest.mark.slow
@pytest.mark.parametrize("doc_type", TYPES)
def test_tesseract_reads_every_label(doc_type: str) -> None:
    import pytesseract

    item, _ = plan_item(doc_type, 7, 2)
    key = item.fields[KEY_FIELD[doc_type]]
    # Layout 0 with tight labels, layout 1 with spaced labels ("登 记 日 期"). Tesseract
    # drops the first of two spaced characters before a Latin word (国 籍 Nationality):
    # the work permit's spaced labels are read by RapidOCR in test_layouts instead.
    for variant in (0, 1 if doc_type == "work_permit" else 5):
        clean = render_certificate(doc_type, item.fields, variant=variant)
        text = _read(pytesseract, clean)
        missing = [label for label in LABELS[doc_type] if not _found(label, text)]
        assert not missing, f"variant {variant}: {missing} not read in {text!r}"
        assert key in text
        # Tesseract reads body-sized text; the big title is read at half the resolution.
        small = render_certificate(doc_type, item.fields, variant=variant, dpi=150)
        top = small.crop((50, 50, small.width - 50, small.height // 4))
        title = pytesseract.image_to_string(top, lang="chi_sim", config="--psm 11")
        assert TITLES[doc_type] in title.replace(" ", "")
        if variant == 0:
            continue
        # An easy scan of the same page stays legible: most labels and the key survive.
        scan = degrade_scan(clean, random.Random(variant), "easy").image()
        text = _read(pytesseract, scan)
        found = [label for label in LABELS[doc_type] if _found(label, text)]
        assert len(found) >= 0.75 * len(LABELS[doc_type]), text
        assert key in text


def _found(label: str, text: str) -> bool:
    """The label is in the text; a label of 4+ characters may have one misread (累→暴)."""
    if label in text:
        return True
    n = len(label)
    return n >= 4 and any(
        sum(a != b for a, b in zip(label, text[i : i + n], strict=True)) <= 1
        for i in range(len(text) - n + 1)
    )


def _read(pytesseract: Any, image: Image.Image) -> str:
    """Tesseract's text (automatic and single-block segmentation), spaces removed."""
    text = "".join(
        pytesseract.image_to_string(image, lang="chi_sim", config=f"--psm {psm}") for psm in (3, 6)
    )
    return text.replace(" ", "")


def test_bad_arguments_raise_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="document type"):
        generate(tmp_path, "passport", 1, 7)
    with pytest.raises(InputError, match="difficulty"):
        generate(tmp_path, "business_license", 1, 7, difficulty="brutal")
    with pytest.raises(InputError, match="add up"):
        generate(tmp_path, "business_license", 1, 7, altered_share=0.7, absent_share=0.5)
    assert generate(tmp_path / "none", "business_license", 0, 7) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stampless", "fixtures", "scans", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_cli_writes_three_files_per_item_and_rejects_bad_type(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    done = _cli(
        str(out),
        "--type",
        "social_security_record",
        "--count",
        "2",
        "--seed",
        "9",
        "--difficulty",
        "easy",
        "--altered-share",
        "0",
        "--absent-share",
        "0",
    )
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        f"SS-9-000{i}.{ext}" for i in range(2) for ext in ("jpg", "request.json", "truth.json")
    ]
    assert "wrote 2 social_security_record scans" in done.stdout
    for i in range(2):
        truth = json.loads((out / f"SS-9-000{i}.truth.json").read_text(encoding="utf-8"))
        assert truth["expected_verdict"] == "verified" and truth["records_seed"] == 9
        assert truth["split"] == "tune"  # the command's default
    bad = _cli(str(tmp_path / "bad"), "--type", "passport")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "passport" in bad.stderr
    assert not (tmp_path / "bad").exists()
    held = _cli(str(tmp_path / "held"), "--type", "business_license", "--count", "1",
                "--seed", "4", "--split", "heldout")  # fmt: skip
    assert held.returncode == 0, held.stderr
    truth = json.loads((tmp_path / "held" / "BL-H-4-0000.truth.json").read_text(encoding="utf-8"))
    assert truth["split"] == "heldout" and "heldout split" in held.stdout
    wrong = _cli(str(tmp_path / "wrong"), "--type", "business_license", "--split", "test")
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
    assert "split" in wrong.stderr and not (tmp_path / "wrong").exists()


def test_forged_scan_shows_the_altered_value() -> None:
    import pytesseract

    item = next(
        it
        for it in (plan_item("marriage_certificate", 7, i)[0] for i in range(100))
        if it.altered_field == "holder_id"
    )
    assert item.original_value is not None and item.record is not None
    assert item.record["holder_id"] == item.original_value != item.fields["holder_id"]
    clean = render_certificate("marriage_certificate", item.fields, variant=0)
    text = _read(pytesseract, clean)
    assert item.fields["holder_id"] in text
    assert item.original_value not in text


def test_licence_qr_code_carries_the_credit_code() -> None:
    import zxingcpp

    item, _ = plan_item("business_license", 7, 0)
    code = item.fields["credit_code"]
    for variant in (0, 1):
        clean = render_certificate("business_license", item.fields, variant=variant)
        found = [b.text for b in zxingcpp.read_barcodes(clean)]
        assert any(code in text for text in found), found
