"""Robot for the exit-entry administration's work-permit check (外国人工作许可核查系统).

The query form asks which number is given (a list: 许可证号 or 护照号码) before the
number itself; the answer comes back on the same page in a fieldset, "no match" as a
page message. Names, nationalities and passport numbers are Latin; dates are ISO.
"""

from __future__ import annotations

from pathlib import Path

from stampless import Record, RecordNotFound, RecordRevoked, Robot, RobotPage
from stampless.normalize import normalize_date

REVOKED = "已注销"
STALE_FORM = "令牌"  # the one-time login form token was refused: a fresh page helps
FIELDS = {
    "permit_no": "许可证号",
    "holder_name": "姓名 Name",
    "birth_date": "出生日期",
    "nationality": "国籍",
    "passport_no": "护照号码",
    "employer": "工作单位",
    "issued_on": "发证日期",
    "valid_until": "有效期至",
}
DATES = ("birth_date", "issued_on", "valid_until")


class ExitEntryRobot(Robot):
    """Foreigners' work permits by permit number (许可证号)."""

    system = "exit_entry"
    version = "1.0"
    login_retryable = (STALE_FORM,)
    session_cookie = "SID"

    async def _query(self, page: RobotPage, key: str) -> None:
        # After a query the page still shows the form: no need to load it again.
        if not await page["query.form"].exists():
            await page.goto("/permit")
        await page["query.type"].select("permit_no")
        await page["query.number"].fill(key)
        await page["query.submit"].click_and_wait()
        if await page["query.not_found"].exists():
            await page.screenshot("query result: no permit")
            raise RecordNotFound(f"The exit-entry administration has no work permit {key}.")
        await page["result.title"].locator()
        await page.screenshot("query result")
        status = await page.element("result.value", label="证件状态").text()
        if REVOKED in status:
            raise RecordRevoked(f"Work permit {key} is marked {REVOKED} (revoked).")

    async def lookup(self, page: RobotPage, key: str) -> Record:
        await self._query(page, key)
        fields = {
            name: await page.element("result.value", label=label).text()
            for name, label in FIELDS.items()
        }
        for name in DATES:
            fields[name] = normalize_date(fields[name]) or fields[name]
        return Record(system=self.system, key=key, fields=fields, url=page.url)

    async def fetch(self, page: RobotPage, key: str) -> Path:
        await self._query(page, key)
        return await page.download("result.scan")


ROBOT = ExitEntryRobot
