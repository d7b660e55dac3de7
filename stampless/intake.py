"""Intake: requests and cases into the durable queue, from files, an inbox or HTTP.

Every path ends in :meth:`Intake.submit_prepared`, which does the same three things:

1. validate everything first (request model, the document type's claim model, the scan
   or e-certificate file), with no side effect, so bad input changes nothing;
2. spool: copy the request and its files into ``<var_dir>/spool/<id>/`` (built in a
   temporary folder, fsynced, renamed into place), so the item never depends on the
   original files staying put;
3. enqueue with the spool folder as ``base_dir``. The request id is the idempotency
   key: a known id changes nothing and says so.

The HTTP endpoint (:class:`IntakeServer`) accepts ``POST /requests`` with
``Authorization: Bearer <token>`` (``[intake] token`` in robot.toml, a secret reference)
and a JSON body ``{"request": {...}, "scan_base64": "...", "scan_name": "x.jpg"}``
(or ``ecert_base64``/``ecert_name``); ``GET /requests/<id>`` reports the item's state.
Without a configured token the endpoint does not start.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

from loguru import logger
from pydantic import BaseModel, ValidationError

from stampless._files import fsync_dir, read_json_file, write_atomic
from stampless.boundary import check_name, parse_json, request_files
from stampless.cases import CaseManifest, CaseStore, is_case, parse_case
from stampless.errors import InputError, RequestConflict
from stampless.idempotency import check_answered, check_item, request_digest
from stampless.metrics import HEALTH_PATHS, answer
from stampless.models import Request, Tier, VerdictKind, describe_validation_error, utcnow

if TYPE_CHECKING:
    from stampless.audit import AuditLog
    from stampless.config import Config
    from stampless.doctype import DocumentType
    from stampless.queue import QueueItem, WorkQueue

MAX_FILE_BYTES = 512 * 1024  # a request or case JSON file
MAX_BODY_BYTES = 64 * 1024 * 1024  # an HTTP submission with its scan inlined


# A request's document type and its validated claim.
Checked: TypeAlias = "tuple[DocumentType, BaseModel]"


@dataclass(frozen=True)
class Route:
    """Where a request goes: its tier, the department system whose account it needs
    (None: no browser), and the e-certificate its scan's QR code carries, if one does."""

    tier: Tier
    system: str | None = None
    envelope: bytes | None = None


class Router(Protocol):
    """What intake needs to check and route a request; no side effects."""

    def validate(self, request: Request, base_dir: Path) -> Checked | None:
        """InputError unless the request can be processed; its type and claim when known."""
        ...

    def route(self, request: Request, base_dir: Path) -> Route:
        """The request's tier and system, decided before any account is claimed."""
        ...


@dataclass(frozen=True)
class Job:
    """One request as every stage after intake sees it: checked, routed and timed once.

    Intake builds it (:func:`build_job`); the queue stores what it needs to rebuild it
    (:meth:`from_item`); the pipeline, the worker and ``stampless verify`` take it.
    ``checked`` is the document type and validated claim when this process checked the
    request; a job rebuilt from the queue parses its claim again in the pipeline (a
    pydantic model does not cross the queue), but its files, tier, system and deadline
    are never recomputed. ``envelope``: the e-certificate the routing read from the
    scan's QR code, so the instant tier does not read it twice in one process.
    """

    request: Request
    base_dir: Path
    tier: Tier
    system: str | None
    received_at: datetime
    deadline: datetime
    attempt: int = 1
    account: str | None = None
    supersedes: str | None = None
    checked: Checked | None = field(default=None, compare=False, repr=False)
    envelope: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def id(self) -> str:
        return self.request.id

    @classmethod
    def from_item(cls, item: QueueItem) -> Job:
        """The job of a claimed queue item: attempt and account are the claim's."""
        return cls(
            request=item.request,
            base_dir=item.base_dir,
            tier=item.tier,
            system=item.system,
            received_at=item.received_at,
            deadline=item.deadline,
            attempt=item.attempts,
            account=item.account,
            supersedes=item.supersedes,
        )


def deadline_for(config: Config, tier: Tier, received_at: datetime) -> datetime:
    """When a request of ``tier`` received at ``received_at`` is due (robot.toml's [tiers])."""
    return received_at + timedelta(seconds=config.tiers.sla_seconds(tier))


def build_job(
    config: Config,
    router: Router,
    request: Request,
    base_dir: Path,
    *,
    received_at: datetime,
    check: bool = True,
    supersedes: str | None = None,
) -> Job:
    """Check and route ``request`` into its :class:`Job`, the SLA clock started at
    ``received_at``. ``check`` False: the caller checked it already (intake checks the
    original files before it spools them, then routes the spooled copy)."""
    checked = router.validate(request, base_dir) if check else None
    route = router.route(request, base_dir)
    return Job(
        request=request,
        base_dir=base_dir,
        tier=route.tier,
        system=route.system,
        received_at=received_at,
        deadline=deadline_for(config, route.tier, received_at),
        supersedes=supersedes,
        checked=checked,
        envelope=route.envelope,
    )


def enqueue_recheck(
    queue: WorkQueue, config: Config, item: QueueItem, new_id: str, *, now: datetime
) -> bool:
    """Queue a re-check of finished ``item`` under ``new_id``, superseding it; True if added.

    The same claim and spooled files, routed as the original was, with a new SLA clock.
    """
    result = queue.enqueue(
        item.request.model_copy(update={"id": new_id, "case_id": None}),
        base_dir=item.base_dir,
        tier=item.tier,
        system=item.system,
        received_at=now,
        deadline=deadline_for(config, item.tier, now),
        supersedes=item.request_id,
    )
    return result.added


class DocumentRouter:
    """robot.toml's document types: checks a request and routes it (the default router).

    Routing happens here, at intake, before the queue claims an account for the request:
    an e-certificate (a file, or a QR code on the scan of a type an issuer signs) sends
    it to the instant tier, which needs no department system and so no account.
    """

    def __init__(self, config: Config) -> None:
        self.config = config

    def doctype(self, type_name: str) -> DocumentType:
        """The document type of ``type_name`` (InputError when robot.toml does not know it)."""
        from stampless.doctype import load_doctype

        return load_doctype(self.config, type_name)

    def parse_claim(self, request: Request) -> Checked:
        """The request's document type and its claim parsed by the type's claim model."""
        doctype = self.doctype(request.type)
        try:
            claim = doctype.claim_model.model_validate(request.claim)
        except ValidationError as exc:
            raise InputError(
                f"Request {request.id}: claim {describe_validation_error(exc)}"
            ) from None
        return doctype, claim

    def validate(self, request: Request, base_dir: Path) -> Checked:
        """Check everything that can be checked without side effects; InputError if wrong."""
        from stampless.ocr import open_image

        doctype, claim = self.parse_claim(request)
        files = request_files(request, base_dir, self.config)
        if request.ecert is None:
            if "scan" in files:
                open_image(files["scan"], self.config.ocr).close()
            elif not request.fetch or doctype.system is None:
                raise InputError(
                    f"Request {request.id}: 'scan' is required for {request.type}"
                    + (
                        "."
                        if doctype.system is None
                        else ', or "fetch": true to fetch the '
                        "archived certificate from the department instead."
                    )
                )
        return doctype, claim

    def route(self, request: Request, base_dir: Path) -> Route:
        """Instant for an e-certificate (the request's file, or a QR code on its scan),
        else the document type's tier and system. A type declared ``tier = "instant"``
        reads the e-certificate from the QR code on its scan."""
        if request.ecert is not None:
            return Route(Tier.instant)
        doctype = self.doctype(request.type)
        if doctype.tier is Tier.instant:
            return Route(Tier.instant)
        envelope = self._ecert_on_scan(request, base_dir)
        if envelope is not None:
            return Route(Tier.instant, envelope=envelope)
        return Route(doctype.tier, doctype.system)

    def _ecert_on_scan(self, request: Request, base_dir: Path) -> bytes | None:
        """The e-certificate in the scan's QR code, if an issuer signs this document type.

        Deployments without e-certificate issuers for the type pay nothing for the look.
        """
        if request.scan is None or not any(
            not issuer.types or request.type in issuer.types
            for issuer in self.config.issuers.values()
        ):
            return None
        from stampless.ecert import find_ecert_in_scan

        scan = request.scan_path(base_dir)
        assert scan is not None
        return find_ecert_in_scan(scan)


class SubmitOutcome(BaseModel):
    """What happened to one submitted request or case."""

    id: str
    kind: Literal["request", "case"]
    added: bool
    state: str
    message: str
    verdict: str | None = None  # the stored verdict of a known id, once it has one


@dataclass
class Prepared:
    """A validated request (or case) ready to spool and enqueue."""

    requests: list[tuple[Request, Path]]  # request, folder its relative paths are under
    case: CaseManifest | None = None
    source: str = ""


class Intake:
    """Validates, spools and enqueues requests and cases for one deployment."""

    def __init__(
        self,
        config: Config,
        queue: WorkQueue,
        *,
        router: Router | None = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.router: Router = router or DocumentRouter(config)
        self.spool_dir = config.var_dir / "spool"
        self.cases = CaseStore.from_config(config)
        self._audit: AuditLog | None = None

    @property
    def audit(self) -> AuditLog:
        if self._audit is None:
            from stampless.audit import AuditLog

            self._audit = AuditLog(
                self.config.audit_dir, rotate_bytes=self.config.audit.rotate_bytes
            )
        return self._audit

    # -- preparing (no side effects) -----------------------------------------------------

    def prepare_data(self, data: Any, base_dir: Path, source: str) -> Prepared:
        """Validate a request's or case's JSON whose relative paths are under ``base_dir``."""
        if is_case(data):
            case = parse_case(data, source)
            requests = []
            for doc in case.documents:
                doc = {**doc, "case_id": case.case_id}
                doc.setdefault("priority", case.priority)
                requests.append((self._request(doc, source), base_dir))
            manifest = CaseManifest(
                case_id=case.case_id,
                title=case.title,
                request_ids=[r.id for r, _ in requests],
                received_at=utcnow(),
            )
            prepared = Prepared(requests, manifest, source)
        else:
            if not isinstance(data, dict):
                raise InputError(f"{source}: a request is a JSON object with id, type and claim.")
            prepared = Prepared([(self._request(data, source), base_dir)], None, source)
        for request, folder in prepared.requests:
            try:
                # Before anything reads a named file (even a duplicate's, to compare it).
                request_files(request, folder, self.config)
                if self.queue.get(request.id) is not None:
                    continue  # a duplicate is compared and reported later
                self.router.validate(request, folder)
            except InputError as exc:
                raise InputError(f"{source}: {exc}") from None
        return prepared

    @staticmethod
    def _request(data: dict[str, Any], source: str) -> Request:
        try:
            return Request.model_validate(data)
        except ValidationError as exc:
            raise InputError(f"{source}: {describe_validation_error(exc)}") from None

    def prepare_file(self, path: Path, *, follow_symlinks: bool = True) -> Prepared:
        path = Path(path)
        data = read_json_file(
            path, max_bytes=MAX_FILE_BYTES, what="request or case", follow_symlinks=follow_symlinks
        )
        return self.prepare_data(data, path.resolve().parent, str(path))

    # -- committing ----------------------------------------------------------------------

    def submit_files(
        self, paths: list[Path], *, follow_symlinks: bool = True
    ) -> list[SubmitOutcome]:
        """Validate every file first, then spool and enqueue them all (``stampless submit``).

        One bad file raises InputError before anything is enqueued; a known id sent with
        other content raises :class:`~stampless.errors.RequestConflict`.
        """
        prepared = [self.prepare_file(p, follow_symlinks=follow_symlinks) for p in paths]
        ids: dict[str, str] = {}
        for p in prepared:
            for request, _ in p.requests:
                if request.id in ids and ids[request.id] != p.source:
                    raise InputError(
                        f"{p.source}: id {request.id} is also used by {ids[request.id]}; "
                        "ids must be unique."
                    )
                ids[request.id] = p.source
        return [o for p in prepared for o in self.submit_prepared(p)]

    def submit_prepared(
        self, prepared: Prepared, *, received_at: datetime | None = None
    ) -> list[SubmitOutcome]:
        """Spool and enqueue a prepared submission; one outcome per request (and case).

        A case's manifest is recorded before its documents are queued, so a crash in
        between leaves a case that a second submit of the same file completes.
        ``received_at`` starts the SLA clock (default: now); a scheduled job that takes
        an application from another system passes the application's own time.
        """
        received_at = received_at or utcnow()
        case_added = False
        if prepared.case is not None:
            case_added = self.cases.record(prepared.case)
        outcomes = [self._submit_one(r, base, received_at) for r, base in prepared.requests]
        if prepared.case is not None:
            cid = prepared.case.case_id
            new_docs = sum(o.added for o in outcomes)
            if case_added:
                message = f"Case {cid} with {len(outcomes)} documents queued."
            elif new_docs:
                message = f"Case {cid} was known; {new_docs} missing documents queued now."
            else:
                message = f"Case {cid} was already submitted; nothing changed."
            outcomes.append(
                SubmitOutcome(
                    id=cid,
                    kind="case",
                    added=case_added or bool(new_docs),
                    state="open" if case_added else "known",
                    message=message,
                )
            )
            # A resubmitted case whose documents all finished meanwhile settles now.
            self.cases.settle(cid)
        return outcomes

    def _submit_one(self, request: Request, base_dir: Path, received_at: datetime) -> SubmitOutcome:
        digest = request_digest(request, base_dir)
        known = self.queue.get(request.id)
        if known is not None:
            return self._known(request, digest, known)
        self._check_finished(request, digest)
        self._drop_stale_spool(request.id, digest)
        fresh = not (self.spool_dir / request.id).exists()
        spool = self.spool(request, base_dir)
        try:
            spooled = Request.model_validate_json((spool / "request.json").read_bytes())
            # Checked before spooling (prepare_data); routed here, on the spooled files.
            job = build_job(
                self.config, self.router, spooled, spool, received_at=received_at, check=False
            )
            tier, deadline = job.tier, job.deadline
            result = self.queue.enqueue(
                spooled,
                base_dir=spool,
                tier=tier,
                system=job.system,
                received_at=received_at,
                deadline=deadline,
                content_sha256=digest,
            )
        except BaseException:
            # Nothing is left in the spool for a request that was not queued.
            if fresh:
                shutil.rmtree(spool, ignore_errors=True)
            raise
        if not result.added:
            return self._known(request, digest, result.item)
        self.audit.append(
            "queued",
            request_id=request.id,
            type=request.type,
            tier=tier.value,
            deadline=deadline.isoformat(),
            case_id=request.case_id,
        )
        logger.info(
            "Queued {} ({}, {} tier, due {:%H:%M:%S})", request.id, request.type, tier, deadline
        )
        return SubmitOutcome(
            id=request.id,
            kind="request",
            added=True,
            state="queued",
            message=f"{request.id} queued ({tier.value} tier, due {deadline:%H:%M:%S} UTC).",
        )

    def _known(self, request: Request, digest: str, known: QueueItem) -> SubmitOutcome:
        """The outcome for an id the queue knows: the stored state, if the content is the same."""
        check_item(request, digest, known)
        return _duplicate(request.id, known.state.value, known.verdict)

    def _check_finished(self, request: Request, digest: str) -> None:
        """Refuse an id that ``stampless verify`` answered, or sent to a reviewer, for other
        content."""
        check_answered(self.config, request, digest)

    def _drop_stale_spool(self, request_id: str, digest: str) -> None:
        """Remove a spool folder a crash left for other content under this (unqueued) id."""
        target = self.spool_dir / request_id
        try:
            left = Request.model_validate_json((target / "request.json").read_bytes())
        except (OSError, ValueError):
            left = None
        if left is not None and request_digest(left, target) == digest:
            return
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)

    def spool(self, request: Request, base_dir: Path) -> Path:
        """Copy the request and its files into ``<var_dir>/spool/<id>/`` atomically; the folder.

        An existing spool folder (a crash between spooling and enqueueing) is reused.
        """
        target = self.spool_dir / request.id
        if (target / "request.json").is_file():
            return target
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{request.id}.", dir=self.spool_dir))
        try:
            updates: dict[str, str] = {}
            for kind, source in request_files(request, base_dir, self.config).items():
                name = f"{kind}{_suffix(str(getattr(request, kind)))}"
                try:
                    shutil.copyfile(source, work / name)
                except OSError as exc:
                    raise InputError(
                        f"Request {request.id}: cannot copy {kind} file {source.name} "
                        f"({exc.strerror}); check that it exists and is readable."
                    ) from None
                with (work / name).open("rb") as fh:
                    os.fsync(fh.fileno())
                updates[kind] = name
            spooled = request.model_copy(update=updates)
            with (work / "request.json").open("w", encoding="utf-8") as fh:
                fh.write(spooled.model_dump_json(indent=2))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                work.rename(target)
            except OSError:
                # Someone else spooled the same id meanwhile (rename onto a non-empty
                # folder fails); theirs is complete, so use it.
                if not (target / "request.json").is_file():
                    raise
            fsync_dir(self.spool_dir)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        return target

    # -- HTTP ----------------------------------------------------------------------------

    def submit_http(self, body: bytes) -> SubmitOutcome:
        """A submission from the HTTP endpoint: the request with its files inlined."""
        data = parse_json(body, source="The body")
        if not isinstance(data, dict) or not isinstance(data.get("request"), dict):
            raise InputError('Send {"request": {...}, "scan_base64": "...", "scan_name": "..."}.')
        unknown = set(data) - {"request", *(f"{k}_{f}" for k in _HTTP_FILES for f in _HTTP_PARTS)}
        if unknown:
            raise InputError(f"The body has unknown keys: {', '.join(sorted(unknown))[:200]}.")
        req = dict(data["request"])
        incoming = self.spool_dir / f".incoming-{uuid.uuid4().hex}"
        incoming.mkdir(parents=True)
        try:
            for kind in _HTTP_FILES:
                blob = data.get(f"{kind}_base64")
                if blob is None:
                    # Paths on the server's disk are never accepted over HTTP.
                    if req.get(kind) is not None:
                        raise InputError(
                            f"Send the {kind} inline as {kind}_base64; server paths are refused."
                        )
                    continue
                given = data.get(f"{kind}_name") or kind
                if not isinstance(blob, str) or not isinstance(given, str):
                    raise InputError(f"{kind}_base64 and {kind}_name are strings.")
                check_name(given, f"{kind}_name")
                if PurePath(given).name != given or "\\" in given:
                    raise InputError(
                        f"{kind}_name is a file name, not a path; send the name alone."
                    )
                name = f"{kind}{_suffix(given)}"
                try:
                    raw = base64.b64decode(blob, validate=True)
                except (binascii.Error, ValueError):
                    raise InputError(f"{kind}_base64 is not valid base64.") from None
                (incoming / name).write_bytes(raw)
                req[kind] = name
            prepared = self.prepare_data(req, incoming, "HTTP request")
            if prepared.case is not None:
                raise InputError("Submit cases as files or through the inbox, not over HTTP.")
            return self.submit_prepared(prepared)[0]
        finally:
            shutil.rmtree(incoming, ignore_errors=True)


_HTTP_FILES = ("scan", "ecert")
_HTTP_PARTS = ("base64", "name")
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


def _suffix(name: str) -> str:
    """The file-name extension of ``name`` (lower case) when it is a plain one, else ''."""
    suffix = PurePath(name).suffix
    return suffix.lower() if _SUFFIX.fullmatch(suffix) else ""


def _duplicate(request_id: str, state: str, verdict: VerdictKind | None = None) -> SubmitOutcome:
    answer = f", verdict {verdict.value}" if verdict is not None else ""
    return SubmitOutcome(
        id=request_id,
        kind="request",
        added=False,
        state=state,
        verdict=None if verdict is None else verdict.value,
        message=f"{request_id} already queued (state {state}{answer}); nothing changed.",
    )


# -- inbox ---------------------------------------------------------------------------------


@dataclass
class InboxReport:
    done: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def _move_aside(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    name = path.name
    if len(name.encode("utf-8")) > 200:
        # Room for the stamp and ".error.txt" within the 255 bytes a name may have.
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        name = f"{name[:80]}-{digest}.json"
    target = folder / name
    if target.exists() or target.is_symlink():
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
        target = folder / f"{PurePath(name).stem}.{stamp}{path.suffix}"
    path.replace(target)
    return target


ERROR_SUFFIX = ".error.txt"


def poll_inbox(intake: Intake, inbox_dir: Path, *, min_age_s: float = 1.0) -> InboxReport:
    """Submit every ``*.json`` in the inbox; move each to ``done/`` or ``rejected/``.

    A rejected file gets ``<name>.error.txt`` beside it saying why. Whatever a file
    holds, it ends in one of the two folders and the files after it flow on: one bad
    file never blocks the inbox. Files younger than ``min_age_s`` are left for the next
    poll: they may still be being written.
    """
    inbox_dir = Path(inbox_dir)
    report = InboxReport()
    if not inbox_dir.is_dir():
        return report
    now = utcnow().timestamp()
    for path in sorted(inbox_dir.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            # lstat: a link's own age, never its target's (nothing is followed here).
            if now - path.lstat().st_mtime < min_age_s:
                continue
        except FileNotFoundError:
            continue  # another poller took it
        try:
            outcomes = intake.submit_files([path], follow_symlinks=False)
        except InputError as exc:
            _reject(path, inbox_dir, str(exc), report)
            continue
        except Exception as exc:
            # A bug must not block the inbox every poll: the file goes aside like bad input.
            logger.opt(exception=exc).error("Inbox: {} failed unexpectedly", path.name)
            why = f"{path}: could not be processed ({exc.__class__.__name__}); see the log."
            _reject(path, inbox_dir, why, report)
            continue
        _move_aside(path, inbox_dir / "done")
        for o in outcomes:
            logger.info("Inbox {}: {}", path.name, o.message)
        report.done.append(path.name)
    return report


def _reject(path: Path, inbox_dir: Path, why: str, report: InboxReport) -> None:
    try:
        moved = _move_aside(path, inbox_dir / "rejected")
    except FileNotFoundError:
        return  # another poller took it
    write_atomic(moved.with_name(moved.name + ERROR_SUFFIX), f"{why}\n")
    logger.warning("Inbox: rejected {}: {}", path.name, why)
    report.rejected.append(path.name)


# -- HTTP endpoint -------------------------------------------------------------------------


INTAKE_OFF = "This HTTP intake takes no requests: set [intake] token in robot.toml."


class IntakeServer:
    """The token-protected HTTP intake, in a background thread.

    It also answers ``/healthz``, ``/readyz`` and ``/metrics`` (:mod:`stampless.metrics`),
    without a token; with ``token`` None it answers only those (a daemon's health port).
    ``ready_checks`` are the process's own readiness checks (a running worker pool).
    """

    def __init__(
        self,
        intake: Intake,
        token: str | None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ready_checks: dict[str, Callable[[], bool]] | None = None,
    ) -> None:
        if token is not None and not token:
            raise InputError("The HTTP intake needs a token; set [intake] token in robot.toml.")
        self.intake = intake
        self._token = token.encode() if token is not None else None
        self.ready_checks = dict(ready_checks or {})
        self.read_timeout_s = intake.config.intake.read_timeout_s
        # Submissions touch one SQLite file and the spool; serialize them so two posts of
        # the same id cannot both spool at once.
        self._lock = threading.Lock()
        handler = self._handler()
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(
        cls, intake: Intake, *, ready_checks: dict[str, Callable[[], bool]] | None = None
    ) -> IntakeServer | None:
        """The configured server: with ``[intake] token`` the intake; without one but with
        ``[intake] port``, the health and metrics paths alone; else None."""
        cfg = intake.config.intake
        if not cfg.token:
            if not cfg.port:
                return None
            return cls(intake, None, cfg.host, cfg.port, ready_checks=ready_checks)
        from stampless.vault import resolve_secret

        token = resolve_secret(cfg.token, config=intake.config).reveal()
        return cls(intake, token, cfg.host, cfg.port, ready_checks=ready_checks)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> IntakeServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="intake-http", daemon=True
        )
        self._thread.start()
        logger.info("HTTP intake listening on {}", self.url)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _authorized(self, header: str | None) -> bool:
        if self._token is None or not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer ") :].strip().encode(), self._token)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("intake http: " + format, *args)

            # A client that sends less than its Content-Length (or nothing at all) is
            # answered 408 after this long instead of holding a thread forever.
            timeout = server.read_timeout_s

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                if status >= 400:
                    # The rest of a refused body is never read: close, do not reuse.
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes | None:
                """The body, exactly Content-Length bytes; None once an error is sent."""
                if self.headers.get("Transfer-Encoding"):
                    self._send(411, {"error": "Send the body with a Content-Length."})
                    return None
                text = self.headers.get("Content-Length") or ""
                length = int(text) if text.isascii() and text.isdigit() else -1
                if length <= 0:
                    self._send(411 if not text else 400, {"error": "Body size not accepted."})
                    return None
                if length > MAX_BODY_BYTES:
                    self._send(413, {"error": f"Bodies are at most {MAX_BODY_BYTES} bytes."})
                    return None
                try:
                    body = self.rfile.read(length)
                except TimeoutError:
                    body = b""
                if len(body) != length:
                    self._send(
                        408,
                        {"error": "The body ended before its Content-Length; send it whole."},
                    )
                    return None
                return body

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] in HEALTH_PATHS:
                    status, content_type, body = answer(
                        self.path, server.intake.config, server.ready_checks
                    )
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if self.path == "/health":  # the older name of /healthz
                    self._send(200, {"ok": True})
                    return
                if server._token is None:
                    self._send(404, {"error": INTAKE_OFF})
                    return
                if not server._authorized(self.headers.get("Authorization")):
                    self._send(401, {"error": "Send 'Authorization: Bearer <token>'."})
                    return
                if not self.path.startswith("/requests/"):
                    self._send(404, {"error": "Use GET /requests/<id> or POST /requests."})
                    return
                rid = self.path[len("/requests/") :]
                item = server.intake.queue.get(rid)
                if item is None:
                    self._send(404, {"error": f"No request {rid!r}."})
                    return
                self._send(
                    200,
                    {
                        "id": rid,
                        "state": item.state.value,
                        "verdict": item.verdict,
                        "deadline": item.deadline.isoformat(),
                        "overdue": item.overdue,
                    },
                )

            def do_POST(self) -> None:
                if server._token is None:
                    self._send(404, {"error": INTAKE_OFF})
                    return
                if not server._authorized(self.headers.get("Authorization")):
                    self._send(401, {"error": "Send 'Authorization: Bearer <token>'."})
                    return
                if self.path != "/requests":
                    self._send(404, {"error": "POST to /requests."})
                    return
                body = self._body()
                if body is None:
                    return
                try:
                    with server._lock:
                        outcome = server.intake.submit_http(body)
                except RequestConflict as exc:
                    self._send(409, {"error": str(exc)})
                    return
                except InputError as exc:
                    self._send(400, {"error": str(exc)})
                    return
                except Exception as exc:  # the endpoint must answer, and not leak details
                    logger.exception("HTTP intake failed: {}", exc.__class__.__name__)
                    self._send(500, {"error": "Internal error; see the daemon's log."})
                    return
                self._send(201 if outcome.added else 200, outcome.model_dump())

        return Handler
