"""What tests that run commands as a user would need: free ports, a shell's environment."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def free_port_block(n: int) -> int:
    """The first of ``n`` consecutive ports that are free now (RuntimeError if none).

    The block is drawn at random from below the kernel's ephemeral range: a port the
    kernel hands out for port 0 or for an outgoing connection (Chromium's, a client's in
    another test) can be taken by anyone between this check and the server's bind, and a
    fixed start would make two parallel tests meet.
    """
    low = _ephemeral_low()
    if low < 4096:  # a machine that hands out nearly every port: take any unprivileged one
        low = 65536
    for _ in range(200):
        base = random.randrange(max(1024, low - 12000), low - n)
        if all(_bindable(p) for p in range(base, base + n)):
            return base
    raise RuntimeError("no block of free ports")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve the WSGI ``app`` (the reviewer console) from a thread on a free port of
    127.0.0.1 until the block ends; its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def env_after(script: str, cwd: Path, env: dict[str, str]) -> dict[str, str]:
    """The environment a bash started with ``env`` in ``cwd`` has after running ``script``."""
    done = subprocess.run(
        ["bash", "-c", f"{script} && env -0"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return dict(item.split("=", 1) for item in done.stdout.split("\0") if "=" in item)


def readme_commands(readme: str) -> list[str]:
    """The command lines of a README's first ``sh`` block, comments cut off."""
    block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def new_shell_env() -> dict[str, str]:
    """The environment of a new shell: this Python's stampless first on PATH, no stampless
    setting inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAMPLESS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["COLUMNS"] = "200"
    return env


def run_as_written(commands: list[str], cwd: Path, env: dict[str, str]) -> dict[str, str]:
    """Run a README's commands in order in ``cwd``, as a user types them in one shell.

    Only the emulated systems' port differs (a free block, not 8700, so that no two tests
    meet). A line ending in ``&`` runs in the background until all are done; an ``eval``
    line changes the environment of those after it. Each other line must exit 0 without
    a traceback. Returns the environment after the last.
    """
    port = free_port_block(4)
    server: subprocess.Popen[str] | None = None
    try:
        for command in commands:
            line = command.replace(
                "stampless fixtures serve", f"stampless fixtures serve --base-port {port}"
            ).replace("stampless fixtures env", f"stampless fixtures env --base-port {port}")
            if line.endswith("&"):
                server = subprocess.Popen(
                    ["bash", "-c", f"exec {line[:-1]}"],
                    cwd=cwd,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                assert server.stdout is not None
                printed = [next(server.stdout) for _ in range(2)]
                assert printed[1].strip() == "ready", printed
            elif line.startswith("eval "):
                env = env_after(line, cwd, env)
            else:
                done = subprocess.run(
                    ["bash", "-c", line],
                    cwd=cwd,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=240,
                )
                assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-3000:])
                assert "Traceback" not in done.stderr, (line, done.stderr[-3000:])
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
    return env
