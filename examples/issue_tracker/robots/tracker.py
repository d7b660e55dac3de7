"""Robot for the helpdesk tracker: service reports by ticket number.

An English interface (robot.toml sets locale = "en-GB"), a search box, a result table
with an "Open" link per hit, a definition list of fields, and the scanned report served
inline (no download event: ``page.save``). The second worked example of docs/robots.md.
"""

from __future__ import annotations

from pathlib import Path

from stampless import Record, RecordNotFound, RecordRevoked, Robot, RobotPage


class TrackerRobot(Robot):
    system = "tracker"
    version = "1"
    session_cookie = "tracker_sid"
    # login() is the base class's: login.username, login.password, login.submit on /login,
    # then check_login (login.error says why a login was refused).

    async def _open(self, page: RobotPage, key: str) -> None:
        await page.goto("/issues")
        await page["search.ticket"].fill(key)
        await page["search.submit"].click_and_wait()
        if await page["search.no_result"].exists():
            await page.screenshot("search: no such ticket")
            raise RecordNotFound(f"The tracker has no ticket {key}.")
        await page.screenshot("search result")
        await page.element("search.open", ticket=key).click_and_wait()

    async def lookup(self, page: RobotPage, key: str) -> Record:
        await self._open(page, key)

        async def value(label: str) -> str:
            return await page.element("detail.value", label=label).inner_text()

        status = await value("Status")
        opened = await value("Opened")  # "2024-03-05 09:30", in the browser's time zone
        fields = {
            "ticket": await value("Ticket"),
            "reporter": await value("Reporter"),
            "opened_on": opened[:10],
        }
        await page.screenshot("ticket")
        if status == "withdrawn":
            raise RecordRevoked(f"Ticket {key} was withdrawn.")
        return Record(system=self.system, key=key, fields=fields, url=page.url)

    async def fetch(self, page: RobotPage, key: str) -> Path:
        await self._open(page, key)
        return await page.save(page["detail.report"])  # served inline: no download event


ROBOT = TrackerRobot
