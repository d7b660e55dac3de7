"""stampless: robots that verify documents against legacy department web systems.

Robot and task authors import only from this module.
"""

from stampless._version import __version__
from stampless.errors import (
    BrowserError,
    BusinessError,
    ConfigError,
    DepartmentUnavailable,
    ExitCode,
    InputError,
    OcrEngineError,
    RecordNotFound,
    RecordRevoked,
    RobotError,
    SessionLost,
    StamplessError,
    SystemFailure,
)
from stampless.models import (
    FieldResult,
    FieldStatus,
    OcrField,
    OcrResult,
    Record,
    Request,
    Tier,
    Verdict,
    VerdictKind,
)

__all__ = [
    "BrowserError",
    "BusinessError",
    "ConfigError",
    "DepartmentUnavailable",
    "ExitCode",
    "FieldResult",
    "FieldStatus",
    "InputError",
    "OcrEngineError",
    "OcrField",
    "OcrResult",
    "Record",
    "RecordNotFound",
    "RecordRevoked",
    "Request",
    "RobotError",
    "SessionLost",
    "StamplessError",
    "SystemFailure",
    "Tier",
    "Verdict",
    "VerdictKind",
    "__version__",
]
