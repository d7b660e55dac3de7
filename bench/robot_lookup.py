"""Robot lookup speed: the framework against a bare Playwright script (the floor).

Runs against the emulated civil-affairs system with no injected latency:

* framework: ``RobotRuntime.lookup`` with a reused login (the bundled robot);
* floor: a hand-written Playwright script doing the same page steps (fill, submit, read
  the result row, open the detail popup, read six values) with a reused login;
* login per request: the framework, with the account's session thrown away each time;
* memory: peak RSS of the browser's process tree with three accounts' contexts open.

Prints medians and p95 of each, the framework/floor ratio (target <= 1.2), the speed-up
of a reused session over logging in per request (target >= 3) and the peak RSS (target
<= 1.5 GiB). Usage: ``python bench/robot_lookup.py [--n 60] [--trace on_failure]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
from playwright.async_api import async_playwright

from stampless.config import load_config
from stampless.fixtures.accounts import accounts, fixture_env
from stampless.fixtures.harness import FixtureProcess
from stampless.fixtures.records import records
from stampless.robot import RobotRuntime
from stampless.robot._browser import find_chromium
from stampless.robot._sessions import close_context, forget_state

REPO = Path(__file__).resolve().parents[1]
RESULT_CELLS = "xpath=//tr[td/b[normalize-space(.)='结婚证字号']]/following-sibling::tr[1]/td"
VALUE = "xpath=(//td[normalize-space(.)='{label}'])[1]/following-sibling::td[1]"
PERSON = (
    "xpath=(//b[normalize-space(.)='{block}']/following::table[1]"
    "//td[normalize-space(.)='{label}'])[1]/following-sibling::td[1]"
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def describe(name: str, values: list[float]) -> str:
    return (
        f"{name:<28} n={len(values):<4} median {statistics.median(values) * 1000:7.1f} ms"
        f"   p95 {percentile(values, 0.95) * 1000:7.1f} ms"
    )


def write_config(root: Path, url: str, trace: str) -> Path:
    lines = [
        f'[project]\nvar_dir = "{root / "var"}"\n',
        f'[browser]\ntrace = "{trace}"\nrecycle_after = 100000\n',
        f'[systems.civil_affairs]\nurl = "{url}"\n'
        f'robot = "{REPO / "robots" / "civil_affairs.py"}"\n'
        f'selectors = "{REPO / "selectors" / "civil_affairs.toml"}"\n',
    ]
    for acc in accounts("civil_affairs"):
        lines.append(
            f'[[systems.civil_affairs.accounts]]\nname = "{acc.username}"\n'
            f'username = "{acc.username}"\npassword = "env:{acc.password_env}"\n'
        )
    path = root / "robot.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class Floor:
    """The hand-written script: same steps as the robot, no framework."""

    def __init__(self, url: str, executable: str | None, args: list[str]) -> None:
        self.url, self.executable, self.args = url, executable, args

    async def start(self) -> None:
        self.pw = await async_playwright().start()
        self.browser = await self.pw.chromium.launch(
            executable_path=self.executable, args=self.args
        )
        self.context = await self.browser.new_context()
        self.page = await self.context.new_page()
        self.page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
        acc = accounts("civil_affairs")[2]
        await self.page.goto(self.url + "/login")
        await self.page.fill("#username", acc.username)
        await self.page.fill("#password", acc.password)
        async with self.page.expect_navigation():
            await self.page.click("#btnLogin")

    async def lookup(self, key: str) -> dict[str, str]:
        page = self.page
        await page.fill("#certNo", key)
        async with page.expect_navigation(wait_until="domcontentloaded"):
            await page.click("#btnSearch")
        await page.locator(RESULT_CELLS).all_inner_texts()
        async with self.context.expect_page() as info:
            await page.click("text=查看")
        detail = await info.value
        await detail.wait_for_load_state("domcontentloaded")
        values = {
            label: await detail.locator(VALUE.format(label=label)).inner_text()
            for label in ("结婚证字号", "登记日期")
        }
        for block in ("持证人信息", "配偶信息"):
            for label in ("姓名", "身份证件号"):
                locator = detail.locator(PERSON.format(block=block, label=label))
                values[block + label] = await locator.inner_text()
        await detail.close()
        return values

    async def stop(self) -> None:
        await self.browser.close()
        await self.pw.stop()


class RssSampler:
    """Peak memory (PSS) of the Chromium processes under this process, every 50 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self.peak_rss = 0  # plain RSS summed over processes (counts shared pages repeatedly)
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = rss = count = 0
            for proc in me.children(recursive=True):
                try:
                    if "chrom" in proc.name().lower():
                        # PSS: shared pages (libraries, shared memory between Chromium's
                        # processes) are counted once across the tree, not once per process.
                        info = proc.memory_full_info()
                        total += info.pss
                        rss += info.rss
                        count += 1
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            self.peak_rss = max(self.peak_rss, rss)
            self.processes = max(self.processes, count)
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def bench(url: str, n: int, trace: str, work: Path, extra_args: list[str]) -> None:
    config = load_config(write_config(work, url, trace))
    if extra_args:
        config = config.with_overrides({"browser.args": [*config.browser.args, *extra_args]})
    keys = [r["cert_no"] for r in records("marriage_certificate", 7) if r["status"] == "valid"]
    framework: list[float] = []
    floor_times: list[float] = []
    floor = Floor(url, find_chromium(config.browser), list(config.browser.args))
    await floor.start()
    async with RobotRuntime(config) as rt:
        for key in keys[:3]:  # warm up both: logins, first page loads
            await rt.lookup("civil_affairs", key, account="civil01")
            await floor.lookup(key)
        # Alternate in small blocks so both see the same machine load.
        for start in range(0, n, 10):
            block = keys[10 + start : 10 + min(n, start + 10)]
            for key in block:
                t = time.perf_counter()
                await rt.lookup("civil_affairs", key, account="civil01")
                framework.append(time.perf_counter() - t)
            for key in block:
                t = time.perf_counter()
                await floor.lookup(key)
                floor_times.append(time.perf_counter() - t)
        await floor.stop()

        per_login: list[float] = []
        session = rt.system("civil_affairs").sessions["civil02"]
        for key in keys[200:212]:
            async with session.lock:
                await close_context(session, keep_state=False)
                forget_state(session)
            t = time.perf_counter()
            await rt.lookup("civil_affairs", key, account="civil02")
            per_login.append(time.perf_counter() - t)

        with RssSampler() as sampler:
            for i, key in enumerate(keys[300:330]):
                await rt.lookup("civil_affairs", key, account=f"civil0{i % 3 + 1}")
        contexts = sum(
            1 for s in rt.system("civil_affairs").sessions.values() if s.context is not None
        )
        stats = rt.stats()

    ratio = statistics.median(framework) / statistics.median(floor_times)
    ratio95 = percentile(framework, 0.95) / percentile(floor_times, 0.95)
    speedup = statistics.median(per_login) / statistics.median(framework)
    print(f"robot lookup benchmark (civil_affairs, latency 0, trace={trace}, n={n})")
    if extra_args:
        print(f"extra Chromium arguments: {' '.join(extra_args)}")
    print(describe("framework, reused login", framework))
    print(describe("floor (bare Playwright)", floor_times))
    print(describe("framework, login per request", per_login))
    print(f"ratio framework/floor: median {ratio:.2f}  p95 {ratio95:.2f}   (target <= 1.2)")
    print(f"reused session vs login per request: {speedup:.1f}x faster   (target >= 3)")
    print(
        f"peak RSS (PSS) of the browser with {contexts} account contexts: "
        f"{sampler.peak / 2**20:.0f} MiB   (target <= 1536 MiB; plain RSS summed over its "
        f"{sampler.processes} processes, shared pages counted repeatedly: "
        f"{sampler.peak_rss / 2**20:.0f} MiB)"
    )
    print(f"logins: {stats['logins']}  retries: {stats['retries']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="lookups per side (default 60)")
    parser.add_argument("--trace", default="on_failure", choices=["off", "on_failure", "always"])
    parser.add_argument(
        "--browser-arg",
        action="append",
        default=[],
        help="extra Chromium argument for both sides (repeatable), e.g. --renderer-process-limit=2",
    )
    args = parser.parse_args()
    os.environ.update(fixture_env())
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    from loguru import logger

    logger.remove()  # the benchmark prints figures, not the robot's log lines
    with tempfile.TemporaryDirectory() as tmp, FixtureProcess(args=["--seed", "7"]) as fixtures:
        asyncio.run(
            bench(fixtures.urls["civil_affairs"], args.n, args.trace, Path(tmp), args.browser_arg)
        )


if __name__ == "__main__":
    main()
