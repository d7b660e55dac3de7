"""What a robot author writes against: :class:`Robot` and the :class:`Credentials` it gets.

A robot module (``robots/<system>.py``, named in robot.toml) defines ``ROBOT = MyRobot``
where ``MyRobot`` subclasses :class:`Robot`. The runtime creates one instance per system
and calls its coroutines with a :class:`~stampless.robot.RobotPage`; see docs/robots.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from stampless.errors import ConfigError, InputError, LoginRejected, RobotError
from stampless.models import Request

__all__ = [
    "Credentials",
    "JobContext",
    "LoginRejected",
    "Returns",
    "Robot",
    "Submission",
    "declared_returns",
    "operation",
]

#: What a robot operation run by a scheduled job returns: a list of
#: :class:`Submission` (queued through intake, idempotent by request id), a list of
#: :class:`~stampless.Record` (kept as the job's records file), or nothing.
Returns = Literal["requests", "records", "nothing"]
RETURNS: tuple[str, ...] = ("requests", "records", "nothing")
_MARK = "__stampless_returns__"
F = TypeVar("F", bound=Callable[..., Any])


def operation(*, returns: Returns) -> Callable[[F], F]:
    """Mark a robot coroutine as an operation a ``[jobs.X] kind = "robot"`` job may run.

    ``returns`` declares what it gives back; the runtime checks the value against it.
    The method is called as ``await robot.NAME(page, job)`` with the account's
    logged-in page and a :class:`JobContext`.
    """
    if returns not in RETURNS:
        raise ValueError(f"returns must be one of {list(RETURNS)}, not {returns!r}")

    def mark(fn: F) -> F:
        setattr(fn, _MARK, returns)
        return fn

    return mark


def declared_returns(robot: Robot, name: str) -> str | None:
    """What operation ``name`` of ``robot`` declares it returns; None if it is no operation."""
    method = getattr(robot, name, None)
    found = getattr(method, _MARK, None)
    return str(found) if found is not None else None


class Submission(BaseModel):
    """One request an operation hands to intake (``@operation(returns="requests")``).

    ``scan`` is a file the robot downloaded (it is copied out of the evidence and
    becomes the request's scan); ``received_at`` starts the SLA clock (default: when
    intake takes it), e.g. the application's own time on the system it came from.
    """

    model_config = ConfigDict(extra="forbid")

    request: Request
    scan: Path | None = None
    received_at: datetime | None = None


class JobContext(Protocol):
    """What a scheduled job tells the operation it runs."""

    @property
    def name(self) -> str:
        """The job's name in robot.toml (``[jobs.NAME]``)."""
        ...

    def known(self, request_id: str) -> bool:
        """True when a request with this id was already taken in (queued or finished);
        an operation skips the work of submitting it again (downloads included)."""
        ...


if TYPE_CHECKING:
    from stampless.config import AccountConfig, Config
    from stampless.models import Record
    from stampless.robot._page import RobotPage
    from stampless.vault import Secret


class Credentials:
    """One service account's credentials, resolved from the vault only when used.

    ``username`` is plain; ``password`` is a vault ``Secret`` (call ``.reveal()`` only
    to type it, or pass it to ``Element.fill_secret``); ``totp()`` gives the current
    one-time code from the account's TOTP seed. ``repr()`` never shows a secret.
    """

    def __init__(self, account: AccountConfig, config: Config | None = None) -> None:
        self.name = account.name
        self.username = account.username
        self._password_ref = account.password
        self._totp_ref = account.totp
        self._config = config

    # The last TOTP code used per account in this process (codes are one-time on many
    # systems; a Credentials object is made per login, so the memory lives here).
    _used_codes: ClassVar[dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"Credentials(account={self.name!r}, username={self.username!r})"

    @property
    def _last_code(self) -> str | None:
        return self._used_codes.get(f"{self.name}\x1f{self._totp_ref}")

    @_last_code.setter
    def _last_code(self, code: str) -> None:
        self._used_codes[f"{self.name}\x1f{self._totp_ref}"] = code

    @property
    def password(self) -> Secret:
        from stampless.vault import resolve_secret

        return resolve_secret(self._password_ref, config=self._config)

    @property
    def has_totp(self) -> bool:
        return self._totp_ref is not None

    def _totp(self) -> object:
        import pyotp

        if self._totp_ref is None:
            raise ConfigError(
                f"Account {self.name!r} has no 'totp' secret in robot.toml, but its system "
                'asks for a one-time code; add totp = "env:NAME" to the account.'
            )
        from stampless.vault import resolve_secret

        return pyotp.TOTP(resolve_secret(self._totp_ref, config=self._config).reveal())

    def totp(self) -> str:
        """The current 6-digit TOTP code (RFC 6238) from the account's seed in the vault."""
        code: str = self._totp().now()  # type: ignore[attr-defined]
        self._last_code = code
        return code

    async def fresh_totp(self) -> str:
        """A TOTP code this process has not used yet (waits for the next 30 s step if needed).

        Systems commonly refuse a code that was already used once; a re-login soon after a
        login must wait for the next code rather than be refused (and counted as a failure).
        """
        generator = self._totp()
        code: str = generator.now()  # type: ignore[attr-defined]
        while code == self._last_code:
            interval = float(generator.interval)  # type: ignore[attr-defined]
            await asyncio.sleep(interval - time.time() % interval + 0.05)
            code = generator.now()  # type: ignore[attr-defined]
        self._last_code = code
        return code


class Robot:
    """Base class of the robots: subclass it, set ``system``/``version``, write the steps.

    The runtime calls, with the account's logged-in page:

    * ``login(page, creds)`` when the account has no live session;
    * ``is_logged_out(page)`` after navigations and while waiting for an element, to
      tell "the element is missing" from "the system logged us out";
    * ``lookup(page, key) -> Record``; raise :class:`~stampless.RecordNotFound` or
      :class:`~stampless.RecordRevoked` for business outcomes (final, never retried),
      anything else is a system failure and is retried;
    * ``fetch(page, key) -> Path`` to download the archived scan (``page.download``).
    """

    system: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    #: The selector-map name whose presence means "the login page is showing".
    login_marker: ClassVar[str] = "login.form"
    #: The session cookie; when set, its absence also means "logged out".
    session_cookie: ClassVar[str | None] = None

    #: Where the login form is, relative to the system's url.
    login_path: ClassVar[str] = "/login"
    #: The selector of the text that says why a login was refused.
    login_message: ClassVar[str] = "login.error"
    #: Parts of a refusal that a retry can fix (a stale one-time token, a TOTP step edge).
    login_retryable: ClassVar[tuple[str, ...]] = ()

    async def login(self, page: RobotPage, creds: Credentials) -> None:
        """Log the account in. Raise LoginRejected when the system refuses the password.

        The default fills the usual form: selectors ``login.username``,
        ``login.password``, ``login.totp`` (when the account has a TOTP secret) and
        ``login.submit`` on ``login_path``, then :meth:`check_login`. Override it for
        anything else (a certificate prompt, a captcha handed to a person).
        """
        await page.goto(self.login_path)
        await page["login.username"].fill(creds.username)
        await page["login.password"].fill_secret(creds.password)
        if creds.has_totp:
            await page["login.totp"].fill_secret(await creds.fresh_totp())
        await page["login.submit"].click_and_wait()
        await self.check_login(
            page, creds, message=self.login_message, retryable=self.login_retryable
        )

    async def check_login(
        self,
        page: RobotPage,
        creds: Credentials,
        *,
        message: str = "login.error",
        retryable: tuple[str, ...] = (),
    ) -> None:
        """After the login form was submitted: return if it worked, else say why not.

        A refusal whose text (the selector ``message``) contains one of ``retryable``
        (a stale one-time form token, a TOTP code at a step boundary) is a RobotError,
        retried; any other refusal is LoginRejected, which the watchdog never retries,
        so a wrong password cannot walk the account into the system's lockout.
        """
        if not await page[self.login_marker].exists():
            return
        error = (await page[message].inner_text()).strip() if await page[message].exists() else ""
        if any(hint in error for hint in retryable):
            raise RobotError(f"The {self.system} login was refused ({error}); retrying.")
        raise LoginRejected(
            f"The {self.system} system refused the login of {creds.username!r} ({error}); "
            "check the account's credentials in the vault."
        )

    async def is_logged_out(self, page: RobotPage) -> bool:
        """True when the page shows that the session ended (login form, kicked notice)."""
        if self.session_cookie is not None:
            cookies = await page.raw.context.cookies(page.base_url)
            if not any(c.get("name") == self.session_cookie for c in cookies):
                return True
        if self.login_marker in page:
            return await page[self.login_marker].exists()
        return False

    async def lookup(self, page: RobotPage, key: str) -> Record:
        """Find the record of ``key`` and return it as read from the system."""
        raise NotImplementedError(f"{type(self).__name__} must implement lookup()")

    async def fetch(self, page: RobotPage, key: str) -> Path:
        """Download the archived scan of ``key`` into the evidence; return its path.

        Optional: a robot that does not define it makes ``stampless fetch`` a usage error.
        """
        raise InputError(f"The {self.system} robot cannot fetch archived documents.")
