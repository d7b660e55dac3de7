"""The typed data that flows between stages (README.md, "What it is").

Every stage takes and returns these pydantic models, so any stage can run alone and
the formats on disk (request, verdict) are validated in one place.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


MAX_REQUEST_BYTES = 1024 * 1024
MAX_PATH_CHARS = 1024  # stampless.boundary checks each part of a file name too
PRIORITY_LIMIT = 1_000_000
RESERVED_ID_PREFIX = "audit-checkpoint-"  # outbox names of stampless.audit's checkpoints


def describe_validation_error(exc: ValidationError) -> str:
    """One sentence for the first problem pydantic found (and how many more there are)."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "missing":
        text = f"field '{where}' is required but missing."
    elif first["type"] == "extra_forbidden":
        text = f"field '{where}' is not allowed here."
    else:
        text = f"field '{where}': {first['msg']}."
    if len(errors) > 1:
        text += f" ({len(errors) - 1} more problem(s).)"
    return text


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (every timestamp stampless writes)."""
    return datetime.now(UTC)


def check_request_id(value: str) -> str:
    """Validate an idempotency key: it becomes a file name, so no path tricks."""
    if not REQUEST_ID_PATTERN.match(value) or ".." in value:
        raise ValueError(
            "an id may hold only letters, digits, '-', '_' and '.', start with a letter or "
            "digit, contain no '..', and be at most 128 characters"
        )
    return value


def check_outbox_name(value: str) -> str:
    """A request or case id: a safe file name (:func:`check_request_id`) that is not one
    of the names the outbox keeps for itself (its audit checkpoints)."""
    if value.lower().startswith(RESERVED_ID_PREFIX):
        raise ValueError(
            f"ids starting with {RESERVED_ID_PREFIX!r} are reserved for the outbox's audit "
            "checkpoints; choose another id"
        )
    return check_request_id(value)


RequestId = Annotated[str, Field(min_length=1, max_length=128)]
# Strict: ``true`` is not 1, and 2**70 is refused here instead of overflowing SQLite.
Priority = Annotated[int, Field(ge=-PRIORITY_LIMIT, le=PRIORITY_LIMIT, strict=True)]


class Tier(StrEnum):
    instant = "instant"
    robot = "robot"
    manual = "manual"


class VerdictKind(StrEnum):
    verified = "verified"
    mismatch = "mismatch"
    not_found = "not_found"
    needs_review = "needs_review"
    error = "error"


class FieldStatus(StrEnum):
    match = "match"
    mismatch = "mismatch"
    unreadable = "unreadable"
    # Read confidently (or typed) and one slip away from the record: an OCR slip and an
    # altered character look the same, so a person decides; never "unreadable".
    near_miss = "near_miss"
    missing = "missing"


class Request(BaseModel):
    """One verification request (docs/json.md, "A request"). ``id`` is the idempotency key."""

    model_config = ConfigDict(extra="forbid")

    id: RequestId
    type: str = Field(min_length=1, max_length=64)
    claim: dict[str, Any]
    scan: str | None = Field(default=None, min_length=1, max_length=MAX_PATH_CHARS)
    ecert: str | None = Field(default=None, min_length=1, max_length=MAX_PATH_CHARS)
    # No scan: the department's archived certificate is fetched and verified instead (the
    # materials exemption: the applicant need not bring what a department holds).
    fetch: bool = False
    priority: Priority = 0
    case_id: str | None = None

    @field_validator("id")
    @classmethod
    def _id_is_safe(cls, value: str) -> str:
        return check_outbox_name(value)

    @field_validator("case_id")
    @classmethod
    def _case_id_is_safe(cls, value: str | None) -> str | None:
        return None if value is None else check_outbox_name(value)

    @classmethod
    def from_file(cls, path: Path) -> Request:
        """Read and validate a request JSON file; InputError names the file and the problem."""
        from stampless._files import read_json_file
        from stampless.errors import InputError

        data = read_json_file(path, max_bytes=MAX_REQUEST_BYTES)
        if not isinstance(data, dict):
            raise InputError(f"{path}: a request is a JSON object with id, type and claim.")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InputError(f"{path}: {describe_validation_error(exc)}") from None

    def scan_path(self, base: Path) -> Path | None:
        """The scan as a path, relative to ``base`` (the request file's folder) if not absolute."""
        if self.scan is None:
            return None
        path = Path(self.scan)
        return path if path.is_absolute() else base / path

    def ecert_path(self, base: Path) -> Path | None:
        """The electronic certificate file, resolved like ``scan``."""
        if self.ecert is None:
            return None
        path = Path(self.ecert)
        return path if path.is_absolute() else base / path


class CheckStatus(StrEnum):
    """How the image of a field relates to the department's value (stampless.ocr.verify)."""

    supported = "supported"  # the image supports the record's value, with a clear margin
    contradicted = "contradicted"  # the image supports another value, with a clear margin
    uncertain = "uncertain"  # in between: a person looks
    unavailable = "unavailable"  # nothing to score (no image of the field, unknown characters)


class FieldCheck(BaseModel):
    """A field verified against the record: the scores behind its status.

    ``margin`` is the log-odds, in nats, of the record's value against the best string
    the image supports that is not the record's value (positive: the record's value is
    the likelier reading). ``record_form`` is the printed form of the record's value that
    was scored ("2024年01月02日" for 2024-01-02), ``best_other`` that best other string.
    """

    status: CheckStatus
    margin: float | None = None
    record_form: str | None = None
    best_other: str | None = None
    second_reader: str | None = None  # what the second reader (Tesseract) read, if asked
    # The margins of the value cropped apart and read again, when the line's own was in
    # doubt (stampless.ocr.verify); ``margin`` is then their sum with the line's.
    views: list[float] | None = None
    reason: str = ""


class OcrField(BaseModel):
    """One field read from a scan.

    ``source`` names the step (and label) that set the value ("ppocr:label:持证人",
    "tesseract:second-reader"); ``spans`` are the ``(line, start, end)`` characters of
    :attr:`OcrResult.lines` it was read from; ``check`` is filled in once the record is
    known (:func:`stampless.ocr.verify_fields`).
    """

    value: str | None
    confidence: float = Field(ge=0.0, le=1.0)
    valid: bool
    raw: str | None = None
    box: tuple[int, int, int, int] | None = None  # left, top, width, height in the read image
    source: str | None = None
    spans: list[tuple[int, int, int]] = []
    ambiguous: bool = False  # its label may be another person's (one of two 姓名 unread)
    second_value: str | None = None  # what the second reader read, when it was asked
    check: FieldCheck | None = None


class OcrWord(BaseModel):
    text: str
    confidence: float
    box: tuple[int, int, int, int]


class OcrLine(BaseModel):
    """A text line as the detector found and the recognizer read it."""

    text: str
    confidence: float
    quad: tuple[tuple[float, float], ...]  # corners, clockwise from top-left, read image


class OcrStep(BaseModel):
    """One named step of a page reading, with its time and what it decided."""

    name: str
    seconds: float
    note: str = ""


class OcrResult(BaseModel):
    """What the OCR stage returns: fields by name, the words with their boxes, timings.

    ``lines`` (PP-OCR) carry the recognizer's probabilities in memory
    (:attr:`matrices`, saved beside ocr.json as ocr-lines.npz), so each field can be
    verified against the record after the robot's lookup.
    """

    type: str
    fields: dict[str, OcrField]
    words: list[OcrWord] = []
    lines: list[OcrLine] = []
    text: str = ""
    image_size: tuple[int, int] | None = None
    seconds: float = 0.0
    engine: str = "tesseract"
    steps: list[OcrStep] = []
    _matrices: dict[int, Any] = PrivateAttr(default_factory=dict)
    _views: Any = PrivateAttr(default=None)
    _pending_steps: list[Any] = PrivateAttr(default_factory=list)

    @property
    def matrices(self) -> dict[int, Any]:
        """Line index -> :class:`stampless.ocr.ctc.TopK` (empty for Tesseract readings)."""
        return self._matrices

    @property
    def views(self) -> Any:
        """While the page is in memory (PP-OCR): ``views(line, start, end)`` recognizes
        those characters again, cropped two other ways, and returns their
        :class:`~stampless.ocr.ctc.TopK` s; None once the reading is saved and loaded."""
        return self._views

    @property
    def pending_steps(self) -> list[Any]:
        """Images of a reading with ``defer_steps``, not saved yet: ``(file name, PIL
        image)`` of each preprocessing step and of the image OCR read (ocr-input.png)."""
        return self._pending_steps


class Record(BaseModel):
    """A record as a robot read it from the department system."""

    system: str
    key: str
    fields: dict[str, str]
    status: str = "valid"
    url: str | None = None


class FieldResult(BaseModel):
    name: str
    claimed: str | None  # the claim's value normalized (width and spacing only)
    ocr: str | None
    record: str | None
    status: FieldStatus
    confidence: float = Field(ge=0.0, le=1.0)
    # Why the field is not a match, in a sentence that says what the reviewer checks.
    reason: str | None = None
    # The claim's value exactly as the request sent it, beside its normalized ``claimed``.
    claimed_as_received: str | int | float | None = None
    # The scan checked against the record (PP-OCR's scores), when it was.
    check: FieldCheck | None = None
    source: str | None = None  # the OCR step that set the value read


class DocumentSignature(BaseModel):
    """An Ed25519 signature over a JSON document's canonical form without this block
    (``stampless.signing.sign_document``): outbox verdicts and audit checkpoints."""

    alg: str
    key_id: str
    public_key: str
    value: str


class Verdict(BaseModel):
    """The outcome of one request (docs/json.md); written once to the outbox."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    type: str
    tier: Tier
    verdict: VerdictKind
    fields: list[FieldResult] = []
    reasons: list[str] = []
    evidence: str | None = None
    manifest_sha256: str | None = None
    received_at: datetime
    finished_at: datetime
    deadline: datetime | None = None
    sla_met: bool | None = None
    attempts: int = 1
    stampless_version: str
    case_id: str | None = None
    decided_by: str | None = None
    supersedes: str | None = None
    # SHA-256 of the request this verdict answers (stampless.idempotency.request_digest).
    request_sha256: str | None = None
    # The deployment's signature, on the outbox copy (see stampless.outbox.publish).
    signature: DocumentSignature | None = None
