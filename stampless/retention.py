"""Evidence retention: a bundle past ``[evidence] retention`` gives way to a signed tombstone.

``stampless evidence prune`` (and the scheduled job of kind ``prune_evidence``) removes
each sealed bundle that finished longer ago than the retention, with its HTML report and
its spooled request, and leaves in its folder one file, ``tombstone.json``
(``stampless-tombstone/1``): which bundle it was (its manifest's SHA-256, the names,
sizes and hashes of its files), its verdict, when and why it was removed, signed by the
deployment's key. The folder stays, so the request id can never be given new evidence;
the audit chain is never touched (it holds hashes, not files) and records each removal
(``evidence_pruned``), so it stays verifiable; the outbox verdict stays, and ``evidence
verify`` checks it against the tombstone.

A bundle whose request still waits for a reviewer is kept whatever its age.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from loguru import logger

from stampless._files import fsync_dir, write_atomic
from stampless.config import Config
from stampless.evidence import MANIFEST, BundleSummary, list_bundles
from stampless.models import utcnow
from stampless.signing import Signer, TrustedKeys, document_problems, sign_document

TOMBSTONE = "tombstone.json"
FORMAT = "stampless-tombstone/1"


@dataclass(frozen=True)
class Pruned:
    """One bundle removed (or, on a dry run, to be removed)."""

    request_id: str
    finished_at: datetime | None
    verdict: str | None
    size: int
    tombstone: Path | None  # None on a dry run

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "verdict": self.verdict,
            "size": self.size,
            "tombstone": None if self.tombstone is None else str(self.tombstone),
        }


def read_tombstone(folder: Path) -> dict[str, Any] | None:
    """The tombstone in a pruned bundle's folder, or None when the bundle is there."""
    try:
        doc = json.loads((Path(folder) / TOMBSTONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def tombstone_problems(
    doc: dict[str, Any], trusted: TrustedKeys | None, *, manifest_sha256: str | None = None
) -> list[str]:
    """Why a tombstone does not hold: its signature, and (given the outbox verdict's
    ``manifest_sha256``) whether it names the bundle that verdict was sealed with."""
    problems = document_problems(doc, trusted)
    if manifest_sha256 is not None and doc.get("manifest_sha256") != manifest_sha256:
        problems.append(
            "it names another bundle than the outbox verdict (manifest SHA-256 differs)"
        )
    return problems


def due(
    config: Config, older_than: timedelta, *, now: datetime | None = None
) -> list[BundleSummary]:
    """Sealed bundles that finished before ``now - older_than``, oldest first, except
    those whose request waits for a reviewer."""
    from stampless.review.store import ReviewStore

    cutoff = (now or utcnow()) - older_than
    review = ReviewStore.existing(config)
    out = []
    for bundle in reversed(list_bundles(config.evidence_dir)):
        if bundle.finished_at is None or bundle.finished_at >= cutoff:
            continue
        waiting = review.get(bundle.request_id) if review is not None else None
        if waiting is not None and waiting.decision is None:
            continue
        out.append(bundle)
    return out


def prune(
    config: Config,
    signer: Signer | None,
    *,
    older_than: timedelta,
    reason: str,
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[Pruned]:
    """Replace each bundle :func:`due` names by a signed tombstone; see the module.

    ``signer`` may be None only for a dry run. ``reason`` is written into each tombstone
    ("retention 90d").
    """
    from stampless.audit import AuditLog

    _finish_interrupted(config.evidence_dir)
    audit = None if dry_run else AuditLog(config.audit_dir, rotate_bytes=config.audit.rotate_bytes)
    done: list[Pruned] = []
    for bundle in due(config, older_than, now=now):
        if dry_run or signer is None:
            done.append(
                Pruned(bundle.request_id, bundle.finished_at, bundle.verdict, bundle.size, None)
            )
            continue
        tombstone = _bury(config, bundle, signer, reason)
        doc = json.loads(tombstone.read_bytes())
        assert audit is not None
        audit.append(
            "evidence_pruned",
            request_id=bundle.request_id,
            manifest_sha256=doc["manifest_sha256"],
            reason=reason,
            tombstone_sha256=hashlib.sha256(tombstone.read_bytes()).hexdigest(),
        )
        for leftover in (
            config.var_dir / "reports" / f"{bundle.request_id}.html",
            config.var_dir / "spool" / bundle.request_id,
        ):
            # A report embeds the bundle's images; the spool holds the request's scan.
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        logger.info("evidence: {} pruned ({}); tombstone {}", bundle.request_id, reason, tombstone)
        done.append(
            Pruned(bundle.request_id, bundle.finished_at, bundle.verdict, bundle.size, tombstone)
        )
    return done


def _bury(config: Config, bundle: BundleSummary, signer: Signer, reason: str) -> Path:
    """Swap ``bundle``'s folder for one holding only its signed tombstone."""
    folder = bundle.path
    manifest_bytes = (folder / MANIFEST).read_bytes()
    manifest = json.loads(manifest_bytes)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "kind": "evidence_tombstone",
        "request_id": bundle.request_id,
        "type": bundle.type,
        "verdict": bundle.verdict,
        "finished_at": bundle.finished_at.isoformat() if bundle.finished_at else None,
        "removed_at": utcnow().isoformat(),
        "reason": reason,
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "manifest_key_id": (manifest.get("signature") or {}).get("key_id"),
        "files": [
            {k: f.get(k) for k in ("name", "sha256", "size", "kind")} for f in manifest["files"]
        ],
        "size": bundle.size,
    }
    doc["signature"] = sign_document(signer, doc)
    fresh = folder.with_name(f".{folder.name}.tombstone")
    old = folder.with_name(f".{folder.name}.pruned")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    write_atomic(fresh / TOMBSTONE, json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
    fsync_dir(fresh)
    # Two renames: at every moment the id's folder holds the bundle or its tombstone
    # (between them, neither: _finish_interrupted completes it on the next run).
    folder.rename(old)
    fresh.rename(folder)
    fsync_dir(folder.parent)
    shutil.rmtree(old)
    return folder / TOMBSTONE


def _finish_interrupted(evidence_dir: Path) -> None:
    """Complete the swaps a crash cut short, so no bundle is left half removed."""
    if not evidence_dir.is_dir():
        return
    for old in evidence_dir.glob(".*.pruned"):
        folder = evidence_dir / old.name[1 : -len(".pruned")]
        fresh = evidence_dir / f".{folder.name}.tombstone"
        if not folder.exists() and (fresh / TOMBSTONE).is_file():
            fresh.rename(folder)
        if (folder / TOMBSTONE).is_file():
            shutil.rmtree(old, ignore_errors=True)
        elif not folder.exists():
            old.rename(folder)  # the tombstone was never written: the bundle stays
    for fresh in evidence_dir.glob(".*.tombstone"):
        shutil.rmtree(fresh, ignore_errors=True)
