"""SLA figures from the outbox, drawn as server-side SVG (no chart library, no CDN).

The admin page shows, per tier and per day, how many verdicts met their deadline, how
many missed it, and the median time from receipt to verdict.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from html import escape
from pathlib import Path

from pydantic import ValidationError

from stampless.models import Tier, Verdict, VerdictKind, utcnow

MET_COLOR = "#2e7d32"
MISSED_COLOR = "#c62828"


@dataclass
class SlaCell:
    """The verdicts of one tier on one day."""

    met: int = 0
    missed: int = 0
    seconds: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


@dataclass
class SlaFigures:
    days: list[date]
    cells: dict[Tier, dict[date, SlaCell]]

    def total(self, tier: Tier) -> SlaCell:
        out = SlaCell()
        for cell in self.cells.get(tier, {}).values():
            out.met += cell.met
            out.missed += cell.missed
            out.seconds += cell.seconds
        return out


def read_verdicts(outbox_dir: Path, *, since: datetime) -> list[Verdict]:
    """Final verdicts in the outbox finished since ``since`` (unreadable files skipped)."""
    out: list[Verdict] = []
    if not outbox_dir.is_dir():
        return out
    cutoff = since.timestamp()
    for path in outbox_dir.glob("*.json"):
        try:
            # A file older than the window cannot hold a verdict inside it: files are
            # written once, when the verdict is final.
            if path.stat().st_mtime < cutoff:
                continue
            verdict = Verdict.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            continue
        if verdict.finished_at >= since and verdict.verdict is not VerdictKind.needs_review:
            out.append(verdict)
    return out


def sla_figures(
    verdicts: Iterable[Verdict], *, days: int = 14, today: date | None = None
) -> SlaFigures:
    """Group verdicts by tier and day of finishing (UTC)."""
    today = today or utcnow().date()
    day_list = [today - timedelta(days=i) for i in range(days - 1, -1, -1)]
    cells: dict[Tier, dict[date, SlaCell]] = {t: defaultdict(SlaCell) for t in Tier}
    for v in verdicts:
        day = v.finished_at.date()
        if day < day_list[0] or v.sla_met is None:
            continue
        cell = cells[Tier(v.tier)][day]
        if v.sla_met:
            cell.met += 1
        else:
            cell.missed += 1
        cell.seconds.append((v.finished_at - v.received_at).total_seconds())
    return SlaFigures(day_list, {t: dict(c) for t, c in cells.items()})


def sla_chart_svg(figures: SlaFigures, tier: Tier, *, width: int = 560, height: int = 180) -> str:
    """A stacked bar chart (met below, missed above) per day for one tier, as inline SVG."""
    left, bottom, top = 36, 28, 12
    plot_w, plot_h = width - left - 8, height - bottom - top
    cells = figures.cells.get(tier, {})
    peak = max([c.met + c.missed for c in cells.values()] + [1])
    n = len(figures.days)
    slot = plot_w / max(n, 1)
    bar = max(2.0, slot * 0.7)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
        f"<title>{escape(tier.value)}: verdicts per day, met and missed</title>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 8}" y2="{top + plot_h}" '
        'stroke="#999"/>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" font-size="10">{peak}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" font-size="10">0</text>',
    ]
    for i, day in enumerate(figures.days):
        cell = cells.get(day, SlaCell())
        x = left + i * slot + (slot - bar) / 2
        y = float(top + plot_h)
        for count, color, label in (
            (cell.met, MET_COLOR, "met"),
            (cell.missed, MISSED_COLOR, "missed"),
        ):
            if count:
                h = plot_h * count / peak
                y -= h
                parts.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                    f'fill="{color}"><title>{day.isoformat()}: {count} {label}</title></rect>'
                )
        if n <= 16 or i % 2 == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - 10}" text-anchor="middle" '
                f'font-size="9">{day.strftime("%m-%d")}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def format_seconds(value: float | None, units: tuple[str, str, str] = ("s", "min", "h")) -> str:
    """A duration for people: 4.2 s, 3 min 05 s, 1 h 02 min (``units``: seconds, minutes,
    hours, as the reader's language writes them)."""
    s, m, h = units
    if value is None:
        return "–"
    if value < 60:
        return f"{value:.1f} {s}"
    if value < 3600:
        return f"{int(value // 60)} {m} {int(value % 60):02d} {s}"
    return f"{int(value // 3600)} {h} {int(value % 3600 // 60):02d} {m}"
