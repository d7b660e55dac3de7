"""The generator's layouts and faces: every layout prints every field's label and value,
legibly and on the page, in every face; a real OCR pass reads them back."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import replace

import pytest
from PIL import Image

from stampless import normalize as norm
from stampless.doctype import DocumentType, bundled_tasks_dir, load_doctype_file
from stampless.errors import SystemFailure
from stampless.fixtures import fonts
from stampless.fixtures.records import DOC_TYPES
from stampless.fixtures.render import LAYOUTS, Rendering, Style, render
from stampless.fixtures.scans import DRAWN_FIELDS, draw_style, plan_item, split_layouts

TYPES = sorted(DOC_TYPES)


def _doctype(doc_type: str) -> DocumentType:
    return load_doctype_file(bundled_tasks_dir() / f"{doc_type}.py")


def _bare(text: str) -> str:
    return re.sub(r"[\s:：]", "", text)


def _renderings(doc_type: str, items: int) -> Iterator[tuple[Style, Rendering, dict[str, str]]]:
    """Every layout of ``doc_type`` with styles drawn as the splits draw them."""
    for index in range(items):
        item, _ = plan_item(doc_type, 11, index, split="tune")
        for layout in range(len(LAYOUTS[doc_type])):
            style = draw_style(doc_type, random.Random(index * 31 + layout), "heldout", index)
            style = replace(style, layout=layout)
            yield style, render(doc_type, item.fields, style, dpi=120), item.fields


def _inside(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] >= b[0] and a[1] >= b[1] and a[2] <= b[2] and a[3] <= b[3]


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > 1 and min(a[3], b[3]) - max(a[1], b[1]) > 1


@pytest.mark.parametrize("doc_type", TYPES)
def test_every_layout_prints_every_label_and_value(doc_type: str) -> None:
    doc = _doctype(doc_type)
    known = {_bare(label) for spec in doc.fields for label in spec.labels}
    known |= {_bare(label) for label in doc.other_labels}
    seen_layouts = set()
    for style, rendering, fields in _renderings(doc_type, 12):
        seen_layouts.add(rendering.layout)
        where = f"{rendering.layout} {style}"
        labels = [d for d in rendering.drawn if d.kind == "label"]
        # A spaced label is drawn character by character; join them back.
        printed = _bare("".join(d.text for d in labels))
        for spec in doc.fields:
            assert any(_bare(label) in printed for label in spec.labels), (spec.name, where)
        # Labels are the task module's texts (a bilingual one: its Chinese and English).
        if not style.spaced_labels:
            for drawn in labels:
                for part in re.findall(r"[^\x00-\x7f]+|[\x00-\x7f]+", _bare(drawn.text)):
                    assert part in known, (part, where)
        assert set(DRAWN_FIELDS[doc_type]) <= set(rendering.field_boxes), where
        for spec in doc.fields:
            # The value printed where the field's first printing is (a name printed twice,
            # 持证人 and 姓名, is checked there; two months share one line).
            place = rendering.field_boxes[spec.name]
            text = " ".join(
                d.text for d in rendering.drawn if d.kind == "value" and _inside(d.box, place)
            )
            if spec.kind == "month":
                read: str | None = norm.find_months(text)[spec.part]
            else:
                read = norm.normalize(spec.kind, text)
            assert read == norm.normalize(spec.kind, fields[spec.name]), (spec.name, text, where)
        width, height = rendering.image.size
        texts = [d for d in rendering.drawn if d.kind in ("label", "value")]
        for i, a in enumerate(texts):
            x0, y0, x1, y1 = a.box
            assert x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height, (a.text, where)
            for b in texts[i + 1 :]:
                assert not _overlap(a.box, b.box), (a.text, b.text, where)
    assert seen_layouts == set(LAYOUTS[doc_type])
    assert len(LAYOUTS[doc_type]) >= 5


def test_marriage_certificate_prints_both_birth_dates() -> None:
    for style, rendering, fields in _renderings("marriage_certificate", 2):
        births = [
            d.text
            for d in rendering.drawn
            if d.kind == "value" and (d.key or "").endswith("_birth")
        ]
        assert {norm.normalize_date(text) for text in births} == {
            fields["holder_birth"],
            fields["spouse_birth"],
        }, (rendering.layout, style)
        labels = _bare("".join(d.text for d in rendering.drawn if d.kind == "label"))
        assert labels.count("出生日期") == 2, rendering.layout


def test_seal_goes_over_the_field_the_style_names() -> None:
    item, _ = plan_item("marriage_certificate", 7, 4, split="tune")
    for layout in range(len(LAYOUTS["marriage_certificate"])):
        for target in ("cert_no", "holder_id", "spouse_id"):
            style = Style(layout, False, False, False, seal_target=target)
            rendering = render("marriage_certificate", item.fields, style, dpi=100)
            assert rendering.seal_target == target
            field = rendering.field_boxes[target]
            assert _overlap(field, rendering.seal_box), (rendering.layout, target)
            # The seal's red ink is on the field's pixels.
            crop = rendering.image.crop(field).convert("RGB")
            reds = sum(1 for r, g, b in crop.getdata() if r > 180 and g < 150 and b < 150)
            assert reds > 0, (rendering.layout, target)


def test_tune_split_draws_its_layouts_and_six_faces() -> None:
    for doc_type in TYPES:
        layouts, faces = set(), set()
        for index in range(150):
            item, _ = plan_item(doc_type, 3, index, split="tune")
            layouts.add(LAYOUTS[doc_type][item.look.layout])
            faces |= set(item.look.faces)
        assert layouts == set(split_layouts(doc_type, "tune"))
        assert len(layouts) >= 4
        assert faces == set(fonts.TUNE_FACES)
    families = {(fonts.FACES[f].family, fonts.FACES[f].bold) for f in fonts.TUNE_FACES}
    assert families == {(fam, bold) for fam in ("serif", "sans", "kai") for bold in (False, True)}


def test_every_face_has_every_character_the_generator_prints() -> None:
    chars: set[str] = set()
    for doc_type in TYPES:
        for _, rendering, _ in _renderings(doc_type, 3):
            chars |= {ch for d in rendering.drawn for ch in d.text if not ch.isspace()}
    assert len(chars) > 150
    for name in fonts.FACES:
        face = fonts.font(name, 40)
        # A character the face lacks is drawn as its .notdef box, the same as a private-use one.
        notdef = bytes(face.getmask("\ue000"))
        missing = sorted(ch for ch in chars if bytes(face.getmask(ch)) == notdef)
        assert not missing, (name, "".join(missing))


def test_a_missing_font_names_its_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    fonts.font.cache_clear()
    gone = replace(fonts.FACES["kai"], path="/nonexistent/NoSuchKai-Regular.ttf")
    monkeypatch.setitem(fonts.FACES, "kai", gone)
    try:
        with pytest.raises(SystemFailure, match="fonts-lxgw-wenkai"):
            fonts.font("kai", 30)
        assert fonts.missing_packages() == ["fonts-lxgw-wenkai"]
    finally:
        monkeypatch.undo()
        fonts.font.cache_clear()
    assert fonts.missing_packages() == []


def test_makefile_installs_every_font_package() -> None:
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text(encoding="utf-8")
    listed = re.search(r"APT_PACKAGES := ((?:.*\\\n)*.*)", makefile)
    assert listed is not None
    for package in fonts.PACKAGES:
        assert package in listed.group(1).split(), package


@pytest.mark.slow
@pytest.mark.parametrize("doc_type", TYPES)
def test_rapidocr_reads_every_layout_back(doc_type: str) -> None:
    """A real OCR pass on a clean page per layout finds every label and claim value."""
    import numpy as np
    from rapidocr import RapidOCR

    from stampless.fixtures.scans import CLAIM_FIELDS

    engine = RapidOCR(
        params={
            "Global.log_level": "error",
            "EngineConfig.onnxruntime.intra_op_num_threads": 1,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
    )
    doc = _doctype(doc_type)
    item, _ = plan_item(doc_type, 7, 3, split="tune")
    for layout in range(len(LAYOUTS[doc_type])):
        faces = fonts.TUNE_FACES[layout % 6], fonts.TUNE_FACES[(layout + 3) % 6]
        style = Style(
            layout,
            False,
            bool(layout % 2),
            False,
            label_face=faces[0],
            value_face=faces[1],
            colon=("：", ":", "")[layout % 3],
        )
        rendering = render(doc_type, item.fields, style, dpi=150)
        image: Image.Image = rendering.image
        text = _bare("".join(engine(np.asarray(image)).txts))
        missing = [spec.name for spec in doc.fields if not any(lb in text for lb in spec.labels)]
        assert not missing, (rendering.layout, missing, text)
        printed = {d.key: _bare(d.text) for d in rendering.drawn if d.kind == "value" and d.key}
        unread = [f for f in CLAIM_FIELDS[doc_type] if f in printed and printed[f] not in text]
        assert not unread, (rendering.layout, unread, text)
