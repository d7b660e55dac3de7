"""Throughput with 1, 2 and 4 worker processes on one PostgreSQL queue (not a test).

    .venv/bin/python bench/scale.py [--processes 1 2 4] [--latency-ms 1500] \
        [--accounts 6] [--workers 3] [--count 120]

Slow department systems are where several machines pay: each lookup waits for the
system, not for the CPU. This starts a PostgreSQL server (stampless/fixtures/postgres.py)
and the lookup server of tests/test_worker.py, which answers each lookup after
``--latency-ms`` and logs every access with its account and times. For each process
count it queues ``--count`` claim-only requests (no scan, so no OCR and no browser: the
2 cores measure the coordination), on 2 systems with ``--accounts`` each, and runs that
many ``tests/test_worker.py worker`` processes (each a "machine" with a var/ of its
own, ``--workers`` workers each, the outbox shared) until the queue is empty.

Prints requests per minute per run and the speed-up over one process; checks that no
account served two lookups at once and that every request has one verdict.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "tests"))  # the lookup server and worker script of the tests

from test_worker import LookupServer, enqueue, make_config, no_overlap_per_account  # noqa: E402

from stampless._postgres import connect, migrate  # noqa: E402
from stampless.fixtures.postgres import PostgresServer  # noqa: E402
from stampless.outbox import JOURNAL_DIR  # noqa: E402
from stampless.queue import ItemState, open_queue  # noqa: E402


def run_once(server: PostgresServer, work: Path, processes: int, args: argparse.Namespace) -> float:
    """One run with ``processes`` machines; returns requests per minute."""
    name = f"scale_{processes}"
    url = server.create_database(name)
    with connect(url) as conn:
        migrate(conn)
    os.environ["STAMPLESS_DATABASE_URL"] = url
    run_dir = work / name
    shared = run_dir / "shared" / "outbox"
    config = make_config(
        run_dir / "intake", accounts=args.accounts, postgres=True, outbox=shared, lease_s=15
    )
    queue = open_queue(config)
    sleep_s = args.latency_ms / 1000
    for i in range(args.count):
        system = "civil_affairs" if i % 2 else "market_supervision"
        enqueue(queue, config, f"P{i:04}", system, sleep=sleep_s)
    # A gate, so that no process starts before the others are up: with every account
    # disabled nothing is claimed; enabling them wakes all the workers (NOTIFY) at once.
    gate = [(system, a.name) for system, sc in config.systems.items() for a in sc.accounts]
    for system, account in gate:
        queue.disable_account(system, account, reason="Held shut until every process is up.")
    run_dir.mkdir(parents=True, exist_ok=True)
    lookups = LookupServer(run_dir)
    script = REPO / "tests" / "test_worker.py"
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                "worker",
                str(run_dir / f"machine{n}"),
                lookups.url,
                "--until-empty",
                "--default-lease",
                "--postgres",
                "--outbox",
                str(shared),
                "--accounts",
                str(args.accounts),
                "--workers",
                str(args.workers),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "OMP_THREAD_LIMIT": "1"},
        )
        for n in range(processes)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise SystemExit("a worker process did not start")
        time.sleep(1.0)  # from "ready" to listening
        for system, account in gate:
            queue.enable_account(system, account)
        for p in procs:
            p.wait(timeout=args.timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        entries = lookups.entries()
        lookups.stop()
    items = queue.list(limit=args.count + 1)
    queue.close()
    finished = [i.finished_at.timestamp() for i in items if i.finished_at is not None]
    # From the first lookup to the last verdict: the processes' start-up (imports, a
    # second or more each on a loaded machine) is not what scales.
    span = max(finished) - min(e["start"] for e in entries)
    wall = time.monotonic() - start
    done = sum(1 for i in items if i.state is ItemState.done)
    verdicts = len([p for p in shared.iterdir() if p.name != JOURNAL_DIR])
    peak = no_overlap_per_account(entries)
    rate = len(finished) * 60 / span
    print(
        f"{processes} process(es) x {args.workers} workers: {done}/{args.count} done, "
        f"{verdicts} verdicts, {len(entries)} lookups, peak {peak} at once, "
        f"{span:.1f} s from first lookup to last verdict ({wall:.1f} s wall): "
        f"{rate:.1f} per minute",
        flush=True,
    )
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--latency-ms", type=int, default=1500)
    ap.add_argument("--accounts", type=int, default=6, help="per system (2 systems)")
    ap.add_argument("--workers", type=int, default=3, help="per process")
    ap.add_argument("--count", type=int, default=120)
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stampless-scale-"))
    rates: dict[int, float] = {}
    try:
        with PostgresServer() as server:
            for n in args.processes:
                rates[n] = run_once(server, work, n, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rates.get(min(rates))
    print()
    print(f"accounts {2 * args.accounts}, lookup latency {args.latency_ms} ms, "
          f"{args.count} requests per run")  # fmt: skip
    for n, rate in rates.items():
        print(f"  {n} process(es): {rate:7.1f} per minute, speed-up {rate / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
