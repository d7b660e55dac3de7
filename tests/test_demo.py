"""What the demo says when its count falls short (the whole run: tests/test_wheel.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from stampless import __version__
from stampless.demo import DemoItem, DemoRow, DemoRun
from stampless.models import Tier, Verdict, VerdictKind
from stampless.verify import Outcome


def row(request_id: str, verdict: VerdictKind, expected: VerdictKind) -> DemoRow:
    now = datetime.now(UTC)
    answer = Verdict(
        request_id=request_id,
        type="marriage_certificate",
        tier=Tier.robot,
        verdict=verdict,
        received_at=now,
        finished_at=now,
        stampless_version=__version__,
    )
    item = DemoItem(Path(f"{request_id}.request.json"), expected.value, "genuine")
    return DemoRow(item, Outcome(answer, destination=None), error=None, report=None)


def run(rows: list[DemoRow], second_opinion: str | None) -> DemoRun:
    return DemoRun(
        rows=rows,
        run_dir=Path("var/demo/x"),
        config_path=Path("var/demo/x/robot.toml"),
        summary=Path("var/demo/x/summary.html"),
        seconds=1.0,
        reviewer_password="-",
        second_opinion=second_opinion,
        hall=[],
    )


GENUINE_TO_REVIEW = [
    row("MC-1", VerdictKind.verified, VerdictKind.verified),
    row("MC-2", VerdictKind.needs_review, VerdictKind.verified),
    row("MC-3", VerdictKind.needs_review, VerdictKind.verified),
    row("SS-4", VerdictKind.needs_review, VerdictKind.needs_review),
]


def test_genuine_certificates_sent_to_a_person_by_tesseract_alone_name_the_extra() -> None:
    advice = run(GENUINE_TO_REVIEW, second_opinion=None).advice
    assert advice is not None
    assert advice.startswith("MC-2, MC-3 went to a person")
    assert "pip install 'rapidocr>=3.10,<4' onnxruntime" in advice


@pytest.mark.parametrize(
    ("rows", "second_opinion"),
    [
        (GENUINE_TO_REVIEW, "rapidocr"),  # the extra was there: nothing to install
        (GENUINE_TO_REVIEW[:1] + GENUINE_TO_REVIEW[3:], None),  # all as expected
        ([row("MC-5", VerdictKind.mismatch, VerdictKind.verified)], None),  # not a doubt
    ],
)
def test_no_advice_when_the_extra_would_not_change_the_count(
    rows: list[DemoRow], second_opinion: str | None
) -> None:
    assert run(rows, second_opinion).advice is None
