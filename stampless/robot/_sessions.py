"""Sessions per service account: one browser context each, logged in once, reused.

A context holds one account's cookies; it is created on the first request for the
account (from the saved storage state, when there is one, so a restarted worker need not
log in again), reused for every later request, and recycled after
``browser.recycle_after`` requests to bound Chromium's memory. Storage state (cookies,
local storage) is written to ``<var_dir>/sessions/<system>/<account>.json`` with mode
0600, since it holds live session cookies.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from stampless._files import write_atomic
from stampless.robot._navigation import LEAVING_JS

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext

    from stampless.config import AccountConfig, BrowserConfig, Config, SystemConfig
    from stampless.robot._page import RobotPage


def state_path(var_dir: Path, system: str, account: str) -> Path:
    """Where the storage state of ``account`` on ``system`` is kept."""
    return Path(var_dir) / "sessions" / system / f"{account}.json"


def write_private_json(path: Path, data: Any) -> None:
    """Write JSON atomically with mode 0600 (the folder 0700): it holds session cookies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    write_atomic(path, json.dumps(data), mode=0o600)


@dataclass
class Session:
    """One account's context on one system, and what happened to it."""

    system: str
    account: AccountConfig
    state_file: Path
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    context: BrowserContext | None = None
    page: RobotPage | None = None
    logged_in: bool = False  # believed logged in (confirmed by login or saved state)
    uses: int = 0  # requests served by the current context
    logins: int = 0
    lost: bool = False  # the system ended a session of this account (the next login re-establishes)
    recycles: int = 0
    tracing: bool = False  # traces are enabled for this context
    recording: bool = False  # a trace is being recorded right now

    @property
    def name(self) -> str:
        return self.account.name


def context_options(
    system: SystemConfig, config: BrowserConfig, root: Config | None = None
) -> dict[str, Any]:
    """The options of ``browser.new_context`` for a system, from its robot.toml settings.

    Secret references (the HTTP and proxy passwords, header values written as
    ``env:…``/``file:…``/``keyring:…``) are resolved here, when the context opens.
    """
    from stampless.config import SECRET_SCHEMES
    from stampless.vault import resolve_secret

    def reveal(ref: str) -> str:
        return resolve_secret(ref, config=root).reveal()

    viewport = system.viewport
    options: dict[str, Any] = {
        "viewport": {
            "width": viewport.width if viewport else config.viewport_width,
            "height": viewport.height if viewport else config.viewport_height,
        },
        "accept_downloads": True,
        "locale": system.locale,
        "timezone_id": system.timezone,
        "ignore_https_errors": system.ignore_https_errors,
    }
    if system.user_agent:
        options["user_agent"] = system.user_agent
    if system.extra_http_headers:
        options["extra_http_headers"] = {
            name: reveal(value) if value.startswith(SECRET_SCHEMES) else value
            for name, value in system.extra_http_headers.items()
        }
    if system.http_credentials is not None:
        options["http_credentials"] = {
            "username": system.http_credentials.username,
            "password": reveal(system.http_credentials.password),
        }
    if system.proxy is not None:
        proxy: dict[str, str] = {"server": system.proxy.server}
        if system.proxy.bypass:
            proxy["bypass"] = system.proxy.bypass
        if system.proxy.username:
            proxy["username"] = system.proxy.username
        if system.proxy.password:
            proxy["password"] = reveal(system.proxy.password)
        options["proxy"] = proxy
    return options


async def open_context(
    browser: Browser,
    session: Session,
    config: BrowserConfig,
    system: SystemConfig,
    root: Config | None = None,
) -> BrowserContext:
    """A new context for ``session``, restored from its storage state when there is one."""
    storage: str | None = None
    if session.state_file.is_file():
        storage = str(session.state_file)
    context = await browser.new_context(
        storage_state=storage, **context_options(system, config, root)
    )
    # Every document notes that it has begun to navigate away, for the action's settle.
    await context.add_init_script(LEAVING_JS)
    context.set_default_timeout(config.timeout_ms)
    context.set_default_navigation_timeout(config.navigation_timeout_ms)
    session.context = context
    session.uses = 0
    # A restored state is trusted until the system says otherwise (the watchdog checks).
    session.logged_in = storage is not None
    # Tracing starts and stops around each attempt (runtime._start_trace), never around
    # a login: a trace keeps the network bodies it saw, and a login POST holds the password.
    session.tracing = config.trace != "off"
    logger.debug(
        "{}: context for {} opened ({})",
        session.system,
        session.name,
        "saved state" if storage else "fresh",
    )
    return context


async def save_state(session: Session) -> None:
    """Save the context's cookies and storage so a restart can skip the login."""
    if session.context is None:
        return
    try:
        state = await session.context.storage_state()
    except Exception as exc:  # a closing context has nothing worth saving
        logger.debug("storage state of {} not saved: {}", session.name, type(exc).__name__)
        return
    await asyncio.to_thread(write_private_json, session.state_file, state)


def forget_state(session: Session) -> None:
    """Delete the saved state (after the system logged the account out, it is stale)."""
    session.state_file.unlink(missing_ok=True)


async def close_context(session: Session, *, keep_state: bool = True) -> None:
    """Close the session's context, saving its state first when it is logged in."""
    if session.context is None:
        return
    if keep_state and session.logged_in:
        await save_state(session)
    context, session.context, session.page = session.context, None, None
    session.tracing = session.recording = False
    try:
        await context.close()
    except Exception as exc:  # a crashed browser's contexts are gone already
        logger.debug("closing context of {} failed: {}", session.name, type(exc).__name__)
