"""RobotRuntime: one browser per process, one logged-in context per account.

The pipeline calls :meth:`RobotRuntime.lookup` and :meth:`RobotRuntime.fetch`. Each call
takes the account's lock (a context is never driven by two coroutines at once), makes
sure the account is logged in (logging in only when it is not), records a trace when
``browser.trace`` asks for one (see ``_traced``), runs the robot once, and sorts the
outcome:

* a :class:`~stampless.BusinessError` (no such record, revoked) is final: re-raised at once;
* :class:`~stampless.SessionLost` (the system logged us out): log in again, as the
  :class:`~stampless.robot._watchdog.Watchdog` allows, and run the step again;
* any other failure is translated into a :class:`~stampless.SystemFailure` (a
  :class:`~stampless.RobotBug` for an exception in the robot's own code), a screenshot
  and the trace go into the evidence, and it is raised.

The runtime does not retry: the caller's one retry layer (:mod:`stampless.retry`: the
queue's workers, ``stampless verify``) decides whether a failure is tried again, within
the request's deadline. Nor does it count failures: it obeys the process's circuit
breaker (``circuits``), which that layer keeps, asking it before every call and every
login, so an open circuit stops all traffic to the system (DepartmentUnavailable).

A refused login (:class:`~stampless.LoginRejected`) is final for that account: it is
marked unusable in the account table (``accounts``, by default the queue's, which every
worker and process reads) and in this process, so no second login is sent with the
same credentials until an operator runs ``stampless accounts enable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from loguru import logger

from stampless._logging import scrub
from stampless.checksums import mask_id
from stampless.errors import (
    AccountDisabled,
    BrowserError,
    BusinessError,
    ConfigError,
    DepartmentUnavailable,
    InputError,
    RecordNotFound,
    RecordRevoked,
    RobotBug,
    SessionLost,
    StamplessError,
)
from stampless.loader import load_attribute
from stampless.models import Record, utcnow
from stampless.robot._browser import launch_browser
from stampless.robot._evidence import Evidence, scrub_zip
from stampless.robot._page import Repairs, RobotPage, SelectorUse, translate_error
from stampless.robot._repair import FingerprintStore
from stampless.robot._robot import (
    Credentials,
    JobContext,
    LoginRejected,
    Robot,
    Submission,
    declared_returns,
)
from stampless.robot._selectors import DriftLog, SelectorMap, load_selector_map
from stampless.robot._sessions import (
    Session,
    close_context,
    forget_state,
    open_context,
    save_state,
    state_path,
)
from stampless.robot._watchdog import ReloginRefused, Watchdog
from stampless.vault import known_secret_values

if TYPE_CHECKING:
    from playwright.async_api import Browser, Playwright

    from stampless.audit import AuditLog
    from stampless.circuit import CircuitBreaker
    from stampless.config import Config, SystemConfig
    from stampless.robot._evidence import BundleLike

T = TypeVar("T")


class AccountBook(Protocol):
    """Where refused accounts are kept for every worker and process (the queue is one)."""

    def disabled_accounts(self, system: str) -> dict[str, str]:
        """The disabled accounts of ``system``: name -> why."""
        ...

    def disable_account(self, system: str, account: str, *, reason: str) -> None:
        """Take the account out of use until an operator enables it again."""
        ...


@dataclass
class _System:
    name: str
    config: SystemConfig
    robot: Robot
    selectors: SelectorMap
    watchdog: Watchdog
    sessions: dict[str, Session]
    usage: dict[str, SelectorUse] = field(default_factory=dict)
    robot_file: Path | None = None


def load_robot(path: Path, system: str) -> Robot:
    """Instantiate the ``ROBOT`` class of the robot module at ``path``."""
    cls = load_attribute(path, "ROBOT")
    if not isinstance(cls, type) or not issubclass(cls, Robot):
        raise ConfigError(
            f"{path}: ROBOT must be a subclass of stampless.Robot (ROBOT = MyRobot), "
            f"got {type(cls).__name__}."
        )
    robot = cls()
    if robot.system and robot.system != system:
        logger.warning(
            "{}: robot says system {!r}, robot.toml says {!r}", path, robot.system, system
        )
    return robot


class RobotRuntime:
    """Drives the department systems' robots for one worker process.

    ``async with RobotRuntime(config) as rt: record = await rt.lookup("civil_affairs", key)``.
    The browser starts on first use; contexts are saved and closed on exit.
    """

    def __init__(
        self,
        config: Config,
        *,
        circuits: CircuitBreaker | None = None,
        accounts: AccountBook | None = None,
        caller_retries: bool = False,
    ) -> None:
        """``circuits``: the process's breaker, obeyed here and kept by the retry layer
        (None: no circuit to obey). ``caller_retries``: the caller tries a failed call
        again (the pipeline's callers do), so with ``browser.trace = "on_failure"`` only
        the retries are recorded; else every call is, as it is the only attempt."""
        self.config = config
        self.caller_retries = caller_retries
        self._systems: dict[str, _System] = {}
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._browser_lock = asyncio.Lock()
        self._drift = DriftLog(config.var_dir)
        self._repairs = Repairs(FingerprintStore(config.var_dir), config.var_dir)
        self._circuits = circuits
        self._accounts = accounts
        self._rejected: dict[tuple[str, str], str] = {}  # refused in this process: why
        self._audit: AuditLog | None = None
        self._counts: dict[str, int] = {
            "lookups": 0,
            "fetches": 0,
            "operations": 0,
            "business_outcomes": 0,
            "failures": 0,
            "relogins": 0,
            "recycles": 0,
            "browser_launches": 0,
        }
        try:
            from stampless.audit import AuditLog

            self._audit = AuditLog(config.audit_dir, rotate_bytes=config.audit.rotate_bytes)
        except ImportError:  # the audit chain is optional for a bare robot run
            self._audit = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> RobotRuntime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Save every logged-in session's state, close contexts, the browser, Playwright."""
        self._drift.flush()
        for system in self._systems.values():
            for session in system.sessions.values():
                async with session.lock:
                    await close_context(session)
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.close()
            self._browser = None
        if self._playwright is not None:
            with contextlib.suppress(Exception):
                await self._playwright.stop()
            self._playwright = None

    async def browser(self) -> Browser:
        """The process's browser, launched on first use and again after a crash."""
        async with self._browser_lock:
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            if self._browser is not None:
                logger.warning("browser disconnected; starting a new one")
                for system in self._systems.values():
                    for session in system.sessions.values():
                        session.context, session.page = None, None
            if self._playwright is None:
                from playwright.async_api import async_playwright

                try:
                    self._playwright = await async_playwright().start()
                except Exception as exc:
                    raise BrowserError(
                        f"Playwright could not start ({type(exc).__name__}); reinstall it with "
                        "'pip install playwright'."
                    ) from exc
            self._browser = await launch_browser(self._playwright, self.config.browser)
            self._counts["browser_launches"] += 1
            return self._browser

    def system(self, name: str) -> _System:
        """The loaded robot, selector map and sessions of system ``name``."""
        found = self._systems.get(name)
        if found is not None:
            return found
        cfg = self.config.system_config(name)
        robot_path = cfg.robot if cfg.robot.is_absolute() else self.config.root / cfg.robot
        map_path = (
            cfg.selectors if cfg.selectors.is_absolute() else self.config.root / cfg.selectors
        )
        robot = load_robot(robot_path, name)
        selectors = load_selector_map(map_path, name)
        sessions = {
            acc.name: Session(name, acc, state_path(self.config.var_dir, name, acc.name))
            for acc in cfg.accounts
        }
        found = _System(
            name, cfg, robot, selectors, Watchdog(name, cfg), sessions, robot_file=robot_path
        )
        self._systems[name] = found
        return found

    # ---- what the pipeline calls ----------------------------------------------------------

    async def lookup(
        self,
        system: str,
        key: str,
        *,
        account: str | None = None,
        evidence: BundleLike | None = None,
        deadline: datetime | None = None,
    ) -> Record:
        """The record of ``key`` on ``system``, read by its robot with ``account``.

        Raises RecordNotFound / RecordRevoked (final) or a SystemFailure (the caller retries).
        """
        self._counts["lookups"] += 1

        async def step(robot: Robot, page: RobotPage) -> Record:
            return await robot.lookup(page, key)

        record = await self._run(system, key, "lookup", step, account, evidence, deadline)
        if not isinstance(record, Record):
            raise ConfigError(
                f"The {system} robot's lookup() returned {type(record).__name__}; "
                "it must return a stampless.Record."
            )
        return record

    @contextlib.asynccontextmanager
    async def page(
        self, system: str, *, account: str | None = None, evidence: BundleLike | None = None
    ) -> AsyncIterator[RobotPage]:
        """The logged-in page of ``account`` (None: the first usable) on ``system``.

        ``async with rt.page("civil_affairs") as page: ...`` holds the account for the
        block, as a lookup does, and logs in first when the account has no live session
        (through the robot's own ``login``). What ``stampless shell`` and the pytest
        plugin's ``robot_page`` fixture use; screenshots go to ``evidence`` when given,
        else under ``<var_dir>/screenshots``.
        """
        found = self.system(system)
        session = self._session(found, account)
        self._gate(found)
        async with session.lock:
            page = await self._ready(found, session, self._evidence(found, evidence), None)
            try:
                yield page
            finally:
                await page.close_popups()

    def _evidence(self, system: _System, bundle: BundleLike | None) -> Evidence:
        return Evidence(
            bundle,
            var_dir=self.config.var_dir,
            selectors=system.selectors,
            request_id=getattr(bundle, "request_id", None),
            audit=self._audit,
        )

    def account_for(self, system: str, account: str | None = None) -> str:
        """The account a call with ``account`` would use (None: the first usable one).

        ConfigError for an account robot.toml does not list, AccountDisabled for one the
        system refused; nothing is started.
        """
        return self._session(self.system(system), account).name

    def require_fetch(self, system: str) -> None:
        """InputError unless the robot of ``system`` has a ``fetch`` of its own.

        Checked before anything starts: a robot without one is a usage error, not a
        failure to retry (no browser, no login, no trace).
        """
        robot = type(self.system(system).robot)
        if robot.fetch is Robot.fetch:
            raise InputError(
                f"The {system} robot ({robot.__name__}) has no fetch(), so it cannot download "
                "archived documents; use 'stampless lookup' for the record, or add fetch() "
                "to the robot."
            )

    async def fetch(
        self,
        system: str,
        key: str,
        *,
        account: str | None = None,
        evidence: BundleLike | None = None,
        deadline: datetime | None = None,
    ) -> Path:
        """Download the archived scan of ``key`` into the evidence; returns the file.

        InputError at once, before any browser or login, when the robot has no ``fetch``.
        """
        self.require_fetch(system)
        self._counts["fetches"] += 1

        async def step(robot: Robot, page: RobotPage) -> Path:
            return await robot.fetch(page, key)

        return await self._run(system, key, "fetch", step, account, evidence, deadline)

    async def operate(
        self,
        system: str,
        name: str,
        job: JobContext,
        *,
        account: str | None = None,
        evidence: BundleLike | None = None,
        deadline: datetime | None = None,
    ) -> list[Submission] | list[Record] | None:
        """Run robot operation ``name`` of ``system`` (a scheduled job's), as a lookup runs.

        The same account lock, login, watchdog, evidence and audit; the value is
        checked against what the operation declares (``@operation(returns=...)``).
        """
        returns = self.require_operation(system, name)
        self._counts["operations"] += 1

        async def step(robot: Robot, page: RobotPage) -> Any:
            return await getattr(robot, name)(page, job)

        result = await self._run(system, name, "operation", step, account, evidence, deadline)
        return _checked_result(system, name, returns, result)

    def require_operation(self, system: str, name: str) -> str:
        """What operation ``name`` of ``system``'s robot returns; ConfigError if it has none."""
        robot = self.system(system).robot
        returns = declared_returns(robot, name)
        if returns is None:
            raise ConfigError(
                f"The {system} robot ({type(robot).__name__}) has no operation {name!r}; mark "
                f"an async method {name}(self, page, job) with @operation(returns=...)."
            )
        return returns

    def stats(self) -> dict[str, Any]:
        """Counters of this runtime: logins per account, lookups, failures, recycles, selectors."""
        logins: dict[str, int] = {}
        selectors: dict[str, dict[str, dict[str, int]]] = {}
        for system in self._systems.values():
            for session in system.sessions.values():
                logins[f"{system.name}/{session.name}"] = session.logins
            selectors[system.name] = {
                name: {
                    **{f"choice{index + 1}": n for index, n in sorted(use.by_index.items())},
                    "failed": use.failures,
                }
                for name, use in system.usage.items()
            }
        recycles = sum(
            s.recycles for sys_ in self._systems.values() for s in sys_.sessions.values()
        )
        return {**self._counts, "recycles": recycles, "logins": logins, "selectors": selectors}

    # ---- the attempt loop ---------------------------------------------------------------

    def _account_book(self) -> AccountBook:
        """The account table every process shares: the queue's, unless one was given."""
        if self._accounts is None:
            from stampless.queue import open_queue

            self._accounts = open_queue(self.config)
        return self._accounts

    def _disabled(self, system: str) -> dict[str, str]:
        """The accounts of ``system`` refused before, here or in another process: name -> why."""
        found = {a: why for (s, a), why in self._rejected.items() if s == system}
        try:
            found.update(self._account_book().disabled_accounts(system))
        except StamplessError as exc:  # this process's memory still holds its own refusals
            logger.warning("the account table could not be read: {}", exc)
        return found

    def _session(self, system: _System, account: str | None) -> Session:
        """The session of ``account`` (None: the first usable one); AccountDisabled if refused."""
        disabled = self._disabled(system.name)
        if account is None:
            usable = [s for name, s in system.sessions.items() if name not in disabled]
            if not usable:
                raise AccountDisabled(
                    f"Every account of {system.name} was refused by the system and is disabled; "
                    "fix the passwords in the vault, then run 'stampless accounts enable "
                    f"{system.name} ACCOUNT'."
                )
            return usable[0]
        if account not in system.sessions:
            known = ", ".join(system.sessions)
            raise ConfigError(
                f"System {system.name!r} has no account {account!r} in robot.toml; it has: {known}."
            )
        if account in disabled:
            raise AccountDisabled(
                f"Account {account!r} of {system.name} is disabled ({disabled[account]}); fix "
                "its password in the vault, then run 'stampless accounts enable "
                f"{system.name} {account}'."
            )
        return system.sessions[account]

    def _reject(self, system: _System, session: Session, error: LoginRejected) -> None:
        """Never send these credentials again: here at once, and in the shared table."""
        reason = str(error)
        self._rejected[(system.name, session.name)] = reason
        try:
            self._account_book().disable_account(system.name, session.name, reason=reason)
        except StamplessError as exc:
            logger.error(
                "account {} could not be marked disabled for others: {}", session.name, exc
            )
        logger.error("{}: account {} disabled: {}", system.name, session.name, reason)
        self._audit_event("account_disabled", None, system=system.name, account=session.name)

    def _gate(self, system: _System) -> None:
        """DepartmentUnavailable while the system's circuit is open: no request, no login."""
        if self._circuits is not None and self._circuits.is_open(system.name):
            raise DepartmentUnavailable(
                f"The {system.name} system failed {system.config.circuit_failures} requests in "
                f"a row; stampless sends it nothing for {system.config.circuit_reset_s:.0f} s "
                "before trying again."
            )

    def _audit_event(self, event: str, request_id: str | None, **data: Any) -> None:
        if self._audit is None:
            return
        try:
            self._audit.append(event, request_id=request_id, **data)
        except Exception as exc:  # evidence of a lookup must not fail the lookup itself
            logger.warning("audit entry {} not written: {}", event, exc)

    async def _run(
        self,
        system_name: str,
        key: str,
        op: str,
        step: Callable[[Robot, RobotPage], Awaitable[T]],
        account: str | None,
        bundle: BundleLike | None,
        deadline: datetime | None,
    ) -> T:
        system = self.system(system_name)
        session = self._session(system, account)
        request_id: str | None = getattr(bundle, "request_id", None)
        self._gate(system)
        if bundle is not None:
            bundle.set_meta(
                system=system.name,
                robot=type(system.robot).__name__,
                robot_version=system.robot.version,
                account=session.name,
                **system.selectors.meta(),
            )
        async with session.lock:
            while True:
                # Every run of the step whose evidence the bundle holds, retries included.
                done = int(getattr(bundle, "meta", {}).get(f"{op}_attempts", 0))
                if bundle is not None:
                    bundle.set_meta(**{f"{op}_attempts": done + 1})
                evidence = self._evidence(system, bundle)
                page: RobotPage | None = None
                started = time.perf_counter()
                try:
                    async with _time_limit(deadline):
                        page = await self._ready(system, session, evidence, deadline)
                        if self._traced(retry=done > 0):
                            await self._start_trace(session, f"{op} {system.name} #{done + 1}")
                        result = await step(system.robot, page)
                except Exception as exc:
                    error = self._classify(system, exc, op)
                    if isinstance(error, BusinessError):
                        await self._end_trace(session, evidence, failed=False)
                        self._succeeded(system, session)
                        self._counts["business_outcomes"] += 1
                        self._audit_event(
                            "looked_up",
                            request_id,
                            system=system.name,
                            account=session.name,
                            key=mask_id(key),
                            outcome=_outcome(error),
                        )
                        logger.info("{} {}: {}", system.name, mask_id(key), _outcome(error))
                        raise
                    await self._failed_attempt(system, session, evidence, page, error)
                    if isinstance(error, SessionLost) and not isinstance(error, ReloginRefused):
                        # Not a failed call: the watchdog bounds how often this happens.
                        session.logged_in = False
                        session.lost = True
                        forget_state(session)
                        self._counts["relogins"] += 1
                        self._gate(system)  # opened meanwhile (by another request): stop here
                        continue
                    self._counts["failures"] += 1
                    raise error from exc
                finally:
                    if page is not None:
                        await page.close_popups()
                await self._end_trace(session, evidence, failed=False)
                self._succeeded(system, session)
                self._audit_event(
                    _EVENTS.get(op, "operated"),
                    request_id,
                    system=system.name,
                    account=session.name,
                    key=mask_id(key),
                    outcome="found",
                    seconds=round(time.perf_counter() - started, 3),
                )
                await self._maybe_recycle(session)
                return result

    def _classify(self, system: _System, exc: BaseException, op: str) -> StamplessError:
        """The stampless error an exception from a robot step means.

        Stampless errors are what they say; an exception raised in the robot's own code
        that is no Playwright error (TypeError, AttributeError, …) is a RobotBug, final,
        with its message and the robot's file and line; anything else is translated at
        the Playwright boundary (:func:`translate_error`).
        """
        if isinstance(exc, StamplessError):
            return exc
        bug = robot_bug(exc, system.name, system.robot_file, self.config.root)
        return bug if bug is not None else translate_error(exc, op)

    def _succeeded(self, system: _System, session: Session) -> None:
        system.watchdog.succeeded(session.name)
        session.uses += 1

    async def _failed_attempt(
        self,
        system: _System,
        session: Session,
        evidence: Evidence,
        page: RobotPage | None,
        error: StamplessError,
    ) -> None:
        """Evidence of a failed attempt: a screenshot and the trace; a crashed browser reset."""
        logger.warning("{} ({}): {}", system.name, session.name, error)
        if isinstance(error, RobotBug):
            evidence.set_meta(robot_bug=error.details)
        if page is not None and not isinstance(error, BrowserError):
            # The window the robot was in when it failed: the newest open popup, if any.
            windows = [p.raw for p in page.popups if not p.raw.is_closed()]
            await evidence.failure_screenshot(
                type(error).__name__ + " - " + str(error)[:80], (windows or [page.raw])[-1]
            )
        await self._end_trace(session, evidence, failed=True)
        if isinstance(error, BrowserError):
            await close_context(session, keep_state=False)

    async def _ready(
        self, system: _System, session: Session, evidence: Evidence, deadline: datetime | None
    ) -> RobotPage:
        """The account's page, with a context and a live login."""
        browser = await self.browser()
        if session.context is None or session.page is None or session.page.raw.is_closed():
            if session.context is not None:
                await close_context(session, keep_state=False)
            context = await open_context(
                browser, session, self.config.browser, system.config, self.config
            )
            raw = await context.new_page()
            session.page = RobotPage(
                raw,
                system=system.name,
                base_url=system.config.url,
                selectors=system.selectors,
                config=self.config.browser,
                drift=self._drift,
                evidence=evidence,
                usage=system.usage,
                repairs=self._repairs,
            )
            robot, page_ref = system.robot, session.page
            session.page.logout_probe = lambda: robot.is_logged_out(page_ref)
        page = session.page
        page._server_error = None  # an error page of an earlier request is not this one's
        page.new_record()  # reads of an earlier attempt are not this one's
        page.evidence = evidence
        evidence.page = page.raw
        page.dialogs.clear()
        if not session.logged_in:
            await self._login(system, session, page, deadline)
        return page

    async def _login(
        self, system: _System, session: Session, page: RobotPage, deadline: datetime | None
    ) -> None:
        # Re-established: this account had a session (logged in here, restored from its
        # saved state, or lost to the system) and is logged in again.
        relogin = session.logins > 0 or session.lost or session.state_file.exists()
        self._gate(system)
        if session.name in self._disabled(system.name):
            raise AccountDisabled(
                f"Account {session.name!r} of {system.name} was refused and is disabled; it is "
                "not logged in again until 'stampless accounts enable' clears it."
            )
        delay = system.watchdog.before_login(session.name, relogin=relogin)
        if delay > 0:
            if deadline is not None:
                delay = min(delay, max(0.0, (deadline - utcnow()).total_seconds() - 1))
            logger.info("{}: logging {} in again after {:.1f} s", system.name, session.name, delay)
            await asyncio.sleep(delay)
        creds = Credentials(session.account, self.config)
        page.probing = False
        page._typed_secrets.clear()
        tracing = await self._start_login_trace(session, system.name)
        try:
            await system.robot.login(page, creds)
            page._raise_if_unhealthy()
            if await system.robot.is_logged_out(page):
                raise LoginRejected(
                    f"The {system.name} system did not accept the login of account "
                    f"{session.name!r}; check its password in the vault (not retried, so the "
                    "account does not lock)."
                )
        except Exception as exc:
            # What the robot author needs to see: the page as the login left it, and the
            # login's trace with every value it typed taken out.
            error = self._classify(system, exc, "logging in")
            await page.evidence.failure_screenshot(
                f"login failed - {type(error).__name__} - {str(error)[:80]}", page.raw
            )
            if tracing:
                await self._stop_login_trace(session, page, keep=True)
            if isinstance(error, LoginRejected):
                self._reject(system, session, error)
            if error is exc:
                raise
            raise error from exc
        else:
            if tracing:
                await self._stop_login_trace(session, page, keep=False)
        finally:
            page.probing = True
            await page.clear_passwords()
        session.logged_in = True
        session.logins += 1
        system.watchdog.logged_in(session.name)
        await save_state(session)
        self._audit_event(
            "logged_in",
            page.evidence.request_id,
            system=system.name,
            account=session.name,
            relogin=relogin,
        )
        logger.info("{}: account {} logged in", system.name, session.name)

    async def _maybe_recycle(self, session: Session) -> None:
        if session.uses >= self.config.browser.recycle_after:
            await close_context(session, keep_state=True)
            session.recycles += 1
            logger.debug("{}: context of {} recycled", session.system, session.name)

    # ---- traces -------------------------------------------------------------------------

    async def _start_login_trace(self, session: Session, system: str) -> bool:
        """Record the login, to keep only if it fails (then with its secrets scrubbed)."""
        if not session.tracing or session.context is None or session.recording:
            return False
        try:
            await session.context.tracing.start(
                title=f"login {system} {session.name}",
                snapshots=True,
                screenshots=False,
                sources=False,
            )
        except Exception as exc:  # a trace is evidence, never a reason to fail a login
            logger.debug("login trace not started: {}", type(exc).__name__)
            return False
        return True

    async def _stop_login_trace(self, session: Session, page: RobotPage, *, keep: bool) -> None:
        """Stop the login's trace; a failed login's is kept, every typed secret removed.

        The trace holds what the login typed (the action log, the DOM snapshots, the
        POST body): each value ``fill_secret`` typed, and every secret the vault resolved
        in this process, is replaced in every file of the zip before it is kept.
        """
        secrets = page._typed_secrets | known_secret_values()
        await self._stop_trace(session, page.evidence, "login-trace.zip" if keep else None, secrets)

    async def _stop_trace(
        self,
        session: Session,
        evidence: Evidence,
        name: str | None,
        secrets: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        """Stop the context's recording; keep it in the evidence as ``name`` unless None."""
        if session.context is None:
            return
        try:
            if name is None:
                await session.context.tracing.stop()
                return
            target = evidence.file_path(name)
            await session.context.tracing.stop(path=str(target))
            if secrets:
                await asyncio.to_thread(scrub_zip, target, secrets)
        except Exception as exc:
            # No recording was running (the attempt failed before it started) or the
            # browser is gone: there is no trace to keep.
            logger.debug("trace {} not kept: {}", name, type(exc).__name__)
            return
        if evidence.bundle is not None:
            evidence.bundle.note_file(evidence._bundle_name(target), kind="trace")
        logger.info("trace kept: {} (open with 'playwright show-trace')", target.name)

    def _traced(self, *, retry: bool) -> bool:
        """Whether this call is recorded as a Playwright trace.

        ``always``: every call. ``on_failure``: a retry (the evidence holds an earlier
        attempt), and every call of a runtime whose caller does not retry: recording DOM
        snapshots costs about 15% of a lookup, and a failure that is retried is likely to
        fail again, so the trace kept with a failed request is that of its last, failing
        attempt, while the first attempt of the healthy majority of requests runs at
        full speed.
        """
        mode = self.config.browser.trace
        if mode == "always" or self.config.evidence.keep_trace_on_success:
            return True
        return mode == "on_failure" and (retry or not self.caller_retries)

    async def _start_trace(self, session: Session, title: str) -> None:
        """Record this attempt's trace (DOM snapshots and network, no screencast).

        A whole trace per attempt rather than chunks of one long recording: chunks carry
        network entries from between them, which would include the login's POST body.
        """
        if session.tracing and session.context is not None:
            await session.context.tracing.start(
                title=title, snapshots=True, screenshots=False, sources=False
            )
            session.recording = True

    async def _end_trace(self, session: Session, evidence: Evidence, *, failed: bool) -> None:
        """Stop the attempt's trace; keep it on failure (or always, if configured)."""
        if not session.recording or session.context is None:
            return
        session.recording = False
        mode = self.config.browser.trace
        keep = (
            (failed and mode != "off")
            or mode == "always"
            or self.config.evidence.keep_trace_on_success
        )
        await self._stop_trace(session, evidence, "trace.zip" if keep else None)


# The audit event of a successful step; a scheduled job's operation is "operated".
_EVENTS = {"lookup": "looked_up", "fetch": "fetched"}


def _outcome(error: BaseException) -> str:
    if isinstance(error, RecordNotFound):
        return "not_found"
    if isinstance(error, RecordRevoked):
        return "revoked"
    return type(error).__name__


@contextlib.asynccontextmanager
async def _time_limit(deadline: datetime | None) -> AsyncIterator[None]:
    """Cancel the attempt when the request's deadline passes."""
    if deadline is None:
        yield
        return
    remaining = (deadline - utcnow()).total_seconds()
    if remaining <= 0:
        raise DepartmentUnavailable("The request's deadline passed before the robot could start.")
    try:
        async with asyncio.timeout(remaining):
            yield
    except TimeoutError as exc:
        raise DepartmentUnavailable(
            "The robot did not finish before the request's deadline; it is reported as failed."
        ) from exc


def _checked_result(
    system: str, name: str, returns: str, result: Any
) -> list[Submission] | list[Record] | None:
    """The operation's value if it is what it declared, else a ConfigError that says so."""
    wanted: type[Submission] | type[Record]
    if returns == "requests":
        wanted = Submission
    elif returns == "records":
        wanted = Record
    else:
        if result is not None:
            raise ConfigError(
                f"The {system} robot's operation {name} declares returns='nothing' but returned "
                f"{type(result).__name__}; return None or declare what it returns."
            )
        return None
    if not isinstance(result, list | tuple) or not all(isinstance(r, wanted) for r in result):
        raise ConfigError(
            f"The {system} robot's operation {name} declares returns={returns!r}, so it must "
            f"return a list of stampless.{wanted.__name__}; it returned {type(result).__name__}."
        )
    return list(result)


def robot_bug(
    exc: BaseException, system: str, robot_file: Path | None, root: Path | None = None
) -> RobotBug | None:
    """A :class:`RobotBug` for an exception raised in the robot's own code, else None.

    Robot code is the robot file and the files beside it (helpers it imports); Playwright
    errors and timeouts are not bugs, they are translated at the boundary instead.
    """
    from playwright.async_api import Error as PlaywrightError

    if robot_file is None or isinstance(exc, PlaywrightError | TimeoutError):
        return None
    folder = Path(robot_file).resolve().parent
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if Path(frame.filename).resolve().parent == folder
    ]
    if not frames:
        return None
    where = frames[-1]
    path = Path(where.filename).resolve()
    shown = path
    if root is not None and path.is_relative_to(Path(root).resolve()):
        shown = path.relative_to(Path(root).resolve())
    text = scrub(" ".join(str(exc).split()))[:300] or "(no message)"
    bug = RobotBug(
        f"The {system} robot has a bug: {type(exc).__name__}: {text} ({shown}, line "
        f"{where.lineno}, in {where.name}); fix the robot (a bug is not retried)."
    )
    bug.details = {
        "error": type(exc).__name__,
        "message": text,
        "file": str(shown),
        "line": where.lineno,
        "function": where.name,
    }
    return bug
