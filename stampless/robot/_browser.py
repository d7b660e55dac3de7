"""Finding and starting Chromium: one browser per worker process.

Order of preference: ``browser.executable_path`` in robot.toml, then a Chromium on PATH
(Debian's ``chromium``, ``chromium-browser``, ``google-chrome``), then the browser that
``playwright install chromium`` downloaded. The system package comes first because it is
patched by the distribution and needs no download at deploy time.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from stampless.errors import BrowserError

if TYPE_CHECKING:
    from playwright.async_api import Browser, Playwright

    from stampless.config import BrowserConfig

PATH_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = (
    "install Chromium ('apt-get install chromium' on Debian), set browser.executable_path "
    "in robot.toml, or run 'playwright install chromium'"
)


def find_chromium(config: BrowserConfig, playwright: Playwright | None = None) -> str | None:
    """The Chromium executable to launch, or None when Playwright's own download is used."""
    if config.executable_path:
        path = Path(config.executable_path).expanduser()
        if not path.is_file():
            raise BrowserError(
                f"browser.executable_path {str(path)!r} in robot.toml does not exist; "
                f"fix the path or {INSTALL_HINT}."
            )
        return str(path)
    for name in PATH_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    if playwright is not None and Path(playwright.chromium.executable_path).is_file():
        return None  # Playwright's bundled browser: launch without executable_path
    raise BrowserError(f"No Chromium found on this machine; {INSTALL_HINT}.")


async def launch_browser(playwright: Playwright, config: BrowserConfig) -> Browser:
    """Start Chromium with the configured arguments; BrowserError says what to install."""
    from playwright.async_api import Error as PlaywrightError

    executable = find_chromium(config, playwright)
    try:
        browser = await playwright.chromium.launch(
            executable_path=executable,
            headless=config.headless,
            args=list(config.args),
            timeout=config.navigation_timeout_ms,
        )
    except PlaywrightError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BrowserError(
            f"Chromium ({executable or 'Playwright download'}) would not start: {first_line}; "
            f"{INSTALL_HINT}."
        ) from exc
    logger.debug("browser started: {} {}", executable or "playwright chromium", browser.version)
    return browser
