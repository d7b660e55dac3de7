"""The orchestrator: one job in, one sealed verdict out (README.md, "What it is").

Intake has checked and routed the request into a :class:`~stampless.intake.Job` (claim
model of the document type, scan opened safely; instant, robot or manual tier, its QR
e-certificate included); the pipeline follows the route it was given::

    instant   -> the e-certificate checked against the issuer's key (no browser, no OCR)
    gather    -> robot lookup on the department system  ||  OCR of the scan (in a thread)
    decide    -> compare claim / OCR / record field by field
    seal      -> evidence bundle with a signed manifest, audit entries

The pipeline never writes the outbox and never retries: the caller (a queue worker, or
``stampless verify``, through the one retry layer, :mod:`stampless.retry`) does both.
One ``Pipeline`` per process owns one browser (through
:class:`stampless.robot.RobotRuntime`), started on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from stampless._version import __version__
from stampless.audit import AuditLog
from stampless.circuit import CircuitBreaker
from stampless.compare import Decision, verify_and_decide
from stampless.config import Config
from stampless.doctype import DocumentType
from stampless.errors import RecordNotFound, RecordRevoked
from stampless.evidence import EvidenceBundle
from stampless.idempotency import request_digest
from stampless.intake import DocumentRouter, Job
from stampless.metrics import DECISIONS, STAGE_SECONDS
from stampless.models import (
    FieldResult,
    OcrResult,
    Record,
    Request,
    Tier,
    Verdict,
    VerdictKind,
    utcnow,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from stampless.robot import RobotRuntime
    from stampless.signing import Signer

OCR_SCORES = "ocr-scores.npz"
MANUAL_REASON = "Confidential record: a person decides; the robot gathered the evidence."


class Pipeline:
    """Runs requests through the stages; use as ``async with Pipeline(config) as p``."""

    def __init__(
        self,
        config: Config,
        *,
        signer: Signer | None = None,
        circuits: CircuitBreaker | None = None,
    ) -> None:
        """``circuits``: the process's breaker (a worker pool's), which the robot runtime
        obeys and the caller's retry layer keeps; without one, an in-memory breaker of
        this pipeline's own (``stampless verify``, the demo)."""
        self.config = config
        self._signer = signer
        self.circuits = circuits or CircuitBreaker.from_config(config, persist=False)
        self._runtime: RobotRuntime | None = None
        self._runtime_lock = asyncio.Lock()
        self.router = DocumentRouter(config)
        self.audit = AuditLog(config.audit_dir, rotate_bytes=config.audit.rotate_bytes)

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._runtime is not None:
            await self._runtime.__aexit__(None, None, None)
            self._runtime = None

    # -- the stages ----------------------------------------------------------------------

    async def process(self, job: Job) -> Verdict:
        """Verify one job and seal its evidence; see the module docstring.

        The job was checked and routed at intake (:func:`stampless.intake.build_job`).
        Returns the verdict (verified, mismatch, not_found or needs_review). Raises
        InputError for a bad request (final) and SystemFailure when the department
        system or the robot failed (the caller retries).
        """
        started = time.perf_counter()
        request, base_dir = job.request, job.base_dir
        with logger.contextualize(request_id=request.id):
            doctype, claim = job.checked or self.router.parse_claim(request)
            bundle = self._open_bundle(job)
            if job.tier is Tier.instant:
                decision = await self._instant(request, base_dir, job.envelope, claim)
            else:
                decision = await self._gather_and_decide(
                    request, base_dir, doctype, claim, bundle, job.account, job.deadline
                )
            # The preprocessing steps explain a machine's doubt; a clear answer needs only
            # the image OCR read (docs/evidence.md, "Size").
            doubt = decision.verdict in (VerdictKind.mismatch, VerdictKind.needs_review)
            DECISIONS.labels(job.tier.value, decision.verdict.value).inc()
            if job.tier is Tier.manual:
                decision = _to_review(decision, MANUAL_REASON)
            verdict = await self._seal(job, bundle, decision, keep_steps=doubt)
            STAGE_SECONDS.labels("total").observe(time.perf_counter() - started)
            return verdict

    async def escalate(self, job: Job, *, reason: str) -> Verdict:
        """Seal what earlier attempts gathered as a needs_review verdict for a person."""
        decision = Decision(verdict=VerdictKind.needs_review, fields=[], reasons=[reason])
        return await self._finish_without_decision(job, decision, event="escalated")

    async def fail(self, job: Job, *, reason: str) -> Verdict:
        """Seal an ``error`` verdict (bad input found late, or a type that cannot go to review)."""
        decision = Decision(verdict=VerdictKind.error, fields=[], reasons=[reason])
        return await self._finish_without_decision(job, decision, event="failed")

    # -- helpers -------------------------------------------------------------------------

    def _step(self, event: str, request_id: str, message: str, **data: Any) -> None:
        """One console/log line and one audit entry per stage, so both tell the same story."""
        logger.info(message)
        self.audit.append(event, request_id=request_id, **data)

    @cached_property
    def signer(self) -> Signer:
        """The signer given, else the deployment's (ConfigError when none is configured)."""
        from stampless.signing import production_signer

        if self._signer is not None:
            return self._signer
        return production_signer(self.config)

    async def runtime(self) -> RobotRuntime:
        """The process's robot runtime (one browser), started on first use."""
        async with self._runtime_lock:
            if self._runtime is None:
                from stampless.robot import RobotRuntime

                # The pipeline's callers retry (stampless.retry); the runtime does not.
                runtime = RobotRuntime(self.config, circuits=self.circuits, caller_retries=True)
                await runtime.__aenter__()
                self._runtime = runtime
            return self._runtime

    def _open_bundle(self, job: Job) -> EvidenceBundle:
        """The request's bundle for this run: its reception (one queue item, or one
        ``stampless verify``). Its retries continue it; a new run starts a new one."""
        request = job.request
        bundle = EvidenceBundle.open(
            self.config.evidence_dir, request.id, run=f"received {job.received_at.isoformat()}"
        )
        if not bundle.path("request.json").exists():
            bundle.add_json("request.json", request.model_dump(mode="json"), kind="request")
            for kind, source in (
                ("scan", request.scan_path(job.base_dir)),
                ("ecert", request.ecert_path(job.base_dir)),
            ):
                if source is not None:
                    bundle.add_file(
                        source,
                        f"{kind}{source.suffix.lower()}",
                        kind="scan" if kind == "scan" else "request",
                    )
        bundle.set_meta(stampless_version=__version__, type=request.type, attempts=job.attempt)
        return bundle

    async def _fetched_scan(
        self, request_id: str, where: tuple[str, str], bundle: EvidenceBundle, **limits: Any
    ) -> Path:
        """The department's archived certificate (``where``: system, key), fetched into
        the evidence for a request with ``fetch`` and no scan; ``limits``: the account and
        deadline. An earlier attempt's download is reused."""
        kept = bundle.meta.get("download_file")
        if kept and bundle.path(str(kept)).exists():
            return bundle.path(str(kept))
        runtime = await self.runtime()
        path = await runtime.fetch(*where, evidence=bundle, **limits)
        self._step("fetched", request_id, f"archived certificate fetched: {path.name}")
        return path

    async def _read_scan(
        self,
        request: Request,
        base_dir: Path,
        doctype: DocumentType,
        bundle: EvidenceBundle,
        scan: Path | None = None,
    ) -> OcrResult:
        """OCR in a worker thread (Tesseract releases the GIL, so threads use both cores).

        An earlier attempt's result in the partial bundle is reused: a retry after the
        department system failed does not read the scan again.
        """
        from stampless.ocr import load_scores, read_document, save_scores

        cached = bundle.path("ocr.json")
        if cached.exists():
            return load_scores(
                OcrResult.model_validate_json(cached.read_bytes()), bundle.path(OCR_SCORES)
            )
        scan = scan or request.scan_path(base_dir)
        assert scan is not None  # validate() made sure
        steps_dir = bundle.path("preprocessed")
        result = await asyncio.to_thread(
            read_document,
            scan,
            doctype,
            self.config.ocr,
            steps_dir=steps_dir,
            thresholds=self.config.types[request.type].thresholds,
            defer_steps=True,
        )
        for step in sorted(steps_dir.glob("*.png")) if steps_dir.is_dir() else []:
            bundle.note_file(f"preprocessed/{step.name}", kind="preprocessed")
        # The images are written at sealing: the steps only for a doubt (PP-OCR).
        bundle.hold_steps(result.pending_steps)
        # The recognizer's scores, so each field's check can be redone from the evidence.
        if save_scores(result, bundle.path(OCR_SCORES)):
            bundle.note_file(OCR_SCORES, kind="ocr")
        bundle.add_json("ocr.json", result.model_dump(mode="json"), kind="ocr")
        STAGE_SECONDS.labels("ocr").observe(result.seconds)
        self._step(
            "ocr",
            request.id,
            f"OCR read {sum(f.value is not None for f in result.fields.values())}/"
            f"{len(result.fields)} fields in {result.seconds:.2f} s",
            seconds=round(result.seconds, 3),
        )
        return result

    async def _lookup(
        self,
        request: Request,
        doctype: DocumentType,
        claim: BaseModel,
        bundle: EvidenceBundle,
        account: str | None,
        deadline: datetime,
    ) -> Record | None:
        """The record from the department system; None when it has no such record."""
        if doctype.system is None:
            return None
        key = str(getattr(claim, doctype.key_field))
        runtime = await self.runtime()
        started = time.perf_counter()
        try:
            record = await runtime.lookup(
                doctype.system, key, account=account, evidence=bundle, deadline=deadline
            )
            STAGE_SECONDS.labels("lookup").observe(time.perf_counter() - started)
        except RecordNotFound:
            bundle.add_json(
                "record.json", {"found": False, "system": doctype.system}, kind="record"
            )
            return None
        except RecordRevoked as exc:
            record = Record(system=doctype.system, key=key, fields={}, status="revoked")
            bundle.add_json("record.json", {"found": True, "revoked": str(exc)}, kind="record")
            return record
        bundle.add_json("record.json", record.model_dump(mode="json"), kind="record")
        doctype.check_record(record, doctype.system)
        return record

    async def _gather_and_decide(
        self,
        request: Request,
        base_dir: Path,
        doctype: DocumentType,
        claim: BaseModel,
        bundle: EvidenceBundle,
        account: str | None,
        deadline: datetime,
    ) -> Decision:
        """Robot lookup and OCR at the same time, then the field-by-field comparison."""
        fetched = None
        if request.scan is None and request.fetch and doctype.system is not None:
            where = (doctype.system, str(getattr(claim, doctype.key_field)))
            try:
                fetched = await self._fetched_scan(
                    request.id, where, bundle, account=account, deadline=deadline
                )
            except (RecordNotFound, RecordRevoked):
                # Nothing archived to read: the lookup below says why, as for any scan.
                fetched = None
        if request.scan is None and fetched is None:
            record = await self._lookup(request, doctype, claim, bundle, account, deadline)
            ocr = OcrResult(type=request.type, fields={})
        else:
            reading = asyncio.ensure_future(
                self._read_scan(request, base_dir, doctype, bundle, fetched)
            )
            try:
                record = await self._lookup(request, doctype, claim, bundle, account, deadline)
            except Exception:
                # OCR in its thread cannot be stopped: let it finish before the failure is
                # raised, or it would race the retry's OCR (or the escalation's seal) on
                # the bundle's files. Its result stays in the bundle for the retry.
                with contextlib.suppress(Exception):
                    await reading
                raise
            except BaseException:
                reading.cancel()  # the attempt itself was stopped: do not wait for OCR
                raise
            ocr = await reading
        _, decision = await asyncio.to_thread(
            verify_and_decide,
            doctype,
            claim,
            ocr,
            record,
            self.config.ocr,
            thresholds=self.config.types[request.type].thresholds,
        )
        self._step(
            "compared",
            request.id,
            f"compared fields: {decision.verdict.value}",
            verdict=decision.verdict,
        )
        return decision

    async def _instant(
        self, request: Request, base_dir: Path, envelope: bytes | None, claim: BaseModel
    ) -> Decision:
        """The e-certificate (already read from the scan, or the request's file or QR code)
        checked against the issuer's key and the claim: no browser, no OCR.

        The claim is the validated one, normalized as in the robot tier, so the same
        claim gets the same answer whichever tier settles it.
        """
        from stampless.ecert import verify_ecert, verify_instant

        normalized = claim.model_dump(mode="json", exclude_none=True)
        if envelope is not None:
            decision = verify_ecert(
                envelope, config=self.config, doc_type=request.type, claim=normalized
            )
        else:
            decision = await asyncio.to_thread(
                verify_instant,
                request.model_copy(update={"claim": normalized}),
                base_dir=base_dir,
                config=self.config,
            )
        self._step(
            "compared",
            request.id,
            f"e-certificate checked: {decision.verdict.value}",
            verdict=decision.verdict,
            tier="instant",
        )
        return decision

    async def _finish_without_decision(
        self, job: Job, decision: Decision, *, event: str
    ) -> Verdict:
        with logger.contextualize(request_id=job.id):
            bundle = self._open_bundle(job)
            reason = decision.reasons[0]
            self._step(event, job.id, f"{event}: {reason}", reason=reason)
            # A person takes over: keep all that explains the page.
            return await self._seal(job, bundle, decision, keep_steps=True)

    async def _seal(
        self, job: Job, bundle: EvidenceBundle, decision: Decision, *, keep_steps: bool
    ) -> Verdict:
        """Seal the bundle with the verdict; ``keep_steps``: keep every preprocessing step."""
        started = time.perf_counter()
        request = job.request
        # Re-encoding images is CPU work: off the event loop the other workers' pages use.
        await asyncio.to_thread(
            bundle.compact_images, keep_steps=keep_steps or self.config.evidence.keep_steps
        )
        finished = utcnow()
        verdict = Verdict(
            request_id=request.id,
            type=request.type,
            tier=job.tier,
            verdict=decision.verdict,
            fields=[_as_received(f, request.claim) for f in decision.fields],
            reasons=decision.reasons,
            evidence=None,
            received_at=job.received_at,
            finished_at=finished,
            deadline=job.deadline,
            sla_met=finished <= job.deadline,
            attempts=job.attempt,
            stampless_version=__version__,
            case_id=request.case_id,
            request_sha256=request_digest(request, job.base_dir),
            supersedes=job.supersedes,
        )
        verdict_json: dict[str, Any] = verdict.model_dump(mode="json")
        bundle.add_json(
            "comparison.json",
            [f.model_dump(mode="json") for f in verdict.fields],
            kind="comparison",
        )
        bundle.add_json("verdict.json", verdict_json, kind="verdict")
        sealed = bundle.seal(self.signer, verdict=verdict_json)
        verdict.evidence = str(sealed.path)
        verdict.manifest_sha256 = sealed.manifest_sha256
        STAGE_SECONDS.labels("seal").observe(time.perf_counter() - started)
        self._step(
            "verdict",
            request.id,
            f"{verdict.verdict.value} ({job.tier.value} tier), evidence sealed in {sealed.path}",
            verdict=verdict.verdict,
            manifest_sha256=sealed.manifest_sha256,
        )
        return verdict


def _as_received(field: FieldResult, claim: dict[str, Any]) -> FieldResult:
    """The field with the claim's value exactly as received beside its normalized form."""
    value = claim.get(field.name)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return field
    return field.model_copy(update={"claimed_as_received": value})


def _to_review(decision: Decision, reason: str) -> Decision:
    machine = f"The machine comparison says {decision.verdict.value}."
    return Decision(
        verdict=VerdictKind.needs_review,
        fields=decision.fields,
        reasons=[reason, machine, *decision.reasons],
    )
