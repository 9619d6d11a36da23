"""The chat page the router serves at / (issue 15), in front of the fake engine, driven in headless Chromium.

The fake engine answers " t0 t1 ..." one token every 20 ms, so a test sees an answer stream
in, can stop it halfway, and knows what the whole answer is.
"""

from __future__ import annotations

import asyncio
import json
import re
from importlib.resources import files

import aiohttp
import pytest

from tests.integration.router.harness import client, metric, routing, until
from tests.servers.chromium import Page, browser
from tests.servers.fake_engine import running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ANSWER = ".message.assistant .content"
STATS = ".message.assistant .stats"


def test_the_page_and_its_files_are_served_with_nothing_from_elsewhere() -> None:
    with running("--models", "m") as engine:

        async def body() -> None:
            async with routing(engine.url) as router, client() as http:
                texts = {}
                for path, kind in (("/", "text/html"), ("/chat.js", "text/javascript"), ("/chat.css", "text/css")):
                    async with http.get(router.url + path) as resp:
                        assert resp.status == 200 and resp.content_type == kind, (path, resp.status)
                        assert "connect-src 'self'" in resp.headers["content-security-policy"]
                        assert resp.headers["x-content-type-options"] == "nosniff"
                        texts[path] = await resp.text()
                    async with http.head(router.url + path) as resp:
                        assert resp.status == 200 and await resp.read() == b""
                html = texts["/"]
                for attr, target in re.findall(r'\b(src|href)="([^"]*)"', html):
                    assert target.startswith("data:") or not re.match(r"(?i)([a-z]+:)?//", target), (attr, target)
                for path, text in texts.items():
                    outside = [
                        u for u in re.findall(r"(?i)https?://[^\s\"'<>)]+", text) if not u.startswith(router.url)
                    ]
                    assert outside == [], (path, outside)
                for label in re.findall(r'<label for="([^"]+)"', html):  # every label names a real control
                    assert f'id="{label}"' in html, label
                async with http.get(router.url + "/chat.html") as resp:  # only the three paths are the page's
                    assert resp.status == 404

        asyncio.run(body())


def test_the_page_files_ship_in_the_package() -> None:
    static = files("vllm_fleet.router").joinpath("static")
    assert {p.name for p in static.iterdir()} >= {"chat.html", "chat.js", "chat.css"}


async def ask(page: Page, question: str) -> None:
    await page.fill("#prompt", question)
    await page.click("#send")


async def answers(page: Page) -> int:
    return await page.evaluate(f"document.querySelectorAll({json.dumps(ANSWER)}).length")


def chat_requests(page: Page) -> list[dict]:
    posts = [r for r in page.requests if r["method"] == "POST" and r["url"].endswith("/v1/chat/completions")]
    return [json.loads(r["postData"]) for r in posts]


def test_it_lists_the_models_streams_an_answer_keeps_the_conversation_and_shows_tokens_per_second() -> None:
    with running("--itl-ms", "20", "--models", "m") as engine:

        async def body() -> None:
            async with routing(engine.url) as router, browser() as page:
                await page.navigate(router.url + "/")
                options = await page.wait_for("[...document.querySelectorAll('#model option')].map(o => o.value)")
                assert options == ["m"]
                await page.fill("#system", "Answer briefly.")
                await page.fill("#temperature", "0.3")
                await page.fill("#max-tokens", "50")
                await ask(page, "hello")

                # Part of the answer while the rest is still coming: it streams, it is not shown at the end.
                partial = await page.wait_for(f"document.querySelector({json.dumps(ANSWER)}).textContent")
                assert partial.startswith(" t0") and " t49" not in partial, partial
                assert await page.evaluate("document.querySelector('#stop').disabled") is False
                assert await page.text(STATS) == ""
                await page.wait_for(f"document.querySelector({json.dumps(STATS)}).textContent", timeout_s=20)
                assert await page.text(ANSWER) == "".join(f" t{i}" for i in range(50))
                stats = await page.text(STATS)
                assert re.search(r"^50 tokens · \d+\.\d tokens/s · first token after \d+\.\d\d s", stats), stats
                rate = float(
                    await page.evaluate(f"document.querySelector({json.dumps(STATS)}).dataset.tokensPerSecond")
                )
                assert rate > 0
                assert await page.evaluate("document.querySelector('#stop').disabled") is True

                # The second turn carries the first one: the conversation is kept in the page.
                await page.fill("#max-tokens", "3")
                await ask(page, "and then?")
                await page.wait_for(f"document.querySelectorAll({json.dumps(STATS)})[1]?.textContent", timeout_s=20)
                first, second = chat_requests(page)
                assert first == {
                    "model": "m",
                    "messages": [
                        {"role": "system", "content": "Answer briefly."},
                        {"role": "user", "content": "hello"},
                    ],
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "temperature": 0.3,
                    "max_tokens": 50,
                }
                assert second["messages"] == [
                    *first["messages"],
                    {"role": "assistant", "content": "".join(f" t{i}" for i in range(50))},
                    {"role": "user", "content": "and then?"},
                ]
                assert second["max_tokens"] == 3 and await page.text(ANSWER) == " t0 t1 t2"

                # A new conversation starts from nothing.
                await page.click("#clear")
                assert await answers(page) == 0
                await ask(page, "again")
                await page.wait_for(f"document.querySelector({json.dumps(STATS)})?.textContent", timeout_s=20)
                assert chat_requests(page)[-1]["messages"][1:] == [{"role": "user", "content": "again"}]
                assert page.errors == []

        asyncio.run(body())


def test_stop_aborts_the_answer_and_the_engine_sees_its_connection_close() -> None:
    with running("--itl-ms", "20", "--models", "m") as engine:

        async def engine_running(http: aiohttp.ClientSession) -> float:
            async with http.get(f"{engine.url}/metrics") as resp:
                return metric(await resp.text(), "vllm:num_requests_running", engine="0", model_name="m")

        async def body() -> None:
            async with routing(engine.url) as router, browser() as page, client() as http:
                await page.navigate(router.url + "/")
                await page.wait_for("document.querySelectorAll('#model option').length > 0")
                await page.fill("#max-tokens", "2000")  # 40 s of answer
                await ask(page, "a long one")
                await page.wait_for(f"document.querySelector({json.dumps(ANSWER)}).textContent.includes(' t5')")
                assert await engine_running(http) == 1
                (backend,) = router.pool.backends.values()
                assert backend.in_flight == 1
                await page.click("#stop")
                stopped_at = asyncio.get_running_loop().time()
                await page.wait_for("document.querySelector('#status').textContent === 'Stopped'")

                # The browser closed its connection, the router cancelled upstream, the engine stopped writing.
                for _ in range(250):
                    if await engine_running(http) == 0:
                        break
                    await asyncio.sleep(0.02)
                assert await engine_running(http) == 0, "the engine still streams the stopped answer"
                assert asyncio.get_running_loop().time() - stopped_at < 5  # long before the 40 s answer ends
                await until(lambda: backend.in_flight == 0, 5.0, "the router's in_flight to drop to 0")

                shown = await page.text(ANSWER)
                assert shown.startswith(" t0 t1 t2 t3 t4 t5") and " t1999" not in shown
                assert "stopped" in await page.text(STATS)
                assert await page.evaluate("document.querySelector('#send').disabled") is False
                assert backend.failures == 0 and backend.ejections == 0  # a user stopping is not the backend failing

                # The stopped answer stays in the conversation; the next question goes on from it.
                await page.fill("#max-tokens", "2")
                await ask(page, "short now")
                await page.wait_for(f"document.querySelectorAll({json.dumps(STATS)})[1]?.textContent", timeout_s=20)
                messages = [json.loads(r["postData"]) for r in page.requests if r["method"] == "POST"][-1]["messages"]
                assert [m["role"] for m in messages] == ["user", "assistant", "user"]
                assert messages[1]["content"] == shown
                assert page.errors == []

        asyncio.run(body())
