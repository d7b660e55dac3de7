"""The HTML evidence report, opened in real headless Chromium.

The bundle is made of real things: a certificate drawn with Pillow and a CJK font, read
by real Tesseract (word boxes), two screenshots Playwright takes of a local page, and
real audit entries. The report must show the field table with the mismatch marked, each
screenshot, and the OCR boxes over the image, and load nothing from outside.

Set STAMPLESS_UPDATE_DOCS=1 to refresh docs/img/report.png (the README's picture); it is
also written when missing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytesseract
import pytest
from images import loaded_width
from PIL import Image, ImageDraw, ImageFont, ImageOps

from stampless.audit import AuditLog
from stampless.config import BrowserConfig
from stampless.evidence import EvidenceBundle
from stampless.models import (
    FieldResult,
    FieldStatus,
    OcrField,
    OcrResult,
    OcrWord,
    Record,
    Tier,
    Verdict,
    VerdictKind,
    utcnow,
)
from stampless.report import render_report, write_report
from stampless.signing import Signer

REPO = Path(__file__).resolve().parents[1]
FONT = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
CHROMIUM = "/usr/bin/chromium"
DOCS_IMG = REPO / "docs" / "img" / "report.png"

LINES = [
    ("结婚证字号", "J320102-2024-001234"),
    ("持证人", "张三"),
    ("登记日期", "2024年01月02日"),
]

DEPARTMENT_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>
body{{font-family:"Noto Sans CJK SC",sans-serif;margin:0;background:#eef2f7}}
.bar{{background:#134b8a;color:#fff;padding:12px 20px;font-size:20px}}
.box{{margin:20px;padding:16px;background:#fff;border:1px solid #aab}}
td,th{{border:1px solid #ccd;padding:6px 12px}} table{{border-collapse:collapse}}
</style></head><body><div class="bar">民政婚姻登记信息查询系统</div>
<div class="box">{body}</div></body></html>"""


def _certificate(path: Path) -> None:
    im = Image.new("RGB", (900, 420), "#fbf7ee")
    draw = ImageDraw.Draw(im)
    title = ImageFont.truetype(FONT, 44)
    text = ImageFont.truetype(FONT, 30)
    draw.rectangle((10, 10, 889, 409), outline="#a33", width=4)
    draw.text((370, 30), "结婚证", font=title, fill="#a33")
    for i, (label, value) in enumerate(LINES):
        draw.text((60, 130 + 80 * i), f"{label}  {value}", font=text, fill="#222")
    draw.ellipse((650, 220, 830, 400), outline=(220, 40, 40), width=6)  # the office's seal
    im.save(path, "PNG")


def _ocr(image: Path) -> OcrResult:
    with Image.open(image) as im:
        size = im.size
        data = pytesseract.image_to_data(
            im, lang="chi_sim+eng", config="--psm 6", output_type=pytesseract.Output.DICT
        )
    words = [
        OcrWord(
            text=t.strip(),
            confidence=max(float(c), 0.0) / 100,
            box=(data["left"][i], data["top"][i], data["width"][i], data["height"][i]),
        )
        for i, (t, c) in enumerate(zip(data["text"], data["conf"], strict=True))
        if t.strip() and float(c) >= 0
    ]
    fields: dict[str, OcrField] = {}
    cert = next((w for w in words if re.search(r"J\d{6}", w.text)), None)
    if cert is not None:
        fields["cert_no"] = OcrField(
            value=cert.text, confidence=cert.confidence, valid=True, box=cert.box
        )
    return OcrResult(type="marriage_certificate", fields=fields, words=words, image_size=size)


def _launch(p):  # type: ignore[no-untyped-def]
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BrowserConfig().args)


@pytest.fixture(scope="module")
def report_bundle(tmp_path_factory: pytest.TempPathFactory):
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("report")
    evidence, audit_dir = root / "evidence", root / "audit"
    audit = AuditLog(audit_dir)
    rid = "MC-REPORT-0001"
    received = utcnow()
    audit.append("received", request_id=rid, type="marriage_certificate")
    bundle = EvidenceBundle.open(evidence, rid, started_at=received)
    _certificate(bundle.path("scan.png"))
    bundle.note_file("scan.png", kind="scan")
    with Image.open(bundle.path("scan.png")) as im:
        ImageOps.autocontrast(im.convert("L")).point(lambda v: 255 if v > 150 else 0).save(
            bundle.path("preprocessed/ocr-input.png")
        )
    bundle.note_file("preprocessed/ocr-input.png", kind="preprocessed")

    with sync_playwright() as p:
        browser = _launch(p)
        page = browser.new_page(viewport={"width": 900, "height": 420})
        page.set_content(
            DEPARTMENT_PAGE.format(
                body="证书编号 <input value='J320102-2024-001234'> <button>查询</button>"
            )
        )
        page.screenshot(path=bundle.screenshot_path("Search form filled in"))
        audit.append("screenshot", request_id=rid, caption="Search form filled in")
        page.set_content(
            DEPARTMENT_PAGE.format(
                body="<table><tr><th>证书编号</th><th>持证人</th><th>登记日期</th></tr>"
                "<tr><td>J320102-2024-001234</td><td>张三</td><td>2024-01-02</td></tr></table>"
            )
        )
        page.screenshot(path=bundle.screenshot_path("Record found"))
        audit.append("looked_up", request_id=rid, system="civil_affairs", found=True)
        browser.close()
    bundle.add_dialog("alert", "查询成功，共 1 条记录", accepted=True)

    ocr = _ocr(bundle.path("preprocessed/ocr-input.png"))
    bundle.add_json("ocr.json", ocr, kind="ocr")
    audit.append("ocr", request_id=rid, words=len(ocr.words))
    record = Record(
        system="civil_affairs",
        key="J320102-2024-001234",
        fields={
            "cert_no": "J320102-2024-001234",
            "holder_name": "张三",
            "registered_on": "2024-01-02",
        },
        url="http://127.0.0.1:0/record/J320102-2024-001234",
    )
    bundle.add_json("record.json", record, kind="record")
    fields = [
        FieldResult(name="cert_no", claimed="J320102-2024-001234",
                    ocr=ocr.fields["cert_no"].value if "cert_no" in ocr.fields else None,
                    record="J320102-2024-001234", status=FieldStatus.match, confidence=0.96),
        FieldResult(name="holder_name", claimed="张三", ocr="张三", record="张三",
                    status=FieldStatus.match, confidence=0.93),
        FieldResult(name="registered_on", claimed="2024-01-03", ocr="2024-01-02",
                    record="2024-01-02", status=FieldStatus.mismatch, confidence=0.91),
    ]  # fmt: skip
    bundle.add_json(
        "comparison.json", [f.model_dump(mode="json") for f in fields], kind="comparison"
    )
    verdict = Verdict(
        request_id=rid,
        type="marriage_certificate",
        tier=Tier.robot,
        verdict=VerdictKind.mismatch,
        fields=fields,
        reasons=["The claimed registration date 2024-01-03 differs from the record's 2024-01-02."],
        received_at=received,
        finished_at=utcnow(),
        deadline=received,
        sla_met=True,
        stampless_version="test",
    )
    audit.append("compared", request_id=rid, mismatches=1)
    sealed = bundle.seal(Signer.generate(), verdict=verdict.model_dump(mode="json"))
    audit.append("verdict", request_id=rid, verdict="mismatch")
    audit.append("received", request_id="OTHER-REQUEST")
    return sealed.path, audit_dir, ocr


@pytest.mark.slow
def test_report_is_self_contained(report_bundle) -> None:
    bundle, audit_dir, _ = report_bundle
    html = render_report(bundle, audit_dir=audit_dir)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)
    assert "@import" not in html and "<script src" not in html
    images = re.findall(r'src="data:image/(png|webp);base64,', html)
    assert len(images) >= 4  # overlay, scan, two screenshots
    assert images.count("webp") >= 3  # the overlay and the screenshots, as sealed
    assert "OTHER-REQUEST" not in html  # only this request's audit entries
    assert "seal intact" in html


@pytest.mark.slow
def test_report_in_chromium_shows_fields_screenshots_and_boxes(report_bundle, tmp_path) -> None:
    from playwright.sync_api import expect, sync_playwright

    bundle, audit_dir, ocr = report_bundle
    assert ocr.words, "Tesseract read no words from the certificate"
    out = write_report(bundle, tmp_path / "report.html", audit_dir=audit_dir)
    outside: list[str] = []
    with sync_playwright() as p:
        browser = _launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 1500})
        page.on(
            "request",
            lambda r: None if r.url.startswith(("data:", "file:")) else outside.append(r.url),
        )
        page.goto(out.as_uri())

        expect(page.locator("#verdict-badge")).to_have_text("mismatch")
        table = page.locator("table.fields")
        expect(table).to_be_visible()
        expect(table.locator("tbody tr")).to_have_count(3)
        bad = table.locator("tr.st-mismatch")
        expect(bad).to_have_count(1)
        expect(bad.locator("td").first).to_have_text("registered_on")
        expect(bad.locator("td.diff")).to_have_count(2)  # OCR and record differ from the claim
        red = bad.locator("td.diff").first.evaluate("e => getComputedStyle(e).color")
        assert red == "rgb(180, 35, 24)"

        shots = page.locator("#screenshots figure.shot")
        expect(shots).to_have_count(2)
        for i, caption in enumerate(["Search form filled in", "Record found"]):
            shot = shots.nth(i)
            shot.scroll_into_view_if_needed()
            expect(shot.locator("img")).to_be_visible()
            assert loaded_width(shot.locator("img")) == 900
            expect(shot.locator("figcaption")).to_contain_text(caption)

        boxes = page.locator("#ocr-overlay .box.word")
        expect(boxes).to_have_count(len(ocr.words))
        expect(boxes.first).to_be_visible()
        overlay = page.locator("#ocr-overlay").bounding_box()
        first = boxes.first.bounding_box()
        assert overlay and first
        assert overlay["x"] <= first["x"] <= overlay["x"] + overlay["width"]
        if ocr.fields:
            expect(page.locator("#ocr-overlay .box.field").first).to_be_visible()

        expect(page.locator("#audit tr")).to_have_count(1 + 6)  # header + this request's entries
        expect(page.locator("#dialogs")).to_contain_text("查询成功")

        page.evaluate("window.scrollTo(0, 0)")
        shot_path = tmp_path / "report.png"
        page.screenshot(path=shot_path)
        page.locator("label[for=show-words]").click()
        expect(boxes.first).to_be_hidden()
        browser.close()
    assert outside == []
    if os.environ.get("STAMPLESS_UPDATE_DOCS") or not DOCS_IMG.exists():
        DOCS_IMG.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(shot_path) as im:
            # A 256-colour palette keeps the README picture small without visible loss.
            im.convert("RGB").quantize(colors=256).save(DOCS_IMG, optimize=True)
        assert DOCS_IMG.stat().st_size < 300_000


def test_minimal_and_tampered_bundles_still_render(tmp_path: Path) -> None:
    bundle = EvidenceBundle.open(tmp_path / "evidence", "REQ-MIN")
    bundle.add_json("request.json", {"id": "REQ-MIN"}, kind="request")
    now = utcnow()
    verdict = Verdict(
        request_id="REQ-MIN",
        type="business_license",
        tier=Tier.robot,
        verdict=VerdictKind.error,
        reasons=["The scan could not be read: <script>alert(1)</script>"],
        received_at=now,
        finished_at=now,
        stampless_version="test",
    )
    sealed = bundle.seal(Signer.generate(), verdict=verdict)
    html = render_report(sealed.path, audit_dir=tmp_path / "no-audit-yet")
    assert "No screenshots in this bundle" in html and "No field comparison" in html
    assert "<script>alert(1)</script>" not in html  # autoescaped
    assert "seal intact" in html
    (sealed.path / "request.json").write_text("{}")
    html = render_report(sealed.path)
    assert "seal broken" in html and "request.json" in html


def test_a_near_miss_is_shown_as_one_with_its_reason(tmp_path: Path) -> None:
    bundle = EvidenceBundle.open(tmp_path / "evidence", "REQ-NEAR")
    reason = "The holder name on the scan (张山) nearly matches the record's 张三: compare."
    field = FieldResult(
        name="holder_name", claimed=None, ocr="张山", record="张三",
        status=FieldStatus.near_miss, confidence=0.97, reason=reason,
    )  # fmt: skip
    now = utcnow()
    verdict = Verdict(
        request_id="REQ-NEAR", type="marriage_certificate", tier=Tier.robot,
        verdict=VerdictKind.needs_review, fields=[field], reasons=[reason],
        received_at=now, finished_at=now, stampless_version="test",
    )  # fmt: skip
    html = render_report(bundle.seal(Signer.generate(), verdict=verdict).path)
    assert '<tr class="st-near_miss">' in html
    assert f'title="{reason}">near miss</span>' in html.replace("&#39;", "'")
    assert "unreadable</span>" not in html
