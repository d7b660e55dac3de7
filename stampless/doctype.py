"""How a task module declares a document type, and how robot.toml's types are loaded.

A task module in ``tasks/`` (loaded by file path, never imported as a package) defines
``DOCUMENT = DocumentType(...)``: the claim schema a request must satisfy, the fields OCR
reads (label anchors, format, normalizer, comparison rule, confidence threshold), the
key a robot looks the record up by, and the default tier and department system. The
engine knows no document; everything document-specific lives in the task module.

The claim value types below (:data:`ResidentId`, :data:`CreditCode`, :data:`IsoDate`,
...) parse what an applicant typed strictly and give its canonical form, so the
comparison sees the same forms as OCR and the department record; a value with anything
more or less than the value itself is refused, never cut or repaired.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator

from stampless import normalize as norm
from stampless.config import Config
from stampless.errors import ConfigError, RobotBug
from stampless.kinds import KINDS, FieldKind, Rule, get_kind, register_kind
from stampless.loader import load_attribute
from stampless.models import Record, Tier


@dataclass(frozen=True)
class FieldSpec:
    """One field of a document type.

    ``labels`` are the printed label texts that anchor the field (spaces and OCR noise
    in them are tolerated); ``kind`` is a registered :class:`stampless.FieldKind` (or its
    name: ``"resident_id"``, ``"date"``, ``"name"``, ``"text"``, ``"latin_text"``, ...),
    which decides what "valid" means and how the value may be printed; ``rule`` is the
    kind's own unless given; ``ignore_case`` compares letters without case.
    ``occurrence`` picks the n-th appearance of a label (a marriage certificate prints
    姓名 once per person); ``part`` picks the n-th value of the kind after the label
    (缴费起止年月 holds two months). ``region`` is where on the page, as fractions
    ``(left, top, right, bottom)``, the label is expected; it ranks candidate anchors
    and bounds the fallback search. ``whitelist`` and ``psm`` drive the re-read of the
    field's own region; ``pattern`` is a regular expression the value is searched with
    in the text after the label (the kind's own search is used when None).
    ``birth_field`` names, for a resident ID, the date field printed beside it that
    holds its birth date: an ID read with a misread date digit is repaired from it, and
    goes to a person (see :func:`stampless.normalize.id_from_birth_date`).
    """

    name: str
    labels: tuple[str, ...]
    kind: str | FieldKind
    rule: Rule | None = None
    required: bool = True
    threshold: float | None = None
    pattern: str | None = None
    whitelist: str | None = None
    psm: int = 7
    occurrence: int = 0
    part: int = 0
    region: tuple[float, float, float, float] | None = None
    tolerance: float = 0.0
    max_chars: int = 60
    birth_field: str | None = None
    ignore_case: bool = False
    # The resolved kind (from ``kind``); ``kind`` itself becomes the kind's name.
    kind_def: FieldKind = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.kind, FieldKind):
            kind = register_kind(self.kind) if self.kind.name not in KINDS else self.kind
        else:
            try:
                kind = get_kind(self.kind)
            except ValueError as exc:
                raise ValueError(f"field {self.name!r}: {exc}") from None
        if self.ignore_case and not kind.ignore_case:
            kind = kind.variant(ignore_case=True)
        object.__setattr__(self, "kind", kind.name)
        object.__setattr__(self, "kind_def", kind)
        if self.rule is None:
            object.__setattr__(self, "rule", kind.rule)
        if not self.labels:
            raise ValueError(f"field {self.name!r}: give at least one label")

    @property
    def compare_rule(self) -> Rule:
        """The comparison rule (the kind's own unless the field sets one)."""
        return self.rule or self.kind_def.rule


@dataclass(frozen=True)
class DocumentType:
    """A document type: what a claim holds, what OCR reads, how verdicts are decided."""

    name: str
    title: str
    tier: Tier
    system: str | None
    key_field: str
    claim_model: type[BaseModel]
    fields: tuple[FieldSpec, ...]
    # Other labels printed on the page (性别, 经营范围, ...): a field's value ends where
    # any label starts, so two-column layouts read as one line do not run together.
    other_labels: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"document type {self.name!r}: field names repeat")
        if self.key_field not in names:
            raise ValueError(f"document type {self.name!r}: key_field is not one of its fields")
        for spec in self.fields:
            if spec.birth_field is not None and (
                spec.kind != "resident_id"
                or spec.birth_field not in names
                or self.field(spec.birth_field).kind != "date"
            ):
                raise ValueError(
                    f"document type {self.name!r}: field {spec.name!r} has birth_field "
                    f"{spec.birth_field!r}; only a resident ID can have one, and it must "
                    "name a date field of the type"
                )
        extra = self.claim_model.model_config.get("extra")
        if extra != "forbid":
            raise ValueError(f"document type {self.name!r}: the claim model must forbid extra keys")

    def check_record(self, record: Record, robot: str) -> None:
        """RobotBug when the robot's record has a field this type does not define.

        A misspelt key would otherwise leave the real field empty, and every request of
        the type would go to a person with no word of why.
        """
        names = [f.name for f in self.fields]
        unknown = sorted(set(record.fields) - set(names))
        if unknown:
            raise RobotBug(
                f"The {robot} robot returned field {unknown[0]!r}, which document type "
                f"{self.name!r} does not have; its fields are {', '.join(names)}. Fix the key "
                "in the robot's Record(fields=...)."
            )

    def field(self, name: str) -> FieldSpec:
        """The field named ``name`` (KeyError if there is none)."""
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)


# --- claim value types for task modules ----------------------------------------------

# A claim is what an applicant or a hall typed, so it is parsed strictly and never
# repaired: the OCR normalizers search a reading for a value and fix confusions, which
# applied to a claim would cut "3201021968040823727" (19 digits) down to a valid ID.
# The only changes allowed are width (full-width forms to ASCII), spacing, and the case
# of Latin letters in identifiers and Latin names; the value that is left must be
# exactly what the kind's normalizer makes of it, or, for dates, months and numbers, be
# written whole in one of the notations named below.
_FULL_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
MAX_CLAIM_CHARS = 200


def claim_spelling(value: str) -> str:
    """``value`` with full-width forms made ASCII and spaces removed: the only
    normalization a claim gets before it must already be a canonical value.

    Spaces only: a newline, tab or other control character inside a value is noise,
    never spacing, and is refused like any other extra character.
    """
    return value.translate(_FULL_WIDTH).replace(" ", "")


# Identifiers whose letters are compared in upper case ("x" as the check digit is "X").
_CASELESS = frozenset({"resident_id", "credit_code", "cert_no"})


def _strict(kind: str, what: str, *, syntax: str | None = None) -> AfterValidator:
    """A claim value of ``kind``: refused unless its canonical form is the value as typed.

    ``syntax`` is a regular expression the value must match as a whole (numbers are
    rewritten by their normalizer, ``"066"`` to ``"66"``, so they are checked by their
    spelling instead of by equality).
    """
    # ASCII digits only: \d would also take other scripts' digits, which int() reads.
    pattern = re.compile(syntax, re.ASCII) if syntax is not None else None

    def validate(value: str) -> str:
        if len(value) > MAX_CLAIM_CHARS:
            raise ValueError(f"is longer than {MAX_CLAIM_CHARS} characters; not {what}")
        spelled = claim_spelling(value)
        canonical, valid = norm.check(kind, spelled.upper() if kind in _CASELESS else spelled)
        if canonical is None or not valid:
            raise ValueError(f"is not {what}")
        if pattern is not None:
            exact = pattern.fullmatch(spelled) is not None
        else:
            # Spacing is not the value: "Marriage record" is typed "Marriage  record".
            exact = norm.remove_spaces(canonical) in (spelled, spelled.upper())
        if not exact:
            raise ValueError(
                f"is not exactly {what}: it holds other characters too, which are never "
                "cut away or repaired; send the value alone"
            )
        # The value is kept with its word spaces where its kind keeps them ("WEBER
        # DANIEL", "Marriage record MR-0001"): spacing is not the value, but it is shown.
        spaced, valid = norm.check(kind, value.translate(_FULL_WIDTH))
        if valid and spaced is not None and norm.remove_spaces(spaced) == canonical:
            return spaced
        return canonical

    return AfterValidator(validate)


def _as_text(value: object) -> object:
    # Counts and amounts arrive as JSON numbers from some halls; compare them as text.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


ResidentId = Annotated[
    str, _strict("resident_id", "an 18-character resident ID with a valid check digit")
]
CreditCode = Annotated[
    str,
    _strict("credit_code", "an 18-character unified social credit code with a valid check"),
]
CertNo = Annotated[str, _strict("cert_no", "a certificate number like J320102-2024-001234")]
# Dates and months are taken whole in ISO form or as certificates print them (2024年1月2日).
IsoDate = Annotated[
    str,
    _strict(
        "date",
        "a date written like 2024-01-02 or 2024年1月2日",
        syntax=r"(19|20)\d\d(-\d\d-\d\d|年\d{1,2}月\d{1,2}日)",
    ),
]
YearMonth = Annotated[
    str,
    _strict(
        "month",
        "a month written like 2024-01 or 2024年1月",
        syntax=r"(19|20)\d\d(-\d\d|年\d{1,2}月)",
    ),
]
PersonName = Annotated[str, _strict("name", "a name of 2 to 6 CJK characters or Latin letters")]
Text = Annotated[str, _strict("text", "a text of at least two characters")]
LatinText = Annotated[str, _strict("latin_text", "a text of at least two letters or digits")]
Capital = Annotated[
    str,
    BeforeValidator(_as_text),
    _strict(
        "capital",
        "an amount in 万元 written in digits, such as 100",
        syntax=r"\d{1,12}(\.\d{1,6})?",
    ),
]
Count = Annotated[
    str, BeforeValidator(_as_text), _strict("integer", "a whole number", syntax=r"\d{1,9}")
]


# --- loading -------------------------------------------------------------------------


def bundled_tasks_dir() -> Path:
    """The tasks/ folder of the stampless repository (the three bundled document types)."""
    import stampless

    return Path(stampless.__file__).resolve().parents[1] / "tasks"


@lru_cache(maxsize=64)
def _load(path: Path, tier: Tier | None, system: str | None) -> DocumentType:
    doc = load_attribute(path, "DOCUMENT")
    if not isinstance(doc, DocumentType):
        raise ConfigError(
            f"{path}: DOCUMENT must be a stampless.DocumentType, not {type(doc).__name__}."
        )
    if tier is not None:
        doc = dataclasses.replace(doc, tier=Tier(tier))
    if system is not None:
        doc = dataclasses.replace(doc, system=system)
    return doc


def load_doctype_file(
    path: Path, *, tier: Tier | None = None, system: str | None = None
) -> DocumentType:
    """Load ``DOCUMENT`` from a task module file; ``tier``/``system`` override its defaults."""
    return _load(Path(path).resolve(), tier, system)


def load_doctype(config: Config, type_name: str) -> DocumentType:
    """The document type ``type_name`` of robot.toml (``[types.NAME] task = ...``).

    The task path is relative to robot.toml's folder. ``tier`` and ``system`` set in
    robot.toml override the module's defaults. Cached per path; raises ConfigError for an
    unknown type or a broken module.
    """
    tc = config.type_config(type_name)
    path = config.path(tc.task, "")
    doc = load_doctype_file(path, tier=tc.tier, system=tc.system)
    if doc.name != type_name:
        raise ConfigError(
            f"{path}: declares document type {doc.name!r}, but robot.toml loads it as "
            f"{type_name!r}; make the names agree."
        )
    return doc
