"""What operators watch: Prometheus metrics, ``/healthz`` and ``/readyz``.

Every long-running process answers the three paths: the reviewer console (``review
serve``), the HTTP intake (``intake serve``, and the daemon's, ``schedule``) and the
workers with ``run --port``. docs/operations.md lists the metrics.

Two sources:

* the deployment's stores, read at each scrape (so every process shows the same): items
  by state and tier, SLA met and missed, circuit states, selector fallbacks, items
  waiting for a reviewer;
* what this process did since it started: seconds per pipeline stage, the machine's
  decisions by tier and verdict, and from those the OCR straight-through rate (the share
  of robot-tier documents decided without a person). Prometheus sums them over processes.

``/healthz`` answers 200 while the process runs. ``/readyz`` answers 200 when it can take
work (the queue opens, var/ is writable, and the process's own checks hold, such as a
running worker pool), else 503 naming what does not hold.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from loguru import logger
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from stampless.config import Config

# This process's own metrics, in a registry of stampless's (not the library's global one).
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

STAGE_SECONDS = Histogram(
    "stampless_stage_seconds",
    "Seconds a pipeline stage took (lookup, ocr, compare, seal, total).",
    ["stage"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 180, 600),
    registry=REGISTRY,
)
DECISIONS = Counter(
    "stampless_decisions",
    "The machine's decisions by tier and verdict (before a person sees the manual tier).",
    ["tier", "verdict"],
    registry=REGISTRY,
)

# Paths every server answers the same way.
HEALTH_PATHS = ("/healthz", "/readyz", "/metrics")


class DeploymentCollector(Collector):
    """Metrics read from the deployment's stores at each scrape."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def collect(self) -> Iterator[Metric]:
        for family in (self._queue, self._circuits, self._drift, self._review, self._ocr):
            try:
                yield from family()
            except Exception as exc:  # one unreadable store must not hide the others
                logger.warning("metrics: {} skipped ({})", family.__name__, exc)

    def _queue(self) -> Iterator[Metric]:
        from stampless.queue import open_queue

        items = GaugeMetricFamily(
            "stampless_items", "Queue items by state and tier.", labels=["state", "tier"]
        )
        sla = GaugeMetricFamily(
            "stampless_sla_verdicts",
            "Finished items that met or missed their promised time, by tier.",
            labels=["tier", "outcome"],
        )
        queue = open_queue(self.config)
        try:
            met: dict[str, int] = {}
            missed: dict[str, int] = {}
            for row in queue.tally():
                items.add_metric([row.state.value, row.tier.value], row.items)
                met[row.tier.value] = met.get(row.tier.value, 0) + row.sla_met
                missed[row.tier.value] = missed.get(row.tier.value, 0) + row.sla_missed
        finally:
            queue.close()
        for tier in met:
            sla.add_metric([tier, "met"], met[tier])
            sla.add_metric([tier, "missed"], missed[tier])
        yield items
        yield sla

    def _circuits(self) -> Iterator[Metric]:
        from stampless.circuit import CircuitState, read_circuits

        known = read_circuits(self.config)
        family = GaugeMetricFamily(
            "stampless_circuit_state",
            "1 for each department system's current circuit state (closed, open, half_open).",
            labels=["system", "state"],
        )
        for system in sorted(set(self.config.systems) | set(known)):
            current = str(known.get(system, {}).get("state", CircuitState.closed.value))
            for state in CircuitState:
                family.add_metric([system, state.value], float(state.value == current))
        yield family

    def _drift(self) -> Iterator[Metric]:
        from stampless.robot._selectors import drift_summary

        family = GaugeMetricFamily(
            "stampless_selector_fallbacks",
            "Times a selector's first choice failed and a fallback (or nothing) matched.",
            labels=["system"],
        )
        by_system: dict[str, int] = dict.fromkeys(self.config.systems, 0)
        for row in drift_summary(self.config.var_dir):
            by_system[row.system] = by_system.get(row.system, 0) + row.times
        for system, times in sorted(by_system.items()):
            family.add_metric([system], times)
        yield family

    def _review(self) -> Iterator[Metric]:
        from stampless.models import utcnow
        from stampless.review.store import ReviewStore

        store = ReviewStore.existing(self.config)
        if store is None:
            return
        now = utcnow()
        pending = store.pending(now)
        family = GaugeMetricFamily(
            "stampless_review_waiting",
            "Items waiting for a reviewer, overdue or not.",
            labels=["overdue"],
        )
        overdue = sum(item.overdue(now) for item in pending)
        family.add_metric(["true"], overdue)
        family.add_metric(["false"], len(pending) - overdue)
        yield family

    def _ocr(self) -> Iterator[Metric]:
        decided: dict[str, float] = {}
        for metric in DECISIONS.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels.get("tier") == "robot":
                    decided[sample.labels["verdict"]] = sample.value
        total = sum(decided.values())
        if total:
            yield GaugeMetricFamily(
                "stampless_ocr_straight_through_ratio",
                "Share of this process's robot-tier documents decided without a person.",
                value=1 - decided.get("needs_review", 0) / total,
            )


def exposition(config: Config) -> bytes:
    """The Prometheus text of this process and of the deployment ``config`` describes."""
    registry = CollectorRegistry()
    registry.register(_Merged())
    registry.register(DeploymentCollector(config))
    return generate_latest(registry)


class _Merged(Collector):
    """This process's metrics, inside a registry made per scrape with the stores'."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def readiness(
    config: Config, checks: dict[str, Callable[[], bool]] | None = None
) -> dict[str, str]:
    """What keeps this process from taking work (empty when ready): the queue, var/,
    and ``checks`` (name -> holds)."""
    from stampless.queue import open_queue

    problems: dict[str, str] = {}
    try:
        open_queue(config).close()
    except Exception as exc:
        problems["queue"] = f"the queue does not open ({exc.__class__.__name__})"
    try:
        config.var_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=config.var_dir, prefix=".ready-"):
            pass
    except OSError as exc:
        problems["var"] = f"{config.var_dir} is not writable ({exc.strerror})"
    for name, holds in (checks or {}).items():
        try:
            ok = holds()
        except Exception as exc:
            ok, name = False, f"{name} ({exc.__class__.__name__})"
        if not ok:
            problems[name] = f"{name} does not hold"
    return problems


def answer(
    path: str, config: Config, checks: dict[str, Callable[[], bool]] | None = None
) -> tuple[int, str, bytes]:
    """The status, content type and body for one of :data:`HEALTH_PATHS`."""
    route = path.split("?", 1)[0]
    if route == "/metrics":
        return 200, CONTENT_TYPE_LATEST, exposition(config)
    if route == "/healthz":
        return 200, "application/json", b'{"ok": true}'
    problems = readiness(config, checks)
    body = json.dumps({"ready": not problems, "problems": problems}, ensure_ascii=False)
    return (200 if not problems else 503), "application/json", body.encode("utf-8")
