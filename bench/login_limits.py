"""What a password guesser gets from the reviewer console (not a test).

    .venv/bin/python bench/login_limits.py [--seconds 20] [--connections 8]

Runs the console (the repository's robot.toml, a fresh var/, six accounts) on a free
port of 127.0.0.1 and, from one address, as issue 14 did:

- guesses one account's password for ``--seconds`` through one connection, then through
  ``--connections`` at once: passwords looked at per second (answers 401; 429 is a
  refusal before the password is looked at);
- sprays four common passwords over every account: the attempt that got the first 429,
  and whether a right password is still looked at afterwards;
- times a refusal for a locked account against one for a wrong password (median of 15).

Issue 14 measured, before: 9.7 failures a second sustained, nothing locked by spraying,
and a locked account answering in 0.00 s against 0.10 s.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from loguru import logger  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from stampless.config import load_config  # noqa: E402
from stampless.review.app import create_app  # noqa: E402
from stampless.review.users import LoginFailed, UserStore  # noqa: E402

ACCOUNTS = {f"user{n}": f"correct-horse-{n}" for n in range(6)}


def start_console(var: Path) -> tuple[str, object]:
    env = {**os.environ, "STAMPLESS__PROJECT__VAR_DIR": str(var)}
    config = load_config(REPO / "robot.toml", environ=env)
    users = UserStore.from_config(config)
    for name, password in ACCOUNTS.items():
        users.add(name, password, "reviewer")
    server = make_server("127.0.0.1", 0, create_app(config), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


def attempt(url: str, name: str, password: str) -> int:
    """One login through the form, CSRF token included; the HTTP status."""
    with httpx.Client(base_url=url, timeout=60) as client:
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
        assert token is not None
        data = {"name": name, "password": password, "csrf_token": token.group(1)}
        return client.post("/login", data=data).status_code


def guessing(url: str, seconds: float, connections: int) -> dict[int, int]:
    """Wrong passwords for user0 from ``connections`` threads; answers by status."""
    counts: dict[int, int] = {}
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def run(k: int) -> None:
        n = 0
        while time.monotonic() < end:
            status = attempt(url, "user0", f"guess-{k}-{n}")
            n += 1
            with lock:
                counts[status] = counts.get(status, 0) + 1

    threads = [threading.Thread(target=run, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def spraying(url: str) -> tuple[int | None, int]:
    """Four passwords over every account: the first 429 (1-based) and then a right one."""
    answers = [
        attempt(url, name, guess)
        for guess in ("123456", "password", "qwerty", "letmein")
        for name in ACCOUNTS
    ]
    first = answers.index(429) + 1 if 429 in answers else None
    return first, attempt(url, "user5", ACCOUNTS["user5"])


def lock_timing(folder: Path, rounds: int = 15) -> tuple[float, float]:
    """Median seconds of a refusal: locked account, and wrong password on an open one."""
    users = UserStore(folder / "users.json", max_failed=3, lockout_minutes=10)
    users.add("locked", "locked-password-1", "reviewer")
    users.add("open", "open-password-1", "reviewer")
    for _ in range(3):
        with contextlib.suppress(LoginFailed):
            users.authenticate("locked", "wrong")

    def timed(name: str) -> float:
        started = time.perf_counter()
        with contextlib.suppress(LoginFailed):
            users.authenticate(name, "wrong")
        took = time.perf_counter() - started
        if name == "open":
            users.authenticate("open", "open-password-1")  # keeps it from locking
        return took

    return (
        statistics.median(timed("locked") for _ in range(rounds)),
        statistics.median(timed("open") for _ in range(rounds)),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    logger.remove()  # the console logs every attempt; only the figures are printed
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="login-bench-") as tmp:
        print("| guesser, one address | attempts | looked at (401) | refused (429) | looked at/s |")
        print("|---|---|---|---|---|")
        for connections in (1, args.connections):
            url, server = start_console(Path(tmp) / f"var-{connections}")
            counts = guessing(url, args.seconds, connections)
            server.shutdown()  # type: ignore[attr-defined]
            looked = counts.get(401, 0)
            print(
                f"| {connections} connection(s), {args.seconds:g} s | {sum(counts.values())} "
                f"| {looked} | {counts.get(429, 0)} | {looked / args.seconds:.2f} |",
                flush=True,
            )
        url, server = start_console(Path(tmp) / "var-spray")
        first, right = spraying(url)
        server.shutdown()  # type: ignore[attr-defined]
        print(
            f"\nspraying 4 passwords over {len(ACCOUNTS)} accounts: first 429 at attempt "
            f"{first}; a right password afterwards answers {right}"
        )
        locked, wrong = lock_timing(Path(tmp))
        print(f"refusal, median of 15: locked account {locked:.3f} s, wrong password {wrong:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
