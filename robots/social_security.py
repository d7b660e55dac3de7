"""Robot for the social-security contribution registry (社会保险参保缴费查询系统).

Confidential records (manual tier): the login asks for a TOTP code, the query runs in
an iframe, "no record" is an ``alert()``, and opening a record asks a ``confirm()``
that must be accepted (its text goes into the evidence).
"""

from __future__ import annotations

from pathlib import Path

from stampless import (
    Record,
    RecordNotFound,
    RecordRevoked,
    Robot,
    RobotError,
    RobotPage,
)
from stampless.checksums import mask_id
from stampless.normalize import normalize_month

NOT_FOUND_ALERT = "未查询到该人员的参保缴费记录"
REVOKED = "已注销"
# Refusals a retry can fix: a stale one-time form token, a TOTP code at a step boundary.
RETRYABLE_LOGIN_ERRORS = ("令牌", "动态口令")
FIELDS = {
    "person_name": "姓名",
    "person_id": "社会保障号码",
    "employer": "参保单位",
    "period_from": "缴费起始年月",
    "period_to": "缴费截止年月",
    "months_paid": "累计缴费月数",
}


class SocialSecurityRobot(Robot):
    """Contribution records by social security number (社会保障号码, the resident ID)."""

    system = "social_security"
    version = "1.0"
    login_retryable = RETRYABLE_LOGIN_ERRORS
    session_cookie = "PHPSESSID"

    async def is_logged_out(self, page: RobotPage) -> bool:
        return await super().is_logged_out(page) or await page["main.login"].exists()

    async def _open_detail(self, page: RobotPage, key: str) -> None:
        if not await page["query.person_id"].exists():
            if await page["menu.query"].exists():
                await page["menu.query"].click_and_wait(frame="main")
            else:
                await page.goto("/index")
        await page["query.person_id"].fill(key)
        await page["query.submit"].click_and_wait()
        if any(NOT_FOUND_ALERT in d.message for d in page.dialogs):
            await page.screenshot("query result: no record")
            raise RecordNotFound(f"The social-security registry has no record for {mask_id(key)}.")
        cells = await page["query.result_cells"].all_inner_texts()
        if len(cells) < 3:
            raise RobotError("The social-security result table has an unexpected layout.")
        await page.screenshot("query result")
        # The record is confidential: the system asks to confirm; the answer is evidence.
        async with page.expect_dialog(accept=True):
            await page["query.view"].click_and_wait()
        await page["detail.title"].locator()

    async def lookup(self, page: RobotPage, key: str) -> Record:
        await self._open_detail(page, key)
        fields = {
            name: await page.element("detail.value", label=label).inner_text()
            for name, label in FIELDS.items()
        }
        for name in ("period_from", "period_to"):
            fields[name] = normalize_month(fields[name]) or fields[name]
        status = await page.element("detail.value", label="记录状态").inner_text()
        await page.screenshot("record detail")
        if REVOKED in status:
            raise RecordRevoked(f"The social-security record of {mask_id(key)} is cancelled.")
        return Record(system=self.system, key=key, fields=fields)

    async def fetch(self, page: RobotPage, key: str) -> Path:
        await self._open_detail(page, key)
        return await page.download("detail.archive")


ROBOT = SocialSecurityRobot
