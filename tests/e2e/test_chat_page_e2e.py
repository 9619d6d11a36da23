"""The chat page with the real engine (issue 15): headless Chromium asks the demo model through the router."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Served
from tests.servers.chromium import browser, chromium_or_skip

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ANSWER = ".message.assistant .content"
STATS = ".message.assistant .stats"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Session-scoped and asked for before `served`: without a browser, vLLM is not started for nothing."""
    return chromium_or_skip()


def test_the_chat_page_streams_paris(chromium: str, served: Served, tmp_path: Path) -> None:
    screenshot = tmp_path / "chat-page.png"

    async def body() -> list[str]:
        async with browser() as page:
            await page.navigate(served.url + "/")
            options = await page.wait_for("[...document.querySelectorAll('#model option')].map(o => o.value)")
            assert options == [served.model]
            await page.fill("#temperature", "0")
            await page.fill("#max-tokens", "40")
            await page.fill("#prompt", "What is the capital of France?")
            await page.click("#send")
            seen: list[str] = []  # the answer as it grew, while the page still said it was streaming
            streaming = "document.querySelector('.message.assistant')?.classList.contains('streaming')"
            while await page.evaluate(streaming) or not seen:
                text = await page.text(ANSWER)
                if text and (not seen or seen[-1] != text):
                    seen.append(text)
                await asyncio.sleep(0.01)
            await page.wait_for(f"document.querySelector({json.dumps(STATS)}).textContent", timeout_s=10)
            seen.append(await page.text(ANSWER))
            await page.screenshot(screenshot)
            assert page.errors == []
            posts = [r for r in page.requests if r["method"] == "POST" and r["url"].endswith("/v1/chat/completions")]
            [asked] = [json.loads(r["postData"]) for r in posts]
            assert asked["stream"] is True  # streamed (the partial texts are seen with the fake engine's slow stream)
            return seen

    seen = asyncio.run(asyncio.wait_for(body(), 300))
    print(f"\nchat page screenshot: {screenshot}\nanswer: {seen[-1]!r}")
    assert "Paris" in seen[-1], seen[-1]
    assert screenshot.stat().st_size > 10_000
