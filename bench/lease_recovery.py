"""How soon a SIGKILLed worker's item is taken up again (not a test).

    .venv/bin/python bench/lease_recovery.py [--kill-after 1 7 13] [--lease-s 15]

For each ``--kill-after`` value: a worker process claims a robot-tier item whose lookup
never ends, and is SIGKILLed that many seconds into it (its heartbeat renewed the lease
meanwhile); a second worker process, started at the kill, takes the item up once the
lease runs out. Prints the seconds from the kill to the second claim and to the verdict,
and the time left before the item's 3-minute deadline. Issue 14 measured a killed
worker's item waiting out a 120 s lease, its robot-tier request escalated 14 s after
its deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from stampless._version import __version__  # noqa: E402
from stampless.circuit import CircuitBreaker  # noqa: E402
from stampless.config import (  # noqa: E402
    AccountConfig,
    Config,
    ProjectConfig,
    QueueConfig,
    SystemConfig,
)
from stampless.intake import Job  # noqa: E402
from stampless.models import Request, Tier, Verdict, VerdictKind, utcnow  # noqa: E402
from stampless.queue import ItemState, open_queue  # noqa: E402
from stampless.review.store import ReviewStore  # noqa: E402
from stampless.worker import WorkerOptions, WorkerPool  # noqa: E402

SYSTEM = "civil_affairs"


def make_config(var: Path, lease_s: float) -> Config:
    """One system with one account; nothing here starts a browser."""
    system = SystemConfig(
        url="http://127.0.0.1:1",
        robot=Path("robots/x.py"),
        selectors=Path("selectors/x.toml"),
        accounts=[AccountConfig(name="a1", username="a1", password="env:UNUSED")],
    )
    config = Config(
        project=ProjectConfig(var_dir=var),
        systems={SYSTEM: system},
        queue=QueueConfig(lease_s=lease_s),
    )
    config.root = var
    return config


class Lookup:
    """The pipeline's stand-in: a lookup that hangs (``hang``) or answers at once."""

    def __init__(self, hang: bool) -> None:
        self.hang = hang

    def _verdict(self, job: Job, kind: VerdictKind, reason: str | None = None) -> Verdict:
        return Verdict(
            request_id=job.id,
            type=job.request.type,
            tier=Tier.robot,
            verdict=kind,
            received_at=job.received_at,
            finished_at=utcnow(),
            deadline=job.deadline,
            attempts=job.attempt,
            reasons=[reason] if reason else [],
            stampless_version=__version__,
        )

    async def process(self, job: Job) -> Verdict:
        if self.hang:
            await asyncio.sleep(3600)
        return self._verdict(job, VerdictKind.verified)

    async def escalate(self, job: Job, *, reason: str) -> Verdict:
        return self._verdict(job, VerdictKind.needs_review, reason)

    async def fail(self, job: Job, *, reason: str) -> Verdict:
        return self._verdict(job, VerdictKind.error, reason)


def _worker_main(var: Path, lease_s: float, hang: bool) -> None:
    config = make_config(var, lease_s)
    queue = open_queue(config)
    options = WorkerOptions.from_config(
        config, progress=False, poll_s=0.1, workers=1, until_empty=not hang
    )
    pool = WorkerPool(
        config,
        queue,
        Lookup(hang),  # type: ignore[arg-type]
        options=options,
        review=ReviewStore.from_config(config),
        circuits=CircuitBreaker.from_config(config),
    )
    asyncio.run(pool.run())


def _spawn(var: Path, lease_s: float, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", str(var), str(lease_s), mode],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_THREAD_LIMIT": "1"},
    )


def _wait(predicate: Any, timeout: float) -> float:
    """Poll ``predicate`` every 20 ms; the monotonic time it first held."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return time.monotonic()
        time.sleep(0.02)
    raise SystemExit(f"timed out after {timeout:.0f} s")


def one_run(kill_after: float, lease_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="lease-bench-") as tmp:
        var = Path(tmp) / "var"
        config = make_config(var, lease_s)
        queue = open_queue(config)
        now = utcnow()
        deadline: datetime = now + timedelta(seconds=config.tiers.sla_seconds(Tier.robot))
        request = Request(id="KILLED-1", type="marriage_certificate", claim={"system": SYSTEM})
        queue.enqueue(
            request,
            base_dir=var / "spool" / request.id,
            tier=Tier.robot,
            system=SYSTEM,
            received_at=now,
            deadline=deadline,
        )

        def state() -> Any:
            return queue.get(request.id)

        first = _spawn(var, lease_s, "hang")
        second = None
        try:
            _wait(lambda: state().state is ItemState.claimed, 60)
            time.sleep(kill_after)
            os.kill(first.pid, signal.SIGKILL)
            killed = time.monotonic()
            first.wait(timeout=10)
            second = _spawn(var, lease_s, "answer")
            reclaimed = _wait(lambda: state().attempts >= 2, lease_s * 4 + 60)
            done = _wait(lambda: state().state is ItemState.done, 60)
            second.wait(timeout=60)
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
        item = state()
        queue.close()
        return {
            "reclaimed_s": reclaimed - killed,
            "done_s": done - killed,
            "before_deadline_s": (item.deadline - item.finished_at).total_seconds(),
            "attempts": item.attempts,
        }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker_main(Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "hang")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-after", type=float, nargs="+", default=[1.0, 7.0, 13.0])
    parser.add_argument("--lease-s", type=float, default=QueueConfig().lease_s)
    args = parser.parse_args()
    print(f"lease {args.lease_s:g} s, renewed every {args.lease_s / 3:g} s")
    print("| killed after | taken up again after | verdict after | left before deadline |")
    print("|---|---|---|---|")
    for after in args.kill_after:
        r = one_run(after, args.lease_s)
        print(
            f"| {after:g} s | {r['reclaimed_s']:.1f} s | {r['done_s']:.1f} s "
            f"| {r['before_deadline_s']:.0f} s (attempts {r['attempts']:.0f}) |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
