"""Robot for the civil-affairs marriage registry (婚姻登记信息查询系统).

The system is GBK-encoded, shows "no such record" as a JavaScript ``alert()``, lists a
hit in a layout table without ids, and opens the record in a ``window.open`` popup
that links to the archived scan. The worked example of docs/robots.md.
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
from stampless.normalize import normalize_date

NOT_FOUND_ALERT = "未找到该结婚登记记录"
REVOKED = "已注销"
STALE_FORM = "令牌"  # the one-time login form token was refused: a fresh page helps


class CivilAffairsRobot(Robot):
    """Marriage records by certificate number (结婚证字号)."""

    system = "civil_affairs"
    version = "1.0"
    login_retryable = (STALE_FORM,)
    session_cookie = "JSESSIONID"

    async def _search(self, page: RobotPage, key: str) -> None:
        # After a lookup the page still shows the search form: no need to load it again.
        if not await page["search.form"].exists():
            await page.goto("/search")
        await page["search.cert_no"].fill(key)
        await page["search.submit"].click_and_wait()
        not_found = any(NOT_FOUND_ALERT in d.message for d in page.dialogs)
        if not_found or await page["search.no_result"].exists():
            await page.screenshot("search result: no record")
            raise RecordNotFound(f"The marriage registry has no record {key}.")

    async def _open_detail(self, page: RobotPage, key: str) -> RobotPage:
        await self._search(page, key)
        cells = await page["search.result_cells"].all_inner_texts()
        if len(cells) < 5:
            raise RobotError("The marriage registry's result table has an unexpected layout.")
        await page.screenshot("search result")
        if REVOKED in cells[4]:
            raise RecordRevoked(f"Marriage record {key} is marked {REVOKED} (revoked).")
        detail = await page.open_popup("search.view")
        await detail["detail.title"].locator()
        return detail

    async def lookup(self, page: RobotPage, key: str) -> Record:
        detail = await self._open_detail(page, key)

        async def value(label: str) -> str:
            return await detail.element("detail.value", label=label).inner_text()

        async def person(block: str, label: str) -> str:
            return await detail.element(
                "detail.person_value", block=block, label=label
            ).inner_text()

        def as_date(text: str) -> str:
            return normalize_date(text) or text

        fields = {
            "cert_no": await value("结婚证字号"),
            "registered_on": as_date(await value("登记日期")),
            "holder_name": await person("持证人信息", "姓名"),
            "holder_id": await person("持证人信息", "身份证件号"),
            "holder_birth": as_date(await person("持证人信息", "出生日期")),
            "spouse_name": await person("配偶信息", "姓名"),
            "spouse_id": await person("配偶信息", "身份证件号"),
            "spouse_birth": as_date(await person("配偶信息", "出生日期")),
        }
        await detail.screenshot("record detail")
        return Record(system=self.system, key=key, fields=fields, url=detail.url.split("?")[0])

    async def fetch(self, page: RobotPage, key: str) -> Path:
        detail = await self._open_detail(page, key)
        return await detail.download("detail.archive")


ROBOT = CivilAffairsRobot
