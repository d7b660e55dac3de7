"""One-off verification: a request file in, a verdict in the outbox (or review queue) out.

This is what ``stampless verify`` and ``stampless demo`` run: intake's checks and routing
into a :class:`~stampless.intake.Job` (the same :func:`~stampless.intake.build_job` the
queue's intake uses), the pipeline under the queue's retry policy
(:func:`stampless.retry.run_with_retries`), then :func:`deliver`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from stampless.config import Config
from stampless.errors import ExitCode
from stampless.idempotency import check_answered, check_queued, request_digest
from stampless.intake import Job, build_job
from stampless.models import Request, Verdict, VerdictKind, utcnow
from stampless.outbox import FINAL_VERDICTS, publish, read_verdict
from stampless.pipeline import Pipeline
from stampless.retry import RetryPolicy, run_with_retries
from stampless.signing import Signer, production_signer

EXIT_CODES = {
    VerdictKind.verified: ExitCode.ok,
    VerdictKind.mismatch: ExitCode.not_verified,
    VerdictKind.not_found: ExitCode.not_verified,
    VerdictKind.needs_review: ExitCode.manual_review,
    VerdictKind.error: ExitCode.system_failure,
}


@dataclass(frozen=True)
class Outcome:
    """A verdict and where it went."""

    verdict: Verdict
    destination: Path | None  # the outbox file, or None when it went to the review store
    already_done: bool = False

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODES[self.verdict.verdict]


def deliver(config: Config, verdict: Verdict, job: Job, *, signer: Signer) -> Outcome:
    """Final verdicts go to the outbox, signed; needs_review goes to the review store."""
    with logger.contextualize(request_id=job.id):
        if verdict.verdict in FINAL_VERDICTS:
            published = publish(config.outbox_dir, verdict, signer=signer)
            if published.conflict is not None:
                raise published.conflict
            return Outcome(published.verdict, published.path)
        from stampless.review.store import ReviewStore

        ReviewStore.from_config(config).add(
            verdict, request=job.request, base_dir=job.base_dir, reason=" ".join(verdict.reasons)
        )
        return Outcome(verdict, None)


async def verify_request(
    config: Config,
    request: Request,
    base_dir: Path,
    *,
    pipeline: Pipeline,
    supersedes: str | None = None,
) -> Outcome:
    """Intake, process, deliver ``request``, unless its id already has a verdict.

    Intake checks and routes it into a :class:`~stampless.intake.Job` as it does for the
    queue (:func:`~stampless.intake.build_job`), so bad input fails here whatever the
    id. The stored verdict is given only to the same content: a known id with another
    claim or scan raises :class:`~stampless.errors.RequestConflict`. ``supersedes``: the
    id whose verdict this one replaces (a re-check, see :func:`recheck_request`).
    """
    job = build_job(
        config, pipeline.router, request, base_dir, received_at=utcnow(), supersedes=supersedes
    )
    digest = request_digest(request, base_dir)
    known = check_answered(config, request, digest)
    if known is not None and known.in_outbox:
        logger.info("{} already has a verdict in the outbox; nothing to do", request.id)
        return Outcome(known.verdict, config.outbox_dir / f"{request.id}.json", already_done=True)
    if known is not None:
        logger.info("{} is already waiting for a reviewer; nothing to do", request.id)
        return Outcome(known.verdict, None, already_done=True)
    check_queued(config, request, digest)
    pipeline.audit.append("received", request_id=request.id, type=request.type, via="verify")
    # The queue's retry policy, applied here in-process; its last failure exits 4.
    policy = RetryPolicy.from_config(config)
    verdict = await run_with_retries(pipeline, job, policy=policy, circuits=pipeline.circuits)
    return deliver(config, verdict, job, signer=pipeline.signer)


def recheck_request(config: Config, request_id: str) -> tuple[Request, Path]:
    """The request of a finished ``request_id`` again, under a re-check id, from its evidence.

    A verdict is never rewritten: the re-check is a new request ``<id>.recheck-<time>``
    with the same claim and scan (read from the sealed evidence bundle, whose hashes
    and signature are checked first), and its verdict says ``supersedes: <id>``.
    Returns the request and the folder its scan is in.
    """
    from stampless.errors import InputError
    from stampless.evidence import verify_bundle
    from stampless.outbox import recheck_name

    first = read_verdict(config.outbox_dir, request_id)
    if first is None:
        raise InputError(
            f"{request_id} has no verdict in the outbox to re-check; a request waiting for a "
            "reviewer is decided in the review console, and a new one is verified with "
            "'stampless verify REQUEST.json'."
        )
    folder = Path(first.evidence) if first.evidence else config.evidence_dir / request_id
    if not (folder / "manifest.json").is_file():
        raise InputError(
            f"The evidence of {request_id} is not in {folder}, so its claim and scan cannot "
            "be read again; verify the request file under a new id instead."
        )
    report = verify_bundle(folder)
    if report.problems:
        raise InputError(
            f"The evidence of {request_id} in {folder} does not match its manifest "
            f"({report.problems[0]}); it is not re-checked."
        )
    data = json.loads((folder / "request.json").read_text(encoding="utf-8"))
    files = (report.manifest or {}).get("files", [])
    for entry in files:
        name = str(entry["name"])
        if entry["kind"] == "scan":
            data["scan"] = name
        elif name.startswith("ecert."):
            data["ecert"] = name
    data.update(id=recheck_name(request_id), case_id=None)
    return Request.model_validate(data), folder


async def verify_file(
    config: Config, path: Path | None, *, dev: bool = False, recheck: str | None = None
) -> Outcome:
    """``stampless verify REQUEST.json`` (or ``--recheck ID``): validate, process, deliver.

    Refuses to start when a secret robot.toml names does not resolve, or without a
    configured signing key (``dev``: the development key).
    """
    from stampless.vault import require_secrets

    signer = production_signer(config, dev=dev)
    require_secrets(config)
    if recheck is not None:
        request, base_dir = recheck_request(config, recheck)
    else:
        assert path is not None
        request = Request.from_file(path)
        base_dir = path.resolve().parent
    async with Pipeline(config, signer=signer) as pipeline:
        return await verify_request(
            config, request, base_dir, pipeline=pipeline, supersedes=recheck
        )
