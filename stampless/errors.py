"""The exceptions of stampless, in two families under one root.

    StamplessError                   every error the framework raises on purpose
    ├── InputError       (exit 2)    bad request, config, image or usage: fix the input
    │   ├── ConfigError              robot.toml or a file it names is wrong
    │   │   └── SecretUnavailable        a secret robot.toml refers to does not resolve
    │   └── RequestConflict          a known request id sent with different content
    ├── BusinessError                final: the document is wrong, becomes a verdict
    │   ├── RecordNotFound           the department system has no such record
    │   └── RecordRevoked            the record exists but is revoked or cancelled
    └── SystemFailure    (exit 4)    retried with backoff, then reported
        ├── RobotError               the robot could not finish (selector, page, dialog)
        │   └── AmbiguousSelector    a selector matched several elements (not retried)
        ├── RobotBug                 the robot's own code raised (TypeError, …): not retried
        ├── LoginRejected            the system refused the account (never retried with it)
        │   └── AccountDisabled      the account was refused before; an operator must clear it
        ├── SessionLost              the system logged us out (re-login, then retry)
        ├── PageChanged              the page navigated while a record was read (retry)
        ├── DepartmentUnavailable    5xx, timeout, connection refused, circuit open
        ├── BrowserError             Chromium missing, crashed or would not start
        └── OcrEngineError           Tesseract missing or crashed

Third-party exceptions (Playwright, pytesseract, PIL) are translated into these at the
module that calls the library, with ``raise ... from exc``. Every message is a sentence a
user can act on; it never contains a secret or a full ID number.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of the CLI (README.md, "Commands")."""

    ok = 0
    not_verified = 1
    bad_input = 2
    manual_review = 3
    system_failure = 4


class StamplessError(Exception):
    """Root of all stampless errors. ``str(exc)`` is the one-line user-facing message."""

    exit_code: ExitCode = ExitCode.system_failure


class InputError(StamplessError):
    """The input is wrong (request, image, arguments). Retrying will not help."""

    exit_code = ExitCode.bad_input


class ConfigError(InputError):
    """robot.toml, or a file it refers to, is missing or invalid."""


class SecretUnavailable(ConfigError):
    """A secret robot.toml refers to cannot be resolved (not set, not in its vault).

    Never retried: no attempt can succeed until an operator sets it. ``run``,
    ``schedule`` and ``verify`` check every reference before they take any work.
    """


class RequestConflict(InputError):
    """A request id that is already known arrived with different content (HTTP 409).

    The id is the idempotency key: the same id with the same content answers the stored
    verdict, and a different claim or scan under a known id is refused, never answered
    with the verdict another request earned.
    """


class BusinessError(StamplessError):
    """A final answer about the document. The pipeline turns it into a verdict."""

    exit_code = ExitCode.not_verified


class RecordNotFound(BusinessError):
    """The department system has no record for the key that was looked up."""


class RecordRevoked(BusinessError):
    """The record exists but has been revoked or cancelled."""


class SystemFailure(StamplessError):
    """Something outside the document failed; the queue retries it with backoff."""

    exit_code = ExitCode.system_failure
    retryable: bool = True


class RobotError(SystemFailure):
    """The robot could not complete its steps (selector not found, unexpected page)."""


class AmbiguousSelector(RobotError):
    """A selector matched more than one element where the robot acts on one.

    Elements are strict, as Playwright's locators are: the map's choice must match one
    element, or the robot says which with ``.first``, ``.last`` or ``.nth(i)``. Not
    retried: the same page gives the same answer.
    """

    retryable = False


class RobotBug(SystemFailure):
    """The robot's own code raised an exception that is not a stampless error.

    A ``TypeError``, ``AttributeError``, ``KeyError``… in a robot is a bug to fix, not a
    failure of the department system: it is not retried, and its message names the
    robot file and line.
    """

    retryable = False
    #: What went wrong where: error, message, file, line, function (for the evidence meta).
    details: dict[str, object] = {}  # noqa: RUF012 - replaced per instance, never mutated


class LoginRejected(RobotError):
    """The system refused the account's credentials. Never retried: retries lock accounts.

    The account is marked unusable in the queue's account table (every worker and
    process skips it) until an operator runs ``stampless accounts enable``; the item
    goes to another account of the system without using an attempt.
    """

    retryable = False


class AccountDisabled(LoginRejected):
    """The account was refused before and is still marked unusable; nothing was sent."""

    exit_code = ExitCode.bad_input


class SessionLost(RobotError):
    """The department system logged the robot out; log in again and retry."""


class PageChanged(RobotError):
    """The page loaded another document while the robot read a record; the lookup is retried.

    Raised instead of returning a record assembled from two versions of a page.
    """


class DepartmentUnavailable(SystemFailure):
    """The department system answered 5xx, timed out or refused the connection."""


class BrowserError(SystemFailure):
    """Chromium could not be found, started, or crashed."""


class OcrEngineError(SystemFailure):
    """The OCR engine is missing or failed on an image."""
