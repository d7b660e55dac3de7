"""Reviewer accounts: argon2 password hashes, roles, and limits on failed logins.

The accounts live in one JSON file (default ``<var_dir>/review/users.json``, mode 0600)
rewritten atomically under an exclusive lock, so ``review add-user`` and a running
console can change it at the same time; with ``[store] backend = "postgres"`` they live
in the shared database (``review/postgres.py``), so a reviewer logs in to the console on
any machine. Only hashes are stored, never passwords.

Failed logins are limited twice. Per account (:meth:`UserStore.authenticate`): after
``max_failed`` in a row it is locked for ``lockout_minutes``; a locked account answers
in the same time and with the same words as a wrong password, so neither tells an
attacker which accounts exist or are locked. Per client address (:class:`LoginLimiter`):
after a few failures each further attempt waits twice as long as the last, and an
address that fails on many different names (spraying a few passwords over every
account, which no account's own count notices) is blocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from loguru import logger
from pydantic import BaseModel

from stampless._files import write_atomic
from stampless.errors import InputError
from stampless.models import utcnow

if TYPE_CHECKING:
    from stampless.config import Config

USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIN_PASSWORD = 8

_hasher = PasswordHasher()
# Verifying against a real hash for unknown names keeps their timing like a wrong password.
_DUMMY_HASH = _hasher.hash("not a real password, only for timing")


class Role(StrEnum):
    reviewer = "reviewer"
    admin = "admin"


class User(BaseModel):
    """A console account as stored (the hash never leaves this module's callers' hands)."""

    name: str
    role: Role
    password_hash: str
    created_at: datetime
    failed: int = 0
    locked_until: datetime | None = None
    # Sessions carry the epoch they were made in; bumping it (logout, new password) ends
    # every session of the account, including a cookie copied elsewhere.
    session_epoch: int = 0

    def locked(self, now: datetime | None = None) -> bool:
        return self.locked_until is not None and self.locked_until > (now or utcnow())


# One answer for every refused login: which part was wrong, and whether the account is
# locked, would tell an attacker which names to keep trying.
REFUSED = (
    "Wrong name or password, or the account is locked after too many failed logins; "
    "try again later or ask an administrator."
)


# What a backend's session yields: the accounts read, and how to write them back.
Session = tuple[dict[str, User], Callable[[dict[str, User]], None]]


class LoginFailed(InputError):
    """Wrong name or password, or a locked account (the message never says which)."""


class AccountLocked(LoginFailed):
    """Too many failed logins; the account is locked for a while (same message)."""


class UserStore(ABC):
    """The reviewer accounts; open the deployment's with :meth:`from_config`.

    Backends: :class:`FileUserStore` (a JSON file, the embedded default) and
    ``review/postgres.py``'s (``[store] backend = "postgres"``: every machine's console
    shares the accounts). They provide :meth:`all`, :meth:`get` and :meth:`_session`;
    the rules (names, passwords, lockouts) are written once, here.
    """

    def __init__(self, *, max_failed: int = 5, lockout_minutes: float = 15) -> None:
        self.max_failed = max_failed
        self.lockout = timedelta(minutes=lockout_minutes)

    @classmethod
    def from_config(cls, config: Config) -> UserStore:
        rc = config.review
        limits: dict[str, Any] = {
            "max_failed": rc.max_failed_logins,
            "lockout_minutes": rc.lockout_minutes,
        }
        if config.store.backend == "postgres":
            from stampless._postgres import database_url
            from stampless.review.postgres import PostgresUserStore

            return PostgresUserStore(database_url(config), **limits)
        return FileUserStore(config.path(rc.users_path, "review/users.json"), **limits)

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the accounts are kept, for messages."""

    @abstractmethod
    def all(self) -> list[User]:
        """Every account, by name."""

    @abstractmethod
    def get(self, name: str) -> User | None:
        """The account ``name``, or None."""

    @abstractmethod
    def _session(self, name: str) -> contextlib.AbstractContextManager[Session]:
        """Lock account ``name`` against every other writer (also while it does not exist
        yet) and read it: yields the accounts read (``name``'s, if it exists, and maybe
        others) and the function that writes them back, still under the lock."""

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[dict[str, User]]:
        """Read-modify-write ``name`` under the lock; changes are written back on exit."""
        with self._session(name) as (users, save):
            before = {n: u.model_dump_json() for n, u in users.items()}
            failure: Exception | None = None
            try:
                yield users
            except Exception as exc:
                failure = exc  # a failed login must still be counted: save, then raise
            if {n: u.model_dump_json() for n, u in users.items()} != before:
                save(users)
        if failure is not None:
            raise failure

    def add(self, name: str, password: str, role: Role | str, *, replace: bool = False) -> User:
        """Create an account (or, with ``replace``, set a new password and role)."""
        if not USER_NAME.match(name):
            raise InputError(
                "A reviewer name is 1-64 letters, digits, '.', '_' or '-'; choose another."
            )
        if len(password) < MIN_PASSWORD:
            raise InputError(f"Choose a password of at least {MIN_PASSWORD} characters.")
        try:
            role = Role(role)
        except ValueError:
            raise InputError("The role is 'reviewer' or 'admin'.") from None
        with self._locked(name) as users:
            if name in users and not replace:
                raise InputError(f"Reviewer {name!r} exists already; pass --replace to reset.")
            old = users.get(name)
            user = User(
                name=name,
                role=role,
                password_hash=_hasher.hash(password),
                created_at=utcnow(),
                session_epoch=0 if old is None else old.session_epoch + 1,
            )
            users[name] = user
        logger.info("review: account {} ({}) saved", name, role.value)
        return user

    def end_sessions(self, name: str) -> None:
        """End every console session of ``name`` (on logout)."""
        with self._locked(name) as users:
            if name in users:
                users[name].session_epoch += 1

    def authenticate(self, name: str, password: str) -> User:
        """The account if the password is right; raises LoginFailed or AccountLocked.

        Each failure counts; after ``max_failed`` in a row the account is locked for
        ``lockout_minutes`` (even the right password is refused meanwhile).
        """
        now = utcnow()
        with self._locked(name) as users:
            user = users.get(name)
            if user is None:
                with contextlib.suppress(VerificationError, InvalidHashError):
                    _hasher.verify(_DUMMY_HASH, password)
                raise LoginFailed(REFUSED)
            if user.locked(now):
                # The hash is checked all the same (and the answer ignored): a locked
                # account must take as long as any other refusal.
                with contextlib.suppress(VerificationError, InvalidHashError):
                    _hasher.verify(user.password_hash, password)
                raise AccountLocked(REFUSED)
            try:
                _hasher.verify(user.password_hash, password)
            except (VerificationError, InvalidHashError):
                user.failed += 1
                if user.failed >= self.max_failed:
                    user.locked_until = now + self.lockout
                    user.failed = 0
                    logger.warning("review: account {} locked after failed logins", name)
                    raise AccountLocked(REFUSED) from None
                raise LoginFailed(REFUSED) from None
            user.failed = 0
            user.locked_until = None
            if _hasher.check_needs_rehash(user.password_hash):
                user.password_hash = _hasher.hash(password)
            return user


class FileUserStore(UserStore):
    """The reviewer accounts in one JSON file (mode 0600), rewritten atomically under
    an exclusive lock, so ``review add-user`` and a running console can change it at
    the same time."""

    def __init__(self, path: Path, *, max_failed: int = 5, lockout_minutes: float = 15) -> None:
        super().__init__(max_failed=max_failed, lockout_minutes=lockout_minutes)
        self.path = Path(path)

    @contextlib.contextmanager
    def _session(self, name: str) -> Iterator[Session]:
        # One lock for the whole file: every account is rewritten with it.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._read(), self._write
        finally:
            os.close(fd)

    def _read(self) -> dict[str, User]:
        try:
            data: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{self.path}: the reviewer accounts file is unreadable; restore it from a "
                "backup or remove it and add the accounts again."
            ) from exc
        return {name: User.model_validate(u) for name, u in data.get("users", {}).items()}

    def _write(self, users: dict[str, User]) -> None:
        data = {"users": {n: u.model_dump(mode="json") for n, u in sorted(users.items())}}
        write_atomic(self.path, json.dumps(data, indent=2), mode=0o600)

    @property
    def location(self) -> str:
        return str(self.path)

    def all(self) -> list[User]:
        return sorted(self._read().values(), key=lambda u: u.name)

    def get(self, name: str) -> User | None:
        return self._read().get(name)


@dataclass
class _Client:
    failures: deque[float] = field(default_factory=deque)
    names: dict[str, float] = field(default_factory=dict)
    blocked_until: float = 0.0


class LoginLimiter:
    """Failed logins per client address, in this process (the console is one process).

    After ``free_failures`` failures within ``window_s``, the next attempt waits 1 s
    after the last failure, then 2, 4, ... up to ``backoff_max_s``. An address that fails
    on ``max_names`` different names within the window is blocked for ``block_s``. A
    successful login clears the address's failures if they were all on its own name.
    Thread-safe; an attempt counts from the moment it is admitted (:meth:`admit`), so
    parallel attempts share the limit.
    """

    MAX_CLIENTS = 10_000  # addresses remembered; the idlest are forgotten first

    def __init__(
        self,
        *,
        free_failures: int = 5,
        max_names: int = 5,
        window_s: float = 900.0,
        backoff_max_s: float = 300.0,
        block_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.max_names = max_names
        self.window_s = window_s
        self.backoff_max_s = backoff_max_s
        self.block_s = block_s
        self._clock = clock
        self._clients: dict[str, _Client] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> LoginLimiter:
        rc = config.review
        return cls(
            free_failures=rc.client_free_failures,
            max_names=rc.client_max_usernames,
            backoff_max_s=rc.client_backoff_max_s,
            block_s=rc.lockout_minutes * 60,
            window_s=rc.lockout_minutes * 60,
        )

    def _client(self, address: str, now: float) -> _Client:
        client = self._clients.get(address)
        if client is None:
            if len(self._clients) >= self.MAX_CLIENTS:
                idlest = min(
                    self._clients,
                    key=lambda a: self._clients[a].failures[-1] if self._clients[a].failures else 0,
                )
                del self._clients[idlest]
            client = self._clients[address] = _Client()
        horizon = now - self.window_s
        while client.failures and client.failures[0] < horizon:
            client.failures.popleft()
        client.names = {n: t for n, t in client.names.items() if t >= horizon}
        return client

    def admit(self, address: str) -> float:
        """Let one login attempt from ``address`` through, or say how long to wait.

        Returns 0 when the attempt may go on; it is then counted as a failure already,
        in the same locked step as the check, so attempts sent at once cannot all pass
        while the first ones' passwords are still being checked (report its outcome with
        :meth:`failed` or :meth:`succeeded`). Otherwise returns the seconds to wait, and
        nothing is counted.
        """
        with self._lock:
            now = self._clock()
            client = self._client(address, now)
            wait = client.blocked_until - now
            over = len(client.failures) - self.free_failures
            if over >= 0:
                backoff = min(self.backoff_max_s, 2.0**over)
                wait = max(wait, client.failures[-1] + backoff - now)
            if wait > 0:
                return wait
            client.failures.append(now)
            return 0.0

    def failed(self, address: str, name: str) -> None:
        """An admitted attempt on ``name`` from ``address`` failed (already counted)."""
        with self._lock:
            now = self._clock()
            client = self._client(address, now)
            client.names[name[:64]] = now
            if len(client.names) >= self.max_names and client.blocked_until <= now:
                client.blocked_until = now + self.block_s
                logger.warning(
                    "review: {} failed logins on {} names from {}; address blocked for {:.0f} s",
                    len(client.failures),
                    len(client.names),
                    address,
                    self.block_s,
                )

    def succeeded(self, address: str, name: str) -> None:
        """A successful login of ``name``: it clears the address's failures when they were
        all on ``name`` (a reviewer who mistyped), and otherwise only takes back its own
        count, so a reviewer cannot guess at other accounts between logins to their own.
        A block in force stays."""
        with self._lock:
            client = self._clients.get(address)
            if client is None:
                return
            if set(client.names) <= {name[:64]}:
                client.failures.clear()
                client.names.clear()
            elif client.failures:
                client.failures.pop()
