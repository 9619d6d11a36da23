"""WebSockets through the router (vLLM's /v1/realtime): the handshake routed by ``?model=`` and retried before
its answer, then a byte tunnel both ways until either side closes (issue 14: the rest of vLLM's paths
passed through). The origin is uvicorn + FastAPI, vLLM's own server stack (tests/servers/realtime.py)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.integration.router.harness import client, error_of, make_key, metric, post, routing, until
from tests.servers.fake_engine import running
from tests.servers.faults import Answer, FaultServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
ORIGIN = "tests/servers/realtime.py"


async def stats(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(f"{url}/stats") as resp:
        return await resp.json()


def test_a_websocket_passes_both_ways_unread_and_its_close_code_comes_back() -> None:
    with running("--models", "m", server=ORIGIN) as origin:

        async def body() -> None:
            async with routing(origin.url) as router, client() as http:
                url = f"{router.url}/v1/realtime?model=m"
                # compress: permessage-deflate is negotiated end to end, the router reads no frame
                async with http.ws_connect(url, protocols=("realtime",), compress=15, max_msg_size=0) as ws:
                    assert ws.protocol == "realtime"
                    headers = ws._response.headers
                    assert headers["x-vllm-fleet-backend"] == origin.url
                    assert "permessage-deflate" in headers["Sec-WebSocket-Extensions"]
                    assert await ws.receive_json() == {"type": "session.created", "port": origin.port}
                    await ws.send_str("hello")
                    assert await ws.receive_str() == "hello"
                    data = os.urandom(3 << 20)  # incompressible, past every buffer on the way: flow control
                    await ws.send_bytes(data)
                    assert await ws.receive_bytes() == data
                    assert router.pool.backends[origin.url].in_flight == 1  # a drain waits for it
                    await ws.send_str("close 4001")
                    message = await ws.receive()
                    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 4001
                await until(lambda: router.in_flight() == 0, what="the tunnel to end")
                assert await stats(http, origin.url) == {"open": 0, "closed": [4001]}

        asyncio.run(body())


def test_a_client_that_leaves_closes_the_backends_side() -> None:
    with running("--models", "m", server=ORIGIN) as origin:

        async def body() -> None:
            async with routing(origin.url) as router, client() as http:
                ws = await http.ws_connect(f"{router.url}/v1/realtime?model=m")
                await ws.receive_json()
                assert (await stats(http, origin.url))["open"] == 1
                ws._response.connection.transport.abort()  # gone without a close frame
                await until(lambda: router.in_flight() == 0, what="the router to let go")
                for _ in range(100):
                    if (await stats(http, origin.url))["open"] == 0:
                        break
                    await asyncio.sleep(0.05)
                seen = await stats(http, origin.url)
                assert seen["open"] == 0 and seen["closed"][0] in (1005, 1006), seen  # no close frame came

        asyncio.run(body())


def test_a_backend_killed_mid_tunnel_ends_that_websocket_only() -> None:
    with running("--models", "m", server=ORIGIN) as doomed, running("--models", "m", server=ORIGIN) as other:

        async def body() -> None:
            async with routing(doomed.url, other.url, policy="round-robin") as router, client() as http:
                first = await http.ws_connect(f"{router.url}/v1/realtime?model=m")
                second = await http.ws_connect(f"{router.url}/v1/realtime?model=m")
                opened = {(await first.receive_json())["port"], (await second.receive_json())["port"]}
                assert opened == {doomed.port, other.port}
                on_doomed = first if first._response.headers["x-vllm-fleet-backend"] == doomed.url else second
                survivor = second if on_doomed is first else first
                os.killpg(doomed.proc.pid, signal.SIGKILL)
                message = await asyncio.wait_for(on_doomed.receive(), 10)
                assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)
                await survivor.send_str("still here")
                assert await survivor.receive_str() == "still here"
                await survivor.close()
                await until(lambda: router.in_flight() == 0, what="both tunnels to end")

        asyncio.run(body())


def test_a_refused_handshake_comes_back_as_the_backend_sent_it_and_a_503_is_retried() -> None:
    with FaultServer(models=("m",)) as busy, running("--models", "m", server=ORIGIN) as origin:
        busy.script("/v1/realtime", Answer(503, b'{"error":"busy"}'))

        async def body() -> None:
            async with (
                routing(busy.url, origin.url, policy="round-robin") as router,
                client() as http,
                http.ws_connect(f"{router.url}/v1/realtime?model=m") as ws,  # busy first: retried
            ):
                assert ws._response.headers["x-vllm-fleet-backend"] == origin.url
                assert (await ws.receive_json())["port"] == origin.port
            async with routing(origin.url) as router, client() as http:
                # A path with no WebSocket: uvicorn refuses the handshake with a 403, relayed as it came.
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(f"{router.url}/v1/nothing-here?model=m")
                assert refused.value.status == 403
                with pytest.raises(aiohttp.WSServerHandshakeError) as unknown:
                    await http.ws_connect(f"{router.url}/v1/realtime?model=nope")
                assert unknown.value.status == 404
                async with http.get(f"{router.url}/v1/realtime?model=nope", headers=_UPGRADE) as resp:
                    assert "known models: m" in error_of(await resp.json())["message"]
            assert len(busy.requests("/v1/realtime")) == 1

        asyncio.run(body())


def test_an_api_key_comes_as_a_header_or_from_a_browser_as_a_subprotocol(tmp_path: Path) -> None:
    registry = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    secret = make_key(registry, "browser")
    with running("--models", "m", server=ORIGIN) as origin:

        async def body() -> None:
            async with routing(origin.url, registry=registry) as router, client() as http:
                url = f"{router.url}/v1/realtime?model=m"
                for protocols in ((), ("realtime", "openai-insecure-api-key.wrong")):
                    async with http.get(url, headers=_UPGRADE | _offer(protocols)) as refused:
                        assert refused.status == 401, protocols
                        assert "openai-insecure-api-key.<key>" in error_of(await refused.json())["message"]
                async with http.ws_connect(url, headers={"Authorization": f"Bearer {secret}"}) as ws:
                    assert (await ws.receive_json())["type"] == "session.created"
                # OpenAI's browser form; the backend picks its subprotocol from the offer as it came
                async with http.ws_connect(url, protocols=("realtime", f"openai-insecure-api-key.{secret}")) as ws:
                    assert ws.protocol == "realtime"
                    await ws.send_str("hello")
                    assert (await ws.receive_json())["type"] == "session.created"
                    assert await ws.receive_str() == "hello"

        asyncio.run(body())


def test_a_sessions_turns_are_charged_to_its_key_as_their_usage_passes(tmp_path: Path) -> None:
    """A realtime session is one request of its key, and each turn's tokens (vLLM's ``transcription.done``
    usage) are charged as they pass: a key past its tokens/min is refused its next request. Usage-like text
    inside a transcript is not counted. The session keeps its compression end to end (the router inflates
    what it reads), and a key without limits is counted too."""
    registry = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    metered, free = make_key(registry, "speech", tokens_per_min=1000), make_key(registry, "free")
    with running("--models", "m", "--turns", server=ORIGIN) as origin:

        async def session(http: aiohttp.ClientSession, url: str, secret: str, turns: int) -> str | None:
            """The turns' answers; the compression the handshake negotiated."""
            headers = {"Authorization": f"Bearer {secret}"}
            async with http.ws_connect(url, headers=headers, compress=15, max_msg_size=0) as ws:
                assert (await ws.receive_json())["type"] == "session.created"
                for _ in range(turns):
                    await ws.send_str("transcribe 300 100")
                    assert (await ws.receive_json())["type"] == "transcription.delta"
                    done = await ws.receive_json()
                    assert done["type"] == "transcription.done" and done["usage"]["total_tokens"] == 400
                return ws._response.headers.get("Sec-WebSocket-Extensions")

        async def body() -> None:
            async with routing(origin.url, registry=registry) as router, client() as http:
                url = f"{router.url}/v1/realtime?model=m"
                for secret, turns in ((metered, 2), (free, 3)):
                    assert "permessage-deflate" in (await session(http, url, secret, turns) or "")
                async with http.get(f"{router.url}/metrics") as resp:
                    text = await resp.text()
                assert metric(text, "vllm_fleet_router_key_tokens_total", key="speech") == 800
                assert metric(text, "vllm_fleet_router_key_requests_total", key="speech", outcome="admitted") == 1
                assert metric(text, "vllm_fleet_router_key_tokens_total", key="free") == 1200
                # 800 of its 1,000 tokens this minute are spent: a request that may use 300 more must wait
                request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300}
                headers = {"Authorization": f"Bearer {metered}"}
                status, answer, said = await post(http, f"{router.url}/v1/chat/completions", request, headers=headers)
                assert status == 429 and "speech" in error_of(answer)["message"], (status, answer)
                assert int(said["Retry-After"]) >= 1

        asyncio.run(body())


def test_a_turn_that_leaves_its_key_past_its_tokens_per_min_ends_the_session_after_it(tmp_path: Path) -> None:
    """Two turns of 400 fit a key's 1,000 tokens/min; the third comes back whole, and then the router ends the
    session: vLLM's error event and a Close 1008, both naming the key and when to retry (in a compressed
    session: the router's own frames go uncompressed). The backend's side closes too (vLLM aborts the
    session's request when its socket goes), and the key's next request waits."""
    registry = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    secret = make_key(registry, "speech", tokens_per_min=1000)
    with running("--models", "m", "--turns", server=ORIGIN) as origin:

        async def body() -> None:
            async with routing(origin.url, registry=registry) as router, client() as http:
                headers = {"Authorization": f"Bearer {secret}"}
                ws = await http.ws_connect(f"{router.url}/v1/realtime?model=m", headers=headers, compress=15)
                assert "permessage-deflate" in ws._response.headers["Sec-WebSocket-Extensions"]
                assert (await ws.receive_json())["type"] == "session.created"
                for _ in range(3):
                    await ws.send_str("transcribe 300 100")
                    assert (await ws.receive_json())["type"] == "transcription.delta"
                    assert (await ws.receive_json())["usage"]["total_tokens"] == 400
                error = await asyncio.wait_for(ws.receive_json(), 10)
                assert error["type"] == "error" and error["code"] == "rate_limit_exceeded", error
                assert "'speech' is over its limit; retry in" in error["error"], error
                closing = await asyncio.wait_for(ws.receive(), 10)
                assert closing.type == aiohttp.WSMsgType.CLOSE, closing
                assert closing.data == 1008 and closing.extra == error["error"], closing
                await ws.close()
                await until(lambda: router.in_flight() == 0, what="the router to let the session go")
                for _ in range(100):
                    if (await stats(http, origin.url))["open"] == 0:
                        break
                    await asyncio.sleep(0.05)
                assert (await stats(http, origin.url))["open"] == 0  # the backend's side is gone too
                request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
                status, answer, _ = await post(http, f"{router.url}/v1/chat/completions", request, headers=headers)
                assert status == 429 and "speech" in error_of(answer)["message"], (status, answer)

        asyncio.run(body())


def _offer(protocols: tuple[str, ...]) -> dict[str, str]:
    return {"Sec-WebSocket-Protocol": ", ".join(protocols)} if protocols else {}


_UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}
