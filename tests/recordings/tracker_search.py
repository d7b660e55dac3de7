import asyncio
import re
from playwright.async_api import Playwright, async_playwright, expect


async def run(playwright: Playwright) -> None:
    browser = await playwright.chromium.launch(headless=False)
    context = await browser.new_context(
        locale="en-GB", storage_state="var/sessions/tracker/agent.json", timezone_id="UTC"
    )
    page = await context.new_page()
    await page.goto("http://127.0.0.1:8800/issues")
    await page.get_by_role("textbox", name="Ticket").click()
    await page.get_by_role("textbox", name="Ticket").fill("TRK-1003")
    await page.get_by_role("button", name="Search").click()
    await page.get_by_role("link", name="Open").click()
    await page.get_by_text("Badge reader rejects new cards").click()
    await page.get_by_role("link", name="Service report (scan)").click()
    await page.goto("http://127.0.0.1:8800/issues")
    await page.get_by_label("Ticket").fill("TRK-100")
    await page.locator("#search-btn").click()
    await page.get_by_role("row", name="TRK-1002").get_by_role("link").click()

    # ---------------------
    await context.close()
    await browser.close()


async def main() -> None:
    async with async_playwright() as playwright:
        await run(playwright)


asyncio.run(main())
