"""The robot runtime: sessions per account, selector maps, evidence, re-login.

Robot authors use :class:`Robot`, :class:`RobotPage` (with :class:`Element`),
:class:`Credentials` and the errors of :mod:`stampless.errors`; the pipeline uses
:class:`RobotRuntime`. See docs/robots.md.
"""

from stampless.robot._browser import find_chromium
from stampless.robot._evidence import Evidence
from stampless.robot._page import DialogInfo, Element, RobotPage, decode_legacy, translate_error
from stampless.robot._robot import (
    Credentials,
    JobContext,
    LoginRejected,
    Robot,
    Submission,
    operation,
)
from stampless.robot._runtime import RobotRuntime, load_robot
from stampless.robot._selectors import (
    DriftRow,
    SelectorMap,
    SelectorSpec,
    drift_summary,
    load_selector_map,
)
from stampless.robot._watchdog import ReloginRefused, Watchdog

__all__ = [
    "Credentials",
    "DialogInfo",
    "DriftRow",
    "Element",
    "Evidence",
    "JobContext",
    "LoginRejected",
    "ReloginRefused",
    "Robot",
    "RobotPage",
    "RobotRuntime",
    "SelectorMap",
    "SelectorSpec",
    "Submission",
    "Watchdog",
    "decode_legacy",
    "drift_summary",
    "find_chromium",
    "load_robot",
    "load_selector_map",
    "operation",
    "translate_error",
]
