"""The push: final verdicts taken back to the system their request came from.

A delivery target beside the webhook (``[delivery] push = "service_hall"``). Every
final verdict in the outbox of a request that a robot job of that system took in (the
job ledger knows which) is handed to the system robot's ``push`` operation, on a
logged-in page, under the same locks, retries and evidence as a lookup. Verdicts of
other requests are marked ``skipped``. A ``needs_review`` item reaches the outbox only
once a reviewer decided, so it is pushed only then.

:class:`Pusher` reuses the webhook delivery's bookkeeping (:class:`stampless.delivery.
Delivery`: the outbox journal, one row per verdict, attempts with backoff) in its own
``<var_dir>/push.db``. Each push is evidence: a sealed bundle ``PUSH-<id>-<time>`` with
the robot's screenshots before and after, and a ``pushed`` entry in the audit chain.
The robot's push must be idempotent: it looks at what the page already holds before it
writes, since a crash after the system saved and before ``push.db`` did means the push
runs again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from stampless._logging import scrub
from stampless.delivery import Delivery, DeliveryReport
from stampless.errors import StamplessError
from stampless.outbox import read_verdict

if TYPE_CHECKING:
    from stampless.audit import AuditLog
    from stampless.config import Config
    from stampless.jobs import JobLedger
    from stampless.models import Verdict
    from stampless.robot import RobotRuntime
    from stampless.signing import Signer


@dataclass
class PushContext:
    """What a robot's push operation gets (a :class:`stampless.JobContext` and more)."""

    name: str
    verdict: Verdict
    #: The file to put on the application: the certificate the robot fetched from the
    #: department (materials exemption), else the verdict's evidence report (HTML).
    attachment: Path
    #: The sealed evidence bundle's id and manifest SHA-256, for the comment.
    bundle_id: str
    manifest_sha256: str

    def known(self, request_id: str) -> bool:
        return True


def attachment_of(config: Config, verdict: Verdict) -> Path:
    """The fetched certificate in the verdict's bundle, else its report (written now)."""
    from stampless.report import default_report_path, write_report

    bundle = (
        Path(verdict.evidence) if verdict.evidence else config.evidence_dir / verdict.request_id
    )
    try:
        manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {"files": []}
    for entry in manifest.get("files", []):
        if entry.get("kind") == "download":
            return bundle / str(entry["name"])
    report = default_report_path(bundle)
    return report if report.is_file() else write_report(bundle, audit_dir=config.audit_dir)


class Pusher(Delivery):
    """Pushes final verdicts to ``system`` through its robot's ``operation``."""

    def __init__(self, config: Config, ledger: JobLedger, audit: AuditLog) -> None:
        push = config.delivery
        assert push.push is not None
        super().__init__(
            config.var_dir / "push.db",
            config.outbox_dir,
            url=f"robot:{push.push}",
            max_attempts=push.max_attempts,
        )
        self.config = config
        self.system = push.push
        self.operation = push.operation
        self.ledger = ledger
        self.audit = audit

    @classmethod
    def for_config(cls, config: Config, ledger: JobLedger) -> Pusher | None:
        """The configured push, or None when robot.toml has no ``[delivery] push``."""
        if config.delivery.push is None:
            return None
        from stampless.audit import AuditLog

        config.system_config(config.delivery.push)
        audit = AuditLog(config.audit_dir, rotate_bytes=config.audit.rotate_bytes)
        return cls(config, ledger, audit)

    async def push_pending(
        self, runtime: RobotRuntime, signer: Signer | None, *, limit: int = 50
    ) -> DeliveryReport:
        """One pass: every due verdict pushed (or skipped), each outcome recorded."""
        report = DeliveryReport()
        runtime.require_operation(self.system, self.operation)
        for name, attempts in self.due(limit=limit):
            # Audit checkpoints and the verdicts of other requests share the outbox.
            verdict = None
            if self.ledger.taken_from(name) == self.system:
                try:
                    verdict = read_verdict(self.outbox_dir, name)
                except StamplessError as exc:
                    logger.warning("Push of {}: its outbox file is unreadable: {}", name, exc)
            if verdict is None:
                self.record(name, attempts + 1, None, ok=True, error="skipped", final=False)
                continue
            try:
                await self._push(runtime, signer, verdict)
            except (StamplessError, OSError) as exc:
                final = attempts + 1 >= self.max_attempts
                self.record(name, attempts + 1, None, ok=False, error=scrub(str(exc)), final=final)
                (report.gave_up if final else report.failed).append(name)
                logger.warning("Push of {} to {} failed: {}", name, self.system, exc)
                continue
            self.record(name, attempts + 1, None, ok=True, error=None, final=False)
            report.delivered.append(name)
        return report

    async def _push(self, runtime: RobotRuntime, signer: Signer | None, verdict: Verdict) -> None:
        from stampless.evidence import EvidenceBundle
        from stampless.models import utcnow

        name = verdict.request_id
        context = PushContext(
            name=name,
            verdict=verdict,
            attachment=attachment_of(self.config, verdict),
            bundle_id=Path(verdict.evidence).name if verdict.evidence else name,
            manifest_sha256=verdict.manifest_sha256 or "",
        )
        bundle = None
        if signer is not None:
            stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
            bundle = EvidenceBundle.open(self.config.evidence_dir, f"PUSH-{name}-{stamp}")
            bundle.set_meta(purpose="push", pushed=name, system=self.system)
        try:
            await runtime.operate(self.system, self.operation, context, evidence=bundle)
        except BaseException as exc:
            if bundle is not None and signer is not None:
                bundle.seal(signer, verdict={"pushed": name, "error": scrub(str(exc))})
            raise
        sealed = None
        if bundle is not None and signer is not None:
            sealed = bundle.seal(signer, verdict={"pushed": name, "verdict": verdict.verdict.value})
        assert self.audit is not None  # set in __init__
        self.audit.append(
            "pushed",
            request_id=name,
            system=self.system,
            verdict=verdict.verdict.value,
            evidence=sealed.path.name if sealed is not None else None,
        )
        logger.info("{} pushed to {} ({})", name, self.system, verdict.verdict.value)
