"""Throughput of the queue + workers end to end (not a test; prints figures).

    .venv/bin/python bench/throughput.py [--count 300] [--workers 2] [--rate 60]

Starts the emulated department systems with zero latency, renders a handful of
robot-tier marriage certificates (civil affairs: 3 service accounts) and submits
``--count`` requests that reuse them under distinct ids, at ``--rate`` per minute
(0: all at once), while ``stampless run --workers N`` works in its own process.
Prints requests per minute, p50/p95 latency from submit to the outbox file, and the
share that met the SLA. Targets on 2 cores: >= 60/min, p95 <= 5 s, 100 % within SLA.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from stampless.config import load_config  # noqa: E402
from stampless.fixtures.accounts import fixture_env  # noqa: E402
from stampless.fixtures.harness import FixtureProcess  # noqa: E402
from stampless.fixtures.scans import generate  # noqa: E402
from stampless.intake import Intake  # noqa: E402
from stampless.queue import ItemState, open_queue  # noqa: E402

SEED = 7


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=60.0, help="arrivals per minute; 0 = burst")
    ap.add_argument("--distinct", type=int, default=6, help="distinct scans to render")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="stampless-bench-"))
    var = work / "var"
    env = {**os.environ, **fixture_env(), "OMP_THREAD_LIMIT": "1"}
    env["STAMPLESS__PROJECT__VAR_DIR"] = str(var)
    fixtures = FixtureProcess(args=["--seed", str(SEED), "--latency-ms", "0"])
    fixtures.start()
    runner: subprocess.Popen[str] | None = None
    try:
        for system, url in fixtures.urls.items():
            env[f"STAMPLESS__SYSTEMS__{system.upper()}__URL"] = url
        os.environ.update(env)  # the in-process intake reads the same configuration
        config = load_config(REPO / "robot.toml")
        print(f"rendering {args.distinct} scans ...", flush=True)
        scans = generate(
            work / "scans",
            "marriage_certificate",
            args.distinct,
            SEED + 100,
            "easy",
            0.0,
            0.0,
            records_seed=SEED,
        )
        templates = [json.loads(p.with_suffix(".request.json").read_text()) for p in scans]
        requests = []
        for i in range(args.count):
            body = dict(templates[i % len(templates)])
            body["id"] = f"BENCH-{i:05d}"
            # Beside its scan: intake refuses a scan outside the request's folder.
            body["scan"] = scans[i % len(scans)].name
            path = work / "scans" / f"{body['id']}.json"
            path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
            requests.append(path)

        queue = open_queue(config)
        intake = Intake(config, queue)
        log = (work / "run.log").open("w")
        runner = subprocess.Popen(
            [
                *(sys.executable, "-m", "stampless", "--config", str(REPO / "robot.toml")),
                # --dev: the bench signs with a development key, as the demo does.
                *("run", "--dev", "--workers", str(args.workers), "--no-progress"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        print(f"submitting {args.count} requests at {args.rate or 'burst'}/min ...", flush=True)
        start = time.monotonic()
        gap = 60.0 / args.rate if args.rate > 0 else 0.0
        for i, path in enumerate(requests):
            if gap:
                delay = start + i * gap - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            intake.submit_files([path])
        end_by = time.monotonic() + args.timeout
        while time.monotonic() < end_by:
            counts = queue.counts()
            if counts[ItemState.queued] + counts[ItemState.claimed] == 0:
                break
            if runner.poll() is not None:
                print("the runner stopped early; see", work / "run.log")
                break
            time.sleep(0.5)
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=60)

        # Two clocks: to the outbox file (a final verdict), and to the machine's end of
        # the item (final verdict, or handed to a person in the review store).
        to_outbox: list[float] = []
        to_finish: list[float] = []
        met = 0
        first_received: datetime | None = None
        last_end = 0.0
        outcomes: dict[str, int] = {}
        for item in queue.list(limit=args.count + 10):
            outcomes[item.state.value] = outcomes.get(item.state.value, 0) + 1
            if first_received is None or item.received_at < first_received:
                first_received = item.received_at
            if item.finished_at is None:
                continue
            received = item.received_at.timestamp()
            end = item.finished_at.timestamp()
            verdict_path = config.outbox_dir / f"{item.request_id}.json"
            if verdict_path.exists():
                end = verdict_path.stat().st_mtime
                to_outbox.append(end - received)
            to_finish.append(end - received)
            last_end = max(last_end, end)
            if item.finished_at <= item.deadline:
                met += 1
        assert first_received is not None
        span = max(last_end - first_received.timestamp(), 1e-6)
        print()
        print(f"requests        {args.count} (robot tier, 3 accounts, {args.workers} workers)")
        print(f"arrivals        {args.rate or 'all at once'} per minute")
        print(f"outcomes        {outcomes}")
        print(f"throughput      {len(to_finish) * 60 / span:.1f} per minute")
        print(
            f"to outbox       n={len(to_outbox)} p50 {percentile(to_outbox, 0.5):.2f} s, "
            f"p95 {percentile(to_outbox, 0.95):.2f} s"
        )
        print(
            f"to finish       n={len(to_finish)} p50 {percentile(to_finish, 0.5):.2f} s, "
            f"p95 {percentile(to_finish, 0.95):.2f} s (outbox or review store)"
        )
        print(f"within SLA      {100.0 * met / max(args.count, 1):.1f} %")
        mean = statistics.fmean(to_finish) if to_finish else float("nan")
        print(f"mean latency    {mean:.2f} s")
        return 0
    finally:
        if runner is not None and runner.poll() is None:
            runner.kill()
        fixtures.stop()
        if args.keep:
            print("work folder:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
