"""Idempotency by content: a request id answers only the request it was first given.

The request id is the idempotency key, so a caller who sends a known id again must get
the stored verdict, and never a stranger's: a known id with a different claim, type,
case or scan is refused with :class:`~stampless.errors.RequestConflict` (exit 2, HTTP
409). Whether two submissions are "the same" is decided by :func:`request_digest`, the
SHA-256 of the canonical request with its files replaced by their SHA-256, so the same
scan under another name (or spooled, or inlined over HTTP) is the same content. The
priority is left out: it orders the queue and changes nothing in the verdict.

The digest is kept with the id everywhere the id is remembered: the queue item
(``content_sha256``) and the verdict (``request_sha256``, in the outbox, the review
store and the evidence bundle).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stampless.errors import RequestConflict
from stampless.models import Request, Verdict

if TYPE_CHECKING:
    from stampless.config import Config
    from stampless.queue import QueueItem

# Keys of a request that are not its content (see the module docstring).
_NOT_CONTENT = frozenset({"scan", "ecert", "priority"})


def _file_sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return "unreadable"
    return digest.hexdigest()


def content_of(request: Request, base_dir: Path) -> dict[str, Any]:
    """The canonical content of ``request``: what its digest covers."""
    body = request.model_dump(mode="json", exclude=set(_NOT_CONTENT))
    body["scan_sha256"] = _file_sha256(request.scan_path(base_dir))
    body["ecert_sha256"] = _file_sha256(request.ecert_path(base_dir))
    return body


def request_digest(request: Request, base_dir: Path) -> str:
    """The SHA-256 (hex) of the request's canonical content, files by their SHA-256."""
    canonical = json.dumps(
        content_of(request, base_dir), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def same_claim(a: Request, b: Request) -> bool:
    """True when two requests state the same thing (type, claim, case), files aside.

    For verdicts written before digests were kept, whose evidence still holds the
    request: the scan cannot be compared any more, the claim can.
    """
    keep = {"id", "type", "claim", "case_id"}
    return a.model_dump(mode="json", include=keep) == b.model_dump(mode="json", include=keep)


def refuse_conflict(request_id: str, where: str) -> RequestConflict:
    """The error for a known ``request_id`` sent with other content; ``where`` it is known."""
    return RequestConflict(
        f"Request id {request_id} is already known ({where}) with a different claim or scan; "
        "an id answers only the request it was first given. Send this request under a new "
        "id, or resend the original unchanged to get its verdict."
    )


def check_digest(request_id: str, stored: str | None, digest: str, where: str) -> None:
    """Raise :class:`RequestConflict` unless ``stored`` (when known) equals ``digest``."""
    if stored is not None and stored != digest:
        raise refuse_conflict(request_id, where)


def check_verdict(
    request: Request, digest: str, verdict: Verdict, *, evidence_dir: Path, where: str
) -> None:
    """Raise :class:`RequestConflict` unless ``verdict`` answers this very request.

    A verdict written before digests were kept is matched by the request its evidence
    bundle holds; without that bundle it cannot be matched, and is not given out.
    """
    if verdict.request_sha256 is not None:
        check_digest(request.id, verdict.request_sha256, digest, where)
        return
    stored = _bundle_request(evidence_dir, request.id)
    if stored is None or not same_claim(stored, request):
        raise refuse_conflict(request.id, where)


def check_item(request: Request, digest: str, item: QueueItem) -> None:
    """Raise :class:`RequestConflict` unless the queue ``item`` holds this very request."""
    # Items queued before digests were kept: their spooled request is the content.
    stored = item.content_sha256 or request_digest(item.request, item.base_dir)
    check_digest(request.id, stored, digest, f"queued, state {item.state.value}")


@dataclass(frozen=True)
class Answered:
    """The verdict an id already has, and whether it is final (in the outbox)."""

    verdict: Verdict
    in_outbox: bool


def check_answered(config: Config, request: Request, digest: str) -> Answered | None:
    """The verdict this request's id already has, in the outbox or waiting for a reviewer.

    Raises :class:`RequestConflict` when that verdict answers other content: every door
    (verify, submit, HTTP, the inbox) asks both places, since a reviewer's decision on
    another request would otherwise settle this one under the shared id.
    """
    from stampless.outbox import read_verdict
    from stampless.review.store import ReviewStore

    final = read_verdict(config.outbox_dir, request.id)
    if final is not None:
        check_verdict(
            request, digest, final, evidence_dir=config.evidence_dir, where="in the outbox"
        )
        return Answered(final, in_outbox=True)
    store = ReviewStore.existing(config)
    if store is None:
        return None
    waiting = store.get(request.id)
    if waiting is None:
        return None
    check_verdict(
        request,
        digest,
        waiting.verdict,
        evidence_dir=config.evidence_dir,
        where="waiting for a reviewer",
    )
    return Answered(waiting.verdict, in_outbox=False)


def check_queued(config: Config, request: Request, digest: str) -> None:
    """Raise :class:`RequestConflict` when the deployment's queue holds this id for other
    content (``stampless verify`` of an id that ``submit`` or HTTP queued)."""
    if not config.queue_path.exists():
        return
    from stampless.queue import open_queue

    queue = open_queue(config)
    try:
        item = queue.get(request.id)
    finally:
        queue.close()
    if item is not None:
        check_item(request, digest, item)


def _bundle_request(evidence_dir: Path, request_id: str) -> Request | None:
    path = Path(evidence_dir) / request_id / "request.json"
    try:
        return Request.model_validate_json(path.read_bytes())
    except (OSError, ValueError):
        return None
