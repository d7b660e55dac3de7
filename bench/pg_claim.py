"""Claim latency on the PostgreSQL queue: from an item's NOTIFY to its claim (not a test).

    .venv/bin/python bench/pg_claim.py [--processes 3] [--count 200] [--rate 20]

Starts a PostgreSQL server (stampless/fixtures/postgres.py) and ``--processes`` claimer
processes, each a "machine" idle on :meth:`PostgresQueue.listen` (as a worker pool is).
The bench then queues ``--count`` items, ``--rate`` per second, each stamped with the
time just before its enqueue began (so the figure includes the enqueue's own commit,
which sends the NOTIFY); the first claimer to wake claims it, records the delay and
completes it. Prints p50, p95 and the maximum; the target is p95 <= 50 ms.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from stampless._postgres import connect, migrate  # noqa: E402
from stampless.fixtures.postgres import PostgresServer  # noqa: E402
from stampless.models import Request, Tier, VerdictKind, utcnow  # noqa: E402
from stampless.queue import ItemState  # noqa: E402
from stampless.queue.postgres import PostgresQueue  # noqa: E402

ACCOUNTS = {"civil_affairs": [f"ca{i:02}" for i in range(12)]}


def claimer(url: str, ready: multiprocessing.Queue, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue = PostgresQueue(url, ACCOUNTS)
    woken = threading.Event()
    stop = queue.listen(woken.set)
    ready.put(True)
    delays: list[float] = []
    name = f"claimer-{multiprocessing.current_process().pid}"
    try:
        while True:
            woken.wait(1.0)
            woken.clear()
            while (claim := queue.claim(name, lease_s=30)) is not None:
                if claim.item.request.claim.get("stop"):
                    out.put(delays)
                    return
                delays.append(time.time() - float(claim.item.request.claim["t0"]))
                queue.complete(
                    claim,
                    state=ItemState.done,
                    verdict=VerdictKind.verified,
                    sla_met=True,
                    finished_at=utcnow(),
                )
    finally:
        if stop is not None:
            stop()
        queue.close()


def add(queue: PostgresQueue, rid: str, **claim: object) -> None:
    now = utcnow()
    queue.enqueue(
        Request(id=rid, type="marriage_certificate", claim=claim),
        base_dir=Path("/spool") / rid,
        tier=Tier.robot,
        system="civil_affairs",
        received_at=now,
        deadline=now + timedelta(minutes=3),
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--rate", type=float, default=20.0, help="items queued per second")
    args = ap.parse_args()
    with PostgresServer() as server:
        url = server.create_database("claim_latency")
        with connect(url) as conn:
            migrate(conn)
        queue = PostgresQueue(url, ACCOUNTS)
        ctx = multiprocessing.get_context("spawn")
        ready, out = ctx.Queue(), ctx.Queue()
        procs = [ctx.Process(target=claimer, args=(url, ready, out)) for _ in range(args.processes)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=120)
        time.sleep(1.0)  # every listener has run its LISTEN
        enqueue_s: list[float] = []
        for i in range(args.count):
            t0 = time.time()
            add(queue, f"L{i:05}", t0=t0)
            enqueue_s.append(time.time() - t0)
            time.sleep(max(0.0, 1 / args.rate - (time.time() - t0)))
        for n in range(args.processes):
            add(queue, f"STOP{n}", stop=True)
        delays = [d for _ in procs for d in out.get(timeout=120)]
        for p in procs:
            p.join(timeout=30)
        queue.close()
    ms = [d * 1000 for d in delays]
    print(f"{len(ms)} claims by {args.processes} idle processes, {args.rate:g} items/s queued")
    print(
        f"NOTIFY to claim: p50 {percentile(ms, 0.5):.1f} ms, p95 {percentile(ms, 0.95):.1f} ms, "
        f"max {max(ms):.1f} ms, mean {statistics.fmean(ms):.1f} ms (target p95 <= 50 ms)"
    )
    print(f"enqueue (commit + NOTIFY) alone: p50 {percentile(enqueue_s, 0.5) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
