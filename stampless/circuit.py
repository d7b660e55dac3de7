"""A circuit breaker per department system, so a system that is down is not hammered.

closed     requests flow; consecutive failures are counted
open       after ``circuit_failures`` failures in a row: no requests for ``circuit_reset_s``
half_open  after the reset time one trial request is let through; its success closes the
           circuit, its failure opens it again

States are persisted to ``<var_dir>/health/circuits.json`` as
``{system: {"state", "failures", "opened_at"}}`` (written atomically on every change)
so the reviewer console's admin page can show them, and so a restarted worker does not
start by hammering a system that was down a moment ago.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from stampless._files import write_atomic
from stampless.errors import (
    AmbiguousSelector,
    BrowserError,
    LoginRejected,
    OcrEngineError,
    RobotBug,
    SystemFailure,
)
from stampless.models import utcnow

if TYPE_CHECKING:
    from stampless.config import Config

DEFAULT_FAILURES = 5
DEFAULT_RESET_S = 30.0


class CircuitState(StrEnum):
    closed = "closed"
    open = "open"
    half_open = "half_open"


@dataclass
class _Circuit:
    state: CircuitState = CircuitState.closed
    failures: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False


def counts_against_system(exc: BaseException) -> bool:
    """Whether a failure says something about the department system (not about us).

    A refused login is about one account, not the system: the other accounts go on; a
    bug in a robot or an ambiguous selector is about the robot.
    """
    if isinstance(
        exc, BrowserError | OcrEngineError | LoginRejected | RobotBug | AmbiguousSelector
    ):
        return False
    return isinstance(exc, SystemFailure)


class CircuitBreaker:
    """Circuit breakers for every department system: one per process, shared by its
    workers (or by ``stampless verify``'s attempts) and obeyed by its robot runtime.

    Thread-safe. ``allow(system)`` before calling the system, then :meth:`record` the
    outcome. Systems not in robot.toml use the defaults.
    """

    def __init__(
        self,
        health_dir: Path | None,
        *,
        limits: dict[str, tuple[int, float]] | None = None,
        clock: Any = time.time,
    ) -> None:
        self.path = None if health_dir is None else Path(health_dir) / "circuits.json"
        self.limits = dict(limits or {})
        self._clock = clock
        self._lock = threading.Lock()
        self._circuits: dict[str, _Circuit] = {}
        self._load()

    @classmethod
    def from_config(cls, config: Config, *, persist: bool = True) -> CircuitBreaker:
        """The breaker of robot.toml's systems; ``persist`` False: kept in memory only (a
        one-off ``stampless verify`` neither reads nor writes the workers' states)."""
        limits = {
            name: (s.circuit_failures, s.circuit_reset_s) for name, s in config.systems.items()
        }
        return cls(config.var_dir / "health" if persist else None, limits=limits)

    def _limit(self, system: str) -> tuple[int, float]:
        return self.limits.get(system, (DEFAULT_FAILURES, DEFAULT_RESET_S))

    def _load(self) -> None:
        if self.path is None or not self.path.is_file():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            for system, s in data.items():
                self._circuits[system] = _Circuit(
                    state=CircuitState(s["state"]),
                    failures=int(s["failures"]),
                    opened_at=s.get("opened_at"),
                )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A damaged health file must not stop the workers; start closed.
            logger.warning("Ignoring unreadable {}: {}", self.path, exc)
            self._circuits.clear()

    def _save(self) -> None:
        if self.path is None:
            return
        data = {
            name: {"state": c.state.value, "failures": c.failures, "opened_at": c.opened_at}
            for name, c in sorted(self._circuits.items())
        }
        try:
            write_atomic(self.path, json.dumps(data, indent=2))
        except OSError as exc:
            logger.warning("Could not write {}: {}", self.path, exc)

    def state(self, system: str) -> CircuitState:
        """The state now (an open circuit whose reset time has passed reads half_open)."""
        with self._lock:
            c = self._circuits.get(system)
            if c is None:
                return CircuitState.closed
            if c.state is CircuitState.open and self._reset_due(system, c):
                return CircuitState.half_open
            return c.state

    def _reset_due(self, system: str, c: _Circuit) -> bool:
        return c.opened_at is not None and self._clock() - c.opened_at >= self._limit(system)[1]

    def allow(self, system: str) -> bool:
        """True if a request to ``system`` may go ahead now (takes the half-open trial)."""
        with self._lock:
            c = self._circuits.get(system)
            if c is None or c.state is CircuitState.closed:
                return True
            if c.state is CircuitState.open:
                if not self._reset_due(system, c):
                    return False
                c.state = CircuitState.half_open
                c.trial_in_flight = False
                self._save()
            if c.trial_in_flight:
                return False
            c.trial_in_flight = True
            return True

    def is_open(self, system: str) -> bool:
        """Whether ``system`` must get no traffic at all now: open, its reset time not yet due.

        Unlike :meth:`allow` it takes nothing; the runtime asks it before every attempt
        and every login, so an open circuit stops logins too.
        """
        with self._lock:
            c = self._circuits.get(system)
            return c is not None and c.state is CircuitState.open and not self._reset_due(system, c)

    def cancel_trial(self, system: str) -> None:
        """The half-open trial was not run after all (item released); let another try."""
        with self._lock:
            c = self._circuits.get(system)
            if c is not None:
                c.trial_in_flight = False

    def success(self, system: str) -> None:
        with self._lock:
            c = self._circuits.get(system)
            if c is None or (c.state is CircuitState.closed and c.failures == 0):
                return
            if c.state is not CircuitState.closed:
                logger.info("Department system {} answers again; circuit closed.", system)
            self._circuits[system] = _Circuit()
            self._save()

    def failure(self, system: str) -> None:
        with self._lock:
            c = self._circuits.setdefault(system, _Circuit())
            c.failures += 1
            c.trial_in_flight = False
            threshold, reset_s = self._limit(system)
            if c.state is CircuitState.half_open or (
                c.state is CircuitState.closed and c.failures >= threshold
            ):
                c.state = CircuitState.open
                c.opened_at = self._clock()
                logger.warning(
                    "Department system {} failed {} times in a row; circuit open, no requests "
                    "for {:.0f} s.",
                    system,
                    c.failures,
                    reset_s,
                )
            self._save()

    def record(self, system: str, error: BaseException | None, *, deadline: datetime) -> None:
        """How one attempt on ``system`` ended: ``error`` None for success (a business
        outcome, such as no such record, is one).

        A failure at or after the deadline is most likely the deadline cutting the attempt
        short, and a failure about us (:func:`counts_against_system`) says nothing about
        the department system: neither counts, and a half-open trial is given back.
        """
        if error is None:
            self.success(system)
        elif counts_against_system(error) and utcnow() < deadline:
            self.failure(system)
        else:
            self.cancel_trial(system)

    def blocked(self) -> set[str]:
        """Systems that would refuse a request now (open, or half-open with a trial out)."""
        with self._lock:
            return {
                name
                for name, c in self._circuits.items()
                if (c.state is CircuitState.open and not self._reset_due(name, c))
                or (c.state is CircuitState.half_open and c.trial_in_flight)
            }

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """What circuits.json holds, as a dict."""
        with self._lock:
            return {
                n: {"state": c.state.value, "failures": c.failures, "opened_at": c.opened_at}
                for n, c in self._circuits.items()
            }


def read_circuits(config: Config) -> dict[str, dict[str, Any]]:
    """The persisted circuit states (for the admin page); empty if none recorded."""
    path = config.var_dir / "health" / "circuits.json"
    try:
        data: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data
