"""Processes started together on one var/: how many fail to open the stores (not a test).

    .venv/bin/python bench/concurrent_starts.py [--processes 20] [--rounds 30]
    .venv/bin/python bench/concurrent_starts.py --real [--dev] [--processes 20]

Forks ``--processes`` processes that, ``--rounds`` times each, wait at a barrier, sleep
0-30 ms (processes started together reach this point at slightly different moments),
and open what `stampless run` opens first on a fresh var/: the queue, the review store
and the delivery store. Prints how many opens failed and with what. Issue 14 measured
4 of 20 simultaneous `stampless run` starts lost to "database is locked".

With ``--real``: ``--processes`` real ``stampless run --until-empty`` processes started at
once on one fresh var/ (the repository's robot.toml, the emulated systems' secrets, a
signing key from the environment, or the development key with ``--dev``, which they then
all create at once); prints how many did not exit 0 and their last error line.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from stampless.delivery import Delivery  # noqa: E402
from stampless.queue.sqlite import SqliteQueue  # noqa: E402
from stampless.review.sqlite import SqliteReviewStore  # noqa: E402


def _opener(var: str, rounds: int, barrier: Any, out: Any) -> None:
    errors: list[str] = []
    for n in range(rounds):
        barrier.wait(timeout=120)
        folder = Path(var) / f"round-{n}"
        time.sleep(random.uniform(0, 0.03))
        try:
            queue = SqliteQueue(folder / "queue.db", {"civil_affairs": ["a"]})
            SqliteReviewStore(folder / "queue.db")
            Delivery(folder / "delivery.db", folder / "outbox", url="http://127.0.0.1:9")
            queue.counts()
            queue.close()
        except Exception as exc:
            errors.append(f"{exc.__class__.__name__}: {exc}".split(" (")[0][:80])
    out.put(errors)


def real_starts(processes: int, dev: bool) -> None:
    """``processes`` real `stampless run` processes at once on one fresh var/."""
    from stampless.fixtures.accounts import fixture_env
    from stampless.signing import Signer

    with tempfile.TemporaryDirectory(prefix="stampless-runs-") as tmp:
        env = {
            **os.environ,
            **fixture_env(),
            "OMP_THREAD_LIMIT": "1",
            "STAMPLESS__PROJECT__VAR_DIR": str(Path(tmp) / "var"),
        }
        command = [sys.executable, "-m", "stampless", "--config", str(REPO / "robot.toml")]
        command += ["run", "--until-empty", "--workers", "1", "--no-progress"]
        if dev:
            command.append("--dev")
        else:
            key = Signer.generate().private_b64().reveal()
            env["BENCH_SIGNING_KEY"] = key
            env["STAMPLESS__EVIDENCE__SIGNING_KEY"] = "env:BENCH_SIGNING_KEY"
        started = time.perf_counter()
        procs = [
            subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for _ in range(processes)
        ]
        failed: list[str] = []
        for proc in procs:
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                lines = err.decode(errors="replace").strip().splitlines() or ["(no output)"]
                failed.append(f"exit {proc.returncode}: {lines[-1][:100]}")
        seconds = time.perf_counter() - started
    key = "the development key (--dev)" if dev else "a configured key"
    print(
        f"{processes} `stampless run` started at once on one var/, {key}: "
        f"{len(failed)} failed ({seconds:.1f} s)"
    )
    for what, n in Counter(failed).most_common():
        print(f"  {n:4d}  {what}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--real", action="store_true", help="start real `stampless run` processes")
    ap.add_argument("--dev", action="store_true", help="with --real: the development key")
    args = ap.parse_args(argv)
    if args.real:
        real_starts(args.processes, args.dev)
        return 0
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(args.processes)
    out = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="stampless-starts-") as var:
        started = time.perf_counter()
        procs = [
            ctx.Process(target=_opener, args=(var, args.rounds, barrier, out))
            for _ in range(args.processes)
        ]
        for p in procs:
            p.start()
        errors = [e for _ in procs for e in out.get(timeout=600)]
        for p in procs:
            p.join(timeout=60)
        seconds = time.perf_counter() - started
    opens = args.processes * args.rounds
    print(
        f"{args.processes} processes x {args.rounds} fresh var/ each: "
        f"{len(errors)} of {opens} opens failed ({seconds:.1f} s)"
    )
    for what, n in Counter(errors).most_common():
        print(f"  {n:4d}  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
