"""Cases: one application with several documents, verified together.

A case file (``stampless submit case.json``) looks like::

    {"case_id": "CASE-2026-0042",
     "title": "Open a restaurant",
     "priority": 0,
     "documents": [ {request}, {request}, ... ]}

Each document is an ordinary request (docs/json.md, "A request") with its own id; its
``case_id`` is set to the case's (a different one is an error), and relative ``scan``
paths are relative to the case file. Submitting fans out to one queue item per document.
When every document has a final verdict in the outbox, one case verdict is written to
``<outbox>/<case_id>.json``: ``verified`` only when every document is, else
``not_verified``, with each document's verdict, outbox file and evidence.

The case manifest ``<var_dir>/cases/<case_id>.json`` records which documents belong to
the case, so the case verdict can be settled by whichever process finishes last.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stampless._files import write_atomic
from stampless._version import __version__
from stampless.errors import InputError
from stampless.models import (
    Priority,
    VerdictKind,
    check_outbox_name,
    check_request_id,
    describe_validation_error,
)
from stampless.outbox import has_verdict, outbox_path, read_verdict, write_once

if TYPE_CHECKING:
    from stampless.config import Config

MAX_DOCUMENTS = 100


class CaseFile(BaseModel):
    """A case as submitted: its id, a title, and the documents' requests (raw JSON)."""

    model_config = ConfigDict(extra="forbid")

    case_id: str = Field(min_length=1, max_length=128)
    title: str | None = Field(default=None, max_length=200)
    priority: Priority = 0
    documents: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_DOCUMENTS)

    @field_validator("case_id")
    @classmethod
    def _safe(cls, value: str) -> str:
        return check_outbox_name(value)


class CaseManifest(BaseModel):
    """What the case store keeps per case."""

    case_id: str
    title: str | None
    request_ids: list[str]
    received_at: datetime


class CaseDocument(BaseModel):
    request_id: str
    type: str
    verdict: VerdictKind
    outbox: str
    evidence: str | None
    manifest_sha256: str | None


class CaseVerdict(BaseModel):
    """The case's outcome in the outbox (``kind`` tells it from a document verdict)."""

    kind: Literal["case"] = "case"
    case_id: str
    title: str | None
    verdict: Literal["verified", "not_verified"]
    documents: list[CaseDocument]
    reasons: list[str]
    received_at: datetime
    finished_at: datetime
    stampless_version: str


def is_case(data: object) -> bool:
    """True for the JSON of a case file (it has ``documents``) rather than a request."""
    return isinstance(data, dict) and "documents" in data


def parse_case(data: dict[str, Any], source: str) -> CaseFile:
    """Validate a case file's JSON; InputError names the file and the problem."""
    try:
        case = CaseFile.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{source}: {describe_validation_error(exc)}") from None
    seen: set[str] = set()
    for i, doc in enumerate(case.documents):
        rid = doc.get("id")
        if not isinstance(rid, str):
            raise InputError(f"{source}: document {i + 1} has no 'id'; give each document one.")
        if rid in seen or rid == case.case_id:
            raise InputError(f"{source}: id {rid!r} is used twice; ids must be unique.")
        seen.add(rid)
        if doc.get("case_id") not in (None, case.case_id):
            raise InputError(
                f"{source}: document {rid} names case {doc['case_id']!r}, not {case.case_id!r}."
            )
    return case


class CaseStore:
    """Case manifests in ``<var_dir>/cases/`` and case verdicts in the outbox."""

    def __init__(self, cases_dir: Path, outbox_dir: Path) -> None:
        self.cases_dir = Path(cases_dir)
        self.outbox_dir = Path(outbox_dir)

    @classmethod
    def from_config(cls, config: Config) -> CaseStore:
        return cls(config.var_dir / "cases", config.outbox_dir)

    def _path(self, case_id: str) -> Path:
        return self.cases_dir / f"{check_request_id(case_id)}.json"

    def record(self, manifest: CaseManifest) -> bool:
        """Store a case's manifest once; False (nothing changed) if it was already stored."""
        path = self._path(manifest.case_id)
        if path.exists():
            return False
        return write_atomic(path, manifest.model_dump_json(indent=2), once=True)

    def get(self, case_id: str) -> CaseManifest | None:
        try:
            return CaseManifest.model_validate_json(self._path(case_id).read_bytes())
        except FileNotFoundError:
            return None

    def open_cases(self) -> list[str]:
        """Ids of cases whose verdict is not in the outbox yet."""
        if not self.cases_dir.is_dir():
            return []
        return [
            p.stem
            for p in sorted(self.cases_dir.glob("*.json"))
            if not p.name.startswith(".") and not has_verdict(self.outbox_dir, p.stem)
        ]

    def verdict(self, case_id: str) -> CaseVerdict | None:
        """The case verdict if every document has a final verdict, else None."""
        manifest = self.get(case_id)
        if manifest is None:
            return None
        docs: list[CaseDocument] = []
        finished: list[datetime] = []
        for rid in manifest.request_ids:
            v = read_verdict(self.outbox_dir, rid)
            if v is None:
                return None
            docs.append(
                CaseDocument(
                    request_id=rid,
                    type=v.type,
                    verdict=v.verdict,
                    outbox=outbox_path(self.outbox_dir, rid).name,
                    evidence=v.evidence,
                    manifest_sha256=v.manifest_sha256,
                )
            )
            finished.append(v.finished_at)
        failing = [d for d in docs if d.verdict is not VerdictKind.verified]
        reasons = [f"{d.request_id} ({d.type}): {d.verdict.value}" for d in failing]
        return CaseVerdict(
            case_id=case_id,
            title=manifest.title,
            verdict="not_verified" if failing else "verified",
            documents=docs,
            reasons=reasons or ["Every document was verified."],
            received_at=manifest.received_at,
            # The last document's time, not "now": two processes settling the same case
            # then write identical bytes, and the write-once outbox accepts both.
            finished_at=max(finished),
            stampless_version=__version__,
        )

    def settle(self, case_id: str) -> Path | None:
        """Write the case verdict to the outbox if all documents are final; its path."""
        cv = self.verdict(case_id)
        if cv is None:
            return None
        data = (cv.model_dump_json(indent=2) + "\n").encode("utf-8")
        path = write_once(self.outbox_dir, case_id, data)
        logger.info("Case {}: {} ({} documents)", case_id, cv.verdict, len(cv.documents))
        return path

    def settle_all(self) -> list[str]:
        """Settle every open case that can be; the ids written."""
        return [cid for cid in self.open_cases() if self.settle(cid) is not None]


def read_case_verdict(outbox_dir: Path, case_id: str) -> CaseVerdict | None:
    """The case verdict in the outbox, or None."""
    try:
        raw = outbox_path(outbox_dir, case_id).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return CaseVerdict.model_validate(json.loads(raw))
