"""The session watchdog: when to log in again, and when to stop before an account locks.

Legacy systems end sessions for reasons of their own (idle timeout, "logged in
elsewhere", a restart). The runtime detects it (the robot's ``is_logged_out``: login page
back, session cookie gone, kicked notice) and asks the watchdog for permission to log
in again. The watchdog allows ``max_relogins`` re-logins in a row without a successful
request in between, each after an exponential backoff (``relogin_backoff_s`` × 2ⁿ); past
that it refuses for ``circuit_reset_s`` seconds. A system that keeps logging the robot
out is then reported as a failure instead of being hammered with logins, which is how
service accounts end up locked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from loguru import logger

from stampless.config import SystemConfig
from stampless.errors import SessionLost


class ReloginRefused(SessionLost):
    """Too many re-logins in a row; the watchdog stopped to protect the account."""


@dataclass
class _AccountWatch:
    consecutive: int = 0  # re-logins since the last successful request
    blocked_until: float = 0.0
    logins: int = 0


class Watchdog:
    """Re-login policy of one department system, per account."""

    def __init__(self, system: str, config: SystemConfig) -> None:
        self.system = system
        self.max_relogins = config.max_relogins
        self.backoff_s = config.relogin_backoff_s
        self.cooldown_s = config.circuit_reset_s
        self._accounts: dict[str, _AccountWatch] = {}

    def _watch(self, account: str) -> _AccountWatch:
        return self._accounts.setdefault(account, _AccountWatch())

    def before_login(self, account: str, *, relogin: bool) -> float:
        """Seconds to wait before logging ``account`` in; raises ReloginRefused past the limit.

        ``relogin`` is False for the first login of a session (nothing was lost yet).
        """
        watch = self._watch(account)
        now = time.monotonic()
        if watch.blocked_until > now:
            raise ReloginRefused(
                f"The {self.system} system keeps logging account {account!r} out; stampless "
                f"stopped logging in for {watch.blocked_until - now:.0f} s to avoid locking the "
                "account. Check the account and the system."
            )
        if not relogin:
            return 0.0
        if watch.consecutive >= self.max_relogins:
            watch.blocked_until = now + self.cooldown_s
            watch.consecutive = 0
            logger.error(
                "{}: account {} logged out {} times in a row; re-login paused {:.0f} s",
                self.system,
                account,
                self.max_relogins,
                self.cooldown_s,
            )
            raise ReloginRefused(
                f"The {self.system} system logged account {account!r} out "
                f"{self.max_relogins} times in a row; stampless stopped logging in to avoid "
                "locking the account. Check the account and the system."
            )
        delay = self.backoff_s * (2**watch.consecutive)
        watch.consecutive += 1
        return delay

    def logged_in(self, account: str) -> None:
        self._watch(account).logins += 1

    def succeeded(self, account: str) -> None:
        """A request went through: the session works, the re-login count starts again."""
        self._watch(account).consecutive = 0
