"""Robot for the market-supervision enterprise registry (企业登记信息查询系统).

An ASP.NET WebForms look-alike: after login a frameset (menu + content frame), every
search is a POST carrying the page's ``__VIEWSTATE``, results are paged with
``__doPostBack('gvResults', 'Page$N')``, and a stale view state (after a re-login)
answers "页面状态已失效" instead of results.
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
from stampless.normalize import normalize_capital, normalize_date

REVOKED = "吊销"
STALE_FORM = "令牌"  # the one-time login form token was refused: a fresh page helps
FIELDS = {
    "credit_code": "统一社会信用代码",
    "company_name": "名称",
    "company_type": "类型",
    "legal_representative": "法定代表人",
    "registered_capital": "注册资本",
    "established_on": "成立日期",
    "address": "住所",
}


class MarketSupervisionRobot(Robot):
    """Business licences by unified social credit code (统一社会信用代码)."""

    system = "market_supervision"
    version = "1.0"
    login_message = "login.message"
    login_retryable = (STALE_FORM,)
    session_cookie = "ASP.NET_SessionId"

    async def is_logged_out(self, page: RobotPage) -> bool:
        # The login page comes back inside the content frame, not only at the top.
        return await super().is_logged_out(page) or await page["content.login"].exists()

    async def _search_form(self, page: RobotPage) -> None:
        if await page["search.credit_code"].exists():
            return
        if await page["menu.search"].exists():
            await page["menu.search"].click_and_wait(frame="content")
        else:
            await page.goto("/main")

    async def _search(self, page: RobotPage, *, code: str = "", name: str = "") -> None:
        await self._search_form(page)
        await page["search.company_name"].fill(name)
        await page["search.credit_code"].fill(code)
        await page["search.submit"].click_and_wait()
        if await page["search.stale"].exists():
            raise RobotError("The registry said its page state expired; the search is retried.")

    async def _open_detail(self, page: RobotPage, key: str) -> None:
        await self._search(page, code=key)
        if await page["search.no_result"].exists():
            await page.screenshot("search result: no record")
            raise RecordNotFound(f"The enterprise registry has no business with credit code {key}.")
        cells = await page.element("search.result_cells", code=key).all_inner_texts()
        if len(cells) < 6:
            raise RobotError("The enterprise registry's result table has an unexpected layout.")
        await page.screenshot("search result")
        if REVOKED in cells[5]:
            raise RecordRevoked(f"The business licence {key} is revoked ({cells[5]}).")
        await page.element("search.detail_link", code=key).click_and_wait()
        await page["detail.title"].locator()

    async def lookup(self, page: RobotPage, key: str) -> Record:
        await self._open_detail(page, key)
        fields = {
            name: await page.element("detail.value", label=label).inner_text()
            for name, label in FIELDS.items()
        }
        fields["established_on"] = (
            normalize_date(fields["established_on"]) or fields["established_on"]
        )
        fields["registered_capital"] = (
            normalize_capital(fields["registered_capital"]) or fields["registered_capital"]
        )
        await page.screenshot("record detail")
        return Record(system=self.system, key=key, fields=fields)

    async def fetch(self, page: RobotPage, key: str) -> Path:
        await self._open_detail(page, key)
        return await page.download("detail.archive")

    async def search_by_name(
        self, page: RobotPage, fragment: str, *, max_pages: int = 5
    ) -> list[str]:
        """Credit codes of businesses whose name holds ``fragment``, over the result pages.

        Pages are turned with ASP.NET postbacks (``__doPostBack('gvResults', 'Page$N')``).
        """
        await self._search(page, name=fragment)
        codes: list[str] = []
        for number in range(1, max_pages + 1):
            if number > 1:
                if not await page.element("search.next_page", page=str(number)).exists():
                    break
                await page.postback("gvResults", f"Page${number}", frame="content")
                if await page["search.stale"].exists():
                    raise RobotError("The registry said its page state expired while paging.")
            rows = await page["search.result_rows"].all_inner_texts()
            codes += [row.split()[1] for row in rows if len(row.split()) > 1]
        return codes


ROBOT = MarketSupervisionRobot
