"""What tests that run commands as a user would need: free ports, a shell's environment."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path


def free_port_block(n: int) -> int:
    """The first of ``n`` consecutive ports that are free now (RuntimeError if none)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no block of free ports")


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
