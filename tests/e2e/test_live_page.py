"""The live campaign page in a real browser: the three services as real processes, the demo story
(``services/demo.py``, what ``pinwheel demo`` runs) produces the events, then Debian's headless
Chromium loads ``/live?token=...`` from the rewards service. The numbers in the DOM must equal
``GET /v1/stats/funnel``, the story's outcome must be what the funnel says, and a screenshot is taken.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from services.demo import DemoConfig, Story
from shared.auth import issue_token
from shared.settings import LOCAL_DEV_JWT_SECRET
from tests.support.system import System, running_system

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--virtual-time-budget=8000")


def chromium_binary() -> str:
    found = os.environ.get("PINWHEEL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("Debian's chromium is needed for the live page test and is not installed: "
                    "`apt-get install -y chromium` (as root; `make install` does it), or set PINWHEEL_CHROMIUM")
    return found


async def chromium(tmp: Path, url: str, *args: str) -> bytes:
    profile = tmp / f"profile-{uuid.uuid4().hex[:8]}"  # a fresh profile per run
    process = await asyncio.create_subprocess_exec(
        chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, f"chromium exited {process.returncode}: {err.decode()[-2000:]}"
    return out


class Stats(HTMLParser):
    """Text of every element carrying ``data-stat`` (and ``data-minor`` for money), plus <body> data."""

    def __init__(self) -> None:
        super().__init__()
        self.stats: dict[str, str] = {}
        self.minor: dict[str, str] = {}
        self.body: dict[str, str | None] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "body":
            self.body = attributes
        if "data-stat" in attributes:
            name = attributes["data-stat"] or ""
            self.stats[name] = ""
            if attributes.get("data-minor") is not None:
                self.minor[name] = attributes["data-minor"] or ""
            self._open.append(name)

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag in ("div", "span"):
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open:
            self.stats[self._open[-1]] += data.strip()


def parse(dom: bytes) -> Stats:
    parser = Stats()
    parser.feed(dom.decode())
    return parser


def flatten(funnel: dict[str, Any]) -> dict[str, Any]:
    return {f"{section}.{name}": value for section, values in funnel.items() if isinstance(values, dict)
            for name, value in values.items() if name != "currency"}


async def settled_funnel(system: System) -> dict[str, Any]:
    """The funnel once two reads a second apart agree (trailing events consumed)."""
    previous = None
    for _ in range(60):
        response = await system.call("rewards", "GET", "/v1/stats/funnel", "ops", "admin")
        assert response.status_code == 200, response.text
        current = {k: v for k, v in response.json().items() if k != "as_of"}
        if current == previous:
            return current
        previous = current
        await asyncio.sleep(1)
    raise AssertionError("the funnel kept changing")


async def test_live_page_shows_the_funnel_of_the_demo_story(infra, namespace, tmp_path):
    chromium_binary()  # fail fast, before starting anything
    async with running_system(infra, namespace, tmp_path) as system:
        config = DemoConfig(urls={name: service.url for name, service in system.services.items()},
                            bootstrap_servers=infra.bootstrap_servers, topic_prefix=system.topic_prefix,
                            jwt_secret=LOCAL_DEV_JWT_SECRET, run_id="e2e", step_timeout=90)
        told: list[str] = []
        result = await Story(config, told.append).tell(failing_group=False)
        assert any("welcome pack" in line for line in told) and any("formed at the 3-person tier" in line
                                                                   for line in told), told

        funnel = await settled_funnel(system)
        # the story's outcome, as the funnel counts it
        assert funnel["referral"] == {"bound": 7, "qualified": 7, "disqualified": 1, "net_qualified": 6,
                                      "flagged": 0, "milestones": 2}
        assert (funnel["groupbuy"]["opened"], funnel["groupbuy"]["formed"], funnel["groupbuy"]["failed"]) == (1, 1, 0)
        assert funnel["coupons"] == {"issued": 2 * 7 + 7 + 1, "redeemed": 1, "revoked": 1}
        assert (funnel["commissions"]["credited"], funnel["commissions"]["reversed"]) == (1000, 500)
        assert result.funnel["referral"]["bound"] == 7

        rewards = system.services["rewards"].url
        admin = issue_token(LOCAL_DEV_JWT_SECRET, "ops", "admin", 600)
        page = parse(await chromium(tmp_path, f"{rewards}/live?token={admin}", "--dump-dom"))
        assert page.body.get("data-state") == "ready", f"the page did not load its data: {page.body}"
        expected = flatten(funnel)
        assert set(page.stats) == set(expected), set(page.stats) ^ set(expected)
        for name, value in expected.items():
            if name in page.minor:  # money: data-minor is the API's minor units, the text CNY
                assert page.minor[name] == str(value), name
                assert page.stats[name] == f"{value / 100:.2f}", name
            else:
                assert page.stats[name] == str(value), name
        assert page.stats["commissions.credited"] == "10.00" and page.stats["commissions.reversed"] == "5.00"
        assert await settled_funnel(system) == funnel, "nothing moved while the browser read the page"

        screenshot = tmp_path / "live.png"
        await chromium(tmp_path, f"{rewards}/live?token={admin}", f"--screenshot={screenshot}",
                       "--window-size=1280,900")
        assert screenshot.exists(), "no screenshot written"
        data = screenshot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
        assert len(data) > 20_000, f"a suspiciously small screenshot ({len(data)} bytes)"
        if os.environ.get("PINWHEEL_SAVE_LIVE_SCREENSHOT"):
            shutil.copy(screenshot, os.environ["PINWHEEL_SAVE_LIVE_SCREENSHOT"])

        # without a token the page asks for one and shows no numbers
        anonymous = parse(await chromium(tmp_path, f"{rewards}/live", "--dump-dom"))
        assert anonymous.body.get("data-state") == "token-needed"
        assert set(anonymous.stats.values()) == {"-"}
        # a user token (no admin scope) is refused by the JSON endpoint and the page says so
        user = issue_token(LOCAL_DEV_JWT_SECRET, "bob", "", 600)
        refused = parse(await chromium(tmp_path, f"{rewards}/live?token={user}", "--dump-dom"))
        assert refused.body.get("data-state") == "token-needed"
