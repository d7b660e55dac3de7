"""The manual-review queue: where it is opened, and the sealed record of a decision.

The store's interface and the logic every backend shares are in
:mod:`stampless.review.abc`; the backends in ``review/sqlite.py`` (the embedded
default, a table in ``<var_dir>/queue.db``) and ``review/postgres.py`` (``[store]
backend = "postgres"``). Open the deployment's store with ``ReviewStore.from_config(config)``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from stampless.review.abc import (
    FINAL_DECISIONS,
    MAX_REASON,
    ReviewConflict,
    ReviewItem,
    ReviewNote,
    ReviewStore,
)

if TYPE_CHECKING:
    from stampless.models import Verdict
    from stampless.signing import Signer

__all__ = [
    "FINAL_DECISIONS",
    "MAX_REASON",
    "REVIEW_SUFFIX",
    "ReviewConflict",
    "ReviewItem",
    "ReviewNote",
    "ReviewStore",
    "review_bundle_id",
    "seal_review",
]

REVIEW_SUFFIX = ".review"


def review_bundle_id(request_id: str) -> str:
    """The id of the bundle that holds a request's review decision: ``<id>.review``.

    Ids near the 128-character limit are shortened with a hash so the name stays valid.
    """
    if len(request_id) + len(REVIEW_SUFFIX) <= 128:
        return request_id + REVIEW_SUFFIX
    digest = hashlib.sha256(request_id.encode("utf-8")).hexdigest()[:16]
    return f"{request_id[:100]}-{digest}{REVIEW_SUFFIX}"


def seal_review(
    evidence_dir: Path, item: ReviewItem, final: Verdict, *, reason: str, signer: Signer
) -> Path | None:
    """Seal the decision as ``<evidence_dir>/<id>.review/`` referring to the original bundle."""
    from stampless.evidence import EvidenceBundle

    review_id = review_bundle_id(item.request_id)
    if EvidenceBundle.exists(evidence_dir, review_id):
        return None
    bundle = EvidenceBundle.open(evidence_dir, review_id)
    bundle.add_json(
        "decision.json",
        {
            "request_id": item.request_id,
            "decision": final.verdict.value,
            "reviewer": final.decided_by,
            "reason": reason,
            "decided_at": final.finished_at.isoformat(),
            "deadline": None if item.deadline is None else item.deadline.isoformat(),
            "sla_met": final.sla_met,
            "original_evidence": item.evidence,
            "original_manifest_sha256": item.verdict.manifest_sha256,
            "notes": [n.model_dump(mode="json") for n in item.notes],
        },
        kind="other",
        caption="the reviewer's decision",
    )
    bundle.set_meta(review_of=item.request_id, reviewer=final.decided_by)
    sealed = bundle.seal(signer, verdict=final)
    return Path(sealed.path)
