"""Robot for the service hall's approval system (政务服务大厅行政审批受理系统).

The hall is where applications come in and where verified materials go back. It has no
records to look up: its robot runs scheduled operations instead (docs/robots.md,
"Scheduled robot jobs").

``harvest`` reads the pending applications (20 a page, no ids) and hands intake one
request per material still waiting for verification, ``<application>.<material>``
(idempotent: a material taken in before is skipped without opening its page twice).
A material the applicant uploaded a scan of is verified with that scan; an exempt one
(未上传（免提交）) asks for the department's archived certificate (``fetch``). The SLA
clock starts at the application's own time on the hall's system.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from stampless import (
    JobContext,
    PushContext,
    Request,
    Robot,
    RobotError,
    RobotPage,
    Submission,
    VerdictKind,
    operation,
)
from stampless.normalize import normalize_date

HALL_ZONE = ZoneInfo("Asia/Shanghai")  # the zone the hall prints times in
PENDING = "待核验"
# The hall's status select: verified, refused; and how each reads on the page.
VERIFIED, REFUSED = "1", "2"
STATUS_TEXT = {VERIFIED: "核验通过", REFUSED: "核验不通过"}
VERDICT_TEXT = {
    VerdictKind.verified: "核验通过",
    VerdictKind.mismatch: "信息不一致",
    VerdictKind.not_found: "部门无此记录",
    VerdictKind.needs_review: "人工审核",
    VerdictKind.error: "无法核验",
}
# The material's title on the hall -> document type, and its rows -> claim fields.
MATERIALS: dict[str, tuple[str, dict[str, str]]] = {
    "结婚证": (
        "marriage_certificate",
        {
            "证照编号": "cert_no",
            "持证人": "holder_name",
            "身份证件号": "holder_id",
            "登记日期": "registered_on",
        },
    ),
    "营业执照": (
        "business_license",
        {
            "证照编号": "credit_code",
            "企业名称": "company_name",
            "法定代表人": "legal_representative",
        },
    ),
    "参保缴费证明": ("social_security_record", {"证照编号": "person_id", "姓名": "person_name"}),
}


def request_id(application: str, material: str) -> str:
    """The request id of one material of one application: the idempotency key."""
    return f"{application}.{material}"


def opinion(job: PushContext) -> str:
    """The comment a push writes: the verdict, its reason, the evidence bundle."""
    verdict = job.verdict
    text = VERDICT_TEXT.get(verdict.verdict, verdict.verdict.value)
    if verdict.decided_by:
        text += "（人工审核确认）"
    reason = "" if verdict.verdict is VerdictKind.verified else f"；原因：{verdict.reasons[0]}"
    return (
        f"stampless 核验结论：{text}{reason if verdict.reasons else ''}；"
        f"证据包 {job.bundle_id}（{job.manifest_sha256[:16]}）"
    )


class ServiceHallRobot(Robot):
    """Pending applications in, verified materials back."""

    system = "service_hall"
    version = "1.0"
    session_cookie = "HALLSID"

    def __init__(self) -> None:
        # Applications all of whose materials were taken in: not opened again.
        self._taken: set[str] = set()

    @operation(returns="requests")
    async def harvest(self, page: RobotPage, job: JobContext) -> list[Submission]:
        """One submission per pending material not taken in yet."""
        applications = await self._pending(page)
        out: list[Submission] = []
        for application in applications:
            if application in self._taken:
                continue
            out += await self._materials(page, application, job)
            self._taken.add(application)
        self._taken &= set(applications)  # served applications leave the list
        await page.screenshot(f"harvest: {len(applications)} pending, {len(out)} new")
        return out

    async def _pending(self, page: RobotPage) -> list[str]:
        await page.goto("/pending")
        await page["pending.title"].locator()
        ids: list[str] = []
        while True:
            if await page["pending.ids"].exists():
                ids += [text.strip() for text in await page["pending.ids"].all_inner_texts()]
            if not await page["pending.next"].exists():
                return ids
            await page["pending.next"].click_and_wait()

    async def _materials(
        self, page: RobotPage, application: str, job: JobContext
    ) -> list[Submission]:
        """The submissions of one application's materials that intake has not seen."""
        await page.goto(f"/application/{application}")
        received = await page.element("application.value", label="申请时间").inner_text()
        received_at = (
            datetime.strptime(received.strip(), "%Y-%m-%d %H:%M:%S")
            .replace(tzinfo=HALL_ZONE)
            .astimezone(UTC)
        )
        titles = await page["application.materials"].all_inner_texts()
        out: list[Submission] = []
        for n, title in enumerate(titles, start=1):
            kind = MATERIALS.get(title.split("：", 1)[-1].strip())

            async def value(label: str, n: int = n) -> str:
                element = page.element("material.value", n=str(n), label=label)
                return (await element.inner_text()).strip()

            if kind is None:
                continue  # a material no robot verifies: staff handle it at the window
            if await value("核验状态") != PENDING:
                continue
            rid = request_id(application, await value("材料编号"))
            if job.known(rid):
                continue
            doc_type, labels = kind
            claim = {field: await value(label) for label, field in labels.items()}
            for field, text in claim.items():
                if field.endswith("_on"):
                    claim[field] = normalize_date(text) or text
            scan = None
            if "查看扫描件" in await value("申请人上传"):
                scan = await page.save(page.element("material.scan", n=str(n)))
            request = Request(id=rid, type=doc_type, claim=claim, fetch=scan is None)
            out.append(Submission(request=request, scan=scan, received_at=received_at))
        return out

    @operation(returns="nothing")
    async def push(self, page: RobotPage, job: PushContext) -> None:
        """Put a final verdict on its material: the file, the status, a comment.

        Idempotent: the upload is named after the request, and a material whose files
        already hold that name was saved (upload, status and comment are one save), so a
        second push after a crash writes nothing.
        """
        application, mid = job.name.rsplit(".", 1)
        await page.goto(f"/application/{application}")
        titles = await page["application.materials"].all_inner_texts()
        n = 0
        for index in range(1, len(titles) + 1):
            number = page.element("material.value", n=str(index), label="材料编号")
            if (await number.inner_text()).strip() == mid:
                n = index
        if not n:
            raise RobotError(f"Application {application} on the hall has no material {mid}.")
        filename = job.name + job.attachment.suffix
        uploaded = await page.element("material.value", n=str(n), label="已上传材料").inner_text()
        if filename in uploaded.split():
            await page.screenshot(f"already pushed: {filename}")
            return
        await page.screenshot(f"before push: {job.name}")
        status = VERIFIED if job.verdict.verdict is VerdictKind.verified else REFUSED
        await page["handle.material"].select_option(mid)
        with tempfile.TemporaryDirectory(prefix="stampless-push-") as folder:
            staged = Path(folder) / filename  # the name the hall shows
            shutil.copyfile(job.attachment, staged)
            await page["handle.attachment"].set_input_files(staged)
            await page["handle.status"].select_option(status)
            await page["handle.opinion"].fill(opinion(job))
            async with page.expect_dialog(accept=True):
                await page["handle.save"].click_and_wait()
        if not await page["handle.saved"].exists():
            raise RobotError(f"The hall did not confirm saving {job.name}; it is pushed again.")
        await page.screenshot(f"after push: {job.name} {STATUS_TEXT[status]}")


ROBOT = ServiceHallRobot
