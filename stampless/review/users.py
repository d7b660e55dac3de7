"""Reviewer accounts: argon2 password hashes, roles, and lockout after failed logins.

The accounts live in one JSON file (default ``<var_dir>/review/users.json``, mode 0600)
rewritten atomically under an exclusive lock, so ``review add-user`` and a running
console can change it at the same time. Only hashes are stored, never passwords.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
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


class LoginFailed(InputError):
    """Wrong name or password (the message never says which)."""


class AccountLocked(LoginFailed):
    """Too many failed logins; the account is locked for a while."""


class UserStore:
    """The reviewer accounts file."""

    def __init__(self, path: Path, *, max_failed: int = 5, lockout_minutes: float = 15) -> None:
        self.path = Path(path)
        self.max_failed = max_failed
        self.lockout = timedelta(minutes=lockout_minutes)

    @classmethod
    def from_config(cls, config: Config) -> UserStore:
        rc = config.review
        path = config.path(rc.users_path, "review/users.json")
        return cls(path, max_failed=rc.max_failed_logins, lockout_minutes=rc.lockout_minutes)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, User]]:
        """Read-modify-write under an exclusive lock; changes are written back on exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            users = self._read()
            before = {n: u.model_dump_json() for n, u in users.items()}
            try:
                yield users
            finally:
                # Also when the caller raises: a failed login must still be counted.
                if {n: u.model_dump_json() for n, u in users.items()} != before:
                    self._write(users)
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

    def all(self) -> list[User]:
        """Every account, by name."""
        return sorted(self._read().values(), key=lambda u: u.name)

    def get(self, name: str) -> User | None:
        return self._read().get(name)

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
        with self._locked() as users:
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
        with self._locked() as users:
            if name in users:
                users[name].session_epoch += 1

    def authenticate(self, name: str, password: str) -> User:
        """The account if the password is right; raises LoginFailed or AccountLocked.

        Each failure counts; after ``max_failed`` in a row the account is locked for
        ``lockout_minutes`` (even the right password is refused meanwhile).
        """
        now = utcnow()
        with self._locked() as users:
            user = users.get(name)
            if user is None:
                with contextlib.suppress(VerificationError, InvalidHashError):
                    _hasher.verify(_DUMMY_HASH, password)
                raise LoginFailed("Wrong name or password; try again.")
            if user.locked(now):
                raise AccountLocked(
                    "This account is locked after too many failed logins; try again later "
                    "or ask an administrator."
                )
            try:
                _hasher.verify(user.password_hash, password)
            except (VerificationError, InvalidHashError):
                user.failed += 1
                if user.failed >= self.max_failed:
                    user.locked_until = now + self.lockout
                    user.failed = 0
                    logger.warning("review: account {} locked after failed logins", name)
                    raise AccountLocked(
                        "Too many failed logins: this account is locked for "
                        f"{int(self.lockout.total_seconds() // 60)} minutes."
                    ) from None
                raise LoginFailed("Wrong name or password; try again.") from None
            user.failed = 0
            user.locked_until = None
            if _hasher.check_needs_rehash(user.password_hash):
                user.password_hash = _hasher.hash(password)
            return user
