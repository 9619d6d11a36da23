"""The happy path through the router: paths passed through, /v1/models merged, /health, /metrics, bodies
byte for byte, streams incremental, a client that leaves cancels its upstream request (issue 14)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import pytest

from tests.integration.router.harness import chat, client, metric, post, routing, until
from tests.servers.fake_engine import running
from tests.servers.faults import Answer, Echo, FaultServer, Hang, Stream

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_chat_and_completions_pass_through_to_the_engine() -> None:
    with running() as engine:

        async def body() -> None:
            async with routing(engine.url) as router, client() as http:
                status, answer, headers = await post(http, f"{router.url}/v1/chat/completions", chat("yardstick"))
                assert status == 200 and answer["object"] == "chat.completion", answer
                assert headers["x-vllm-fleet-backend"] == engine.url
                prompt = {"model": "yardstick", "prompt": "hi", "max_tokens": 3}
                status, answer, _ = await post(http, f"{router.url}/v1/completions", prompt)
                assert status == 200 and answer["object"] == "text_completion"
                assert answer["choices"][0]["text"] == " t0 t1 t2"

        asyncio.run(body())


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/rerank", "/v1/audio/speech", "/tokenize", "/pooling"])
def test_other_openai_paths_are_passed_through_with_their_query(path: str) -> None:
    with FaultServer(models=("emb",)) as backend:
        backend.always(path, Echo())

        async def body() -> None:
            async with routing(backend.url) as router, client() as http:
                sent = json.dumps({"model": "emb", "input": ["a", "b"]}).encode()
                status, answer, _ = await post(http, f"{router.url}{path}?x=1&y=%20", sent)
                assert status == 200 and answer == json.loads(sent)

        asyncio.run(body())
        (received,) = backend.requests(path)
        assert received.method == "POST" and received.target == f"{path}?x=1&y=%20"


def test_a_get_outside_v1_goes_to_a_backend() -> None:
    with FaultServer() as backend:
        backend.always("/version", Echo())

        async def body() -> None:
            async with routing(backend.url) as router, client() as http, http.get(f"{router.url}/version") as resp:
                assert resp.status == 200

        asyncio.run(body())
        assert [r.method for r in backend.requests("/version")] == ["GET"]


def test_models_are_merged_and_each_goes_to_a_backend_that_serves_it() -> None:
    with FaultServer(models=("a",)) as one, FaultServer(models=("b", "c")) as two:

        async def body() -> None:
            async with routing(one.url, two.url) as router, client() as http:
                async with http.get(f"{router.url}/v1/models") as resp:
                    listing = await resp.json()
                assert resp.status == 200 and listing["object"] == "list"
                assert sorted(m["id"] for m in listing["data"]) == ["a", "b", "c"]
                for model, backend in (("a", one), ("b", two), ("c", two), ("a", one)):
                    status, _, headers = await post(http, f"{router.url}/v1/chat/completions", chat(model))
                    assert status == 200 and headers["x-vllm-fleet-backend"] == backend.url, model

        asyncio.run(body())
        assert len(one.requests()) == 2 and len(two.requests()) == 2


def test_health_is_200_with_a_healthy_backend_and_503_without() -> None:
    with running() as good, running("--health-status", "503") as dead:

        async def body() -> None:
            async with client() as http:
                async with routing(good.url, dead.url) as router, http.get(f"{router.url}/health") as resp:
                    assert resp.status == 200
                async with routing(dead.url) as router, http.get(f"{router.url}/health") as resp:
                    assert resp.status == 503

        asyncio.run(body())


def test_metrics_count_requests_by_model_backend_status_and_the_added_latency() -> None:
    with FaultServer() as backend:

        async def body() -> None:
            async with routing(backend.url) as router, client() as http:
                for _ in range(3):
                    assert (await post(http, f"{router.url}/v1/chat/completions", chat()))[0] == 200
                assert (await post(http, f"{router.url}/v1/chat/completions", chat("nope")))[0] == 404
                async with http.get(f"{router.url}/metrics") as resp:
                    assert resp.status == 200 and resp.content_type == "text/plain"
                    text = await resp.text()
                ok = {"model": "m", "backend": backend.url, "status": "200"}
                assert metric(text, "vllm_fleet_router_requests_total", **ok) == 3
                assert metric(text, "vllm_fleet_router_in_flight") == 0
                assert metric(text, "vllm_fleet_router_added_latency_seconds_count") == 3
                assert metric(text, "vllm_fleet_router_added_latency_seconds_bucket", le="+Inf") == 3
                assert "vllm_fleet_router_retries" in text and "vllm_fleet_router_ejections" in text

        asyncio.run(body())


def test_the_body_and_headers_arrive_byte_for_byte() -> None:
    # Odd whitespace, key order, escapes and raw UTF-8: a router that re-encoded the JSON would change them.
    sent = (
        b'  {"z" :1,\n\t"model"  :  "m" ,"messages":[{"content":"caf\\u00e9 \xc3\xa9 \\"q\\"","role":"user"}],'
        b'"a":[1.0,1e3,-0.0], "max_tokens":4 }\r\n '
    )
    headers = [
        ("Content-Type", "application/json"),
        ("X-Custom-B", "  two  spaces"),
        ("X-Custom-A", "first"),  # repeated: both, in order (aiohttp's client merges names differing in case)
        ("X-Custom-A", "second"),
        ("Authorization", "Bearer engine-key"),
    ]
    with FaultServer() as backend:
        backend.always("/v1/chat/completions", Echo())

        async def body() -> None:
            async with routing(backend.url) as router, client() as http:
                url = f"{router.url}/v1/chat/completions"
                async with http.post(url, data=sent, headers=headers) as resp:
                    assert resp.status == 200
                    assert await resp.read() == sent  # and back, byte for byte

        asyncio.run(body())
    (received,) = backend.requests("/v1/chat/completions")
    assert received.body == sent
    custom = [(k, v) for k, v in received.headers if k.lower().startswith(("x-custom", "authorization", "content-t"))]
    assert custom == [(k, v.strip()) for k, v in headers], received.headers  # names, order and values as sent
    assert received.header("content-length") == str(len(sent))
    assert received.header("x-forwarded-for") == "127.0.0.1"  # the client, for the engine's log


def test_the_clients_address_is_added_to_the_end_of_x_forwarded_for() -> None:
    with FaultServer() as backend:
        backend.always("/v1/chat/completions", Echo())

        async def body() -> None:
            async with routing(backend.url) as router, client() as http:
                for before in ({}, {"X-Forwarded-For": "10.1.2.3"}, {"x-forwarded-for": "10.1.2.3, 10.4.5.6"}):
                    status, _, _ = await post(http, f"{router.url}/v1/chat/completions", chat(), headers=before)
                    assert status == 200

        asyncio.run(body())
    chain = [[v for k, v in r.headers if k.lower() == "x-forwarded-for"] for r in backend.requests()]
    assert chain == [["127.0.0.1"], ["10.1.2.3, 127.0.0.1"], ["10.1.2.3, 10.4.5.6, 127.0.0.1"]]


def test_a_stream_reaches_the_client_as_it_is_generated() -> None:
    with running("--itl-ms", "50") as engine:

        async def body() -> tuple[float, float]:
            async with routing(engine.url) as router, client() as http:
                request = chat("yardstick", max_tokens=20, stream=True)
                started = time.monotonic()
                arrivals = []
                async with http.post(f"{router.url}/v1/chat/completions", json=request) as resp:
                    assert resp.status == 200 and resp.content_type == "text/event-stream"
                    async for line in resp.content:
                        if line.startswith(b"data: "):
                            arrivals.append(time.monotonic() - started)
                assert len(arrivals) == 1 + 20 + 1 + 1  # role, tokens, usage, [DONE]
                return arrivals[1], arrivals[-1]

        first, last = asyncio.run(body())
    # 20 tokens 50 ms apart: the last is sent >= 0.95 s after the first; a buffering router would deliver
    # them together.
    assert first < last - 0.5, (first, last)


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_a_stream_of_either_line_end_goes_on_event_by_event(line_end: bytes) -> None:
    """SSE lets lines end in LF or CRLF: a stream in either form reaches the client an event at a time, and the
    router still reads its text (a continuation needs it)."""
    events = (*(b'{"choices":[{"index":0,"delta":{"content":"%d"}}]}' % i for i in range(10)), b"[DONE]")
    with FaultServer() as backend:
        backend.always("/v1/chat/completions", Stream(events, gap_s=0.1, line_end=line_end))

        async def body() -> list[float]:
            async with routing(backend.url) as router, client() as http:
                started, arrivals, raw = time.monotonic(), [], b""
                async with http.post(f"{router.url}/v1/chat/completions", json=chat(stream=True)) as resp:
                    async for piece in resp.content.iter_any():
                        raw += piece
                        arrivals += [time.monotonic() - started] * piece.count(b"data: ")
                assert raw == b"".join(b"data: " + e + line_end * 2 for e in events)  # as sent, byte for byte
                return arrivals

        arrivals = asyncio.run(body())
    assert len(arrivals) == 11
    assert arrivals[0] < arrivals[-1] - 0.6, arrivals  # 1 s of events; a router holding them sends all at the end


def test_a_client_that_disconnects_mid_stream_cancels_the_upstream_request() -> None:
    events = tuple(b'{"choices":[{"delta":{"content":"x"}}]}' for _ in range(200))
    with FaultServer() as backend:
        backend.always("/v1/chat/completions", Stream(events, gap_s=0.05))

        async def body() -> None:
            async with routing(backend.url) as router:
                for _ in range(4):  # more than eject_after: a client leaving is not the backend's failure
                    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                    data = json.dumps(chat(stream=True)).encode()
                    writer.write(
                        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
                    )
                    got = b""
                    while got.count(b"data: ") < 2:
                        got += await reader.read(4096)
                    seen = len(backend.closed)
                    writer.transport.abort()
                    left = time.monotonic()
                    closed = lambda seen=seen: len(backend.closed) > seen  # noqa: E731
                    await until(closed, 5.0, "the backend to see its connection closed")
                    assert backend.closed[-1].at - left < 2.0  # long before the 10 s stream would end
                    await until(lambda: router.pool.backends[backend.url].in_flight == 0, 5.0, "in_flight 0")
                (state,) = router.pool.backends.values()
                assert state.failures == 0 and state.ejections == 0 and state.available(time.monotonic())
                backend.always("/v1/chat/completions", None)
                async with aiohttp.ClientSession() as http:
                    assert (await post(http, f"{router.url}/v1/chat/completions", chat()))[0] == 200

        asyncio.run(body())


def test_a_client_that_gives_up_before_the_first_byte_cancels_upstream_and_leaves_no_in_flight() -> None:
    with FaultServer() as backend:
        backend.always("/v1/chat/completions", Hang())  # a long prefill: nothing comes back for now

        async def body() -> None:
            async with routing(backend.url) as router:
                for attempt in range(3):
                    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as http:
                        with pytest.raises(TimeoutError):
                            await post(http, f"{router.url}/v1/chat/completions", chat())
                    await until(lambda n=attempt: len(backend.closed) > n, 5.0, "the upstream request to be closed")
                state = router.pool.backends[backend.url]
                await until(lambda: state.in_flight == 0, 5.0, f"in_flight 0 (it is {state.in_flight})")
                assert state.in_flight_tokens == 0 and router.metrics.in_flight._value.get() == 0
                assert state.failures == 0  # the client left: not the backend's failure

        asyncio.run(body())


def test_answer_headers_arrive_as_the_backend_sent_them_and_a_204_has_no_body() -> None:
    headers = (("Set-Cookie", "a=1"), ("X-Mixed-Case", "v"), ("set-cookie", "b=2"))
    with FaultServer() as backend:
        backend.script("/v1/chat/completions", Answer(200, b"{}", headers))
        backend.script("/v1/thing", Answer(204, b"", ()))

        async def body() -> None:
            async with routing(backend.url) as router:
                reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                payload = json.dumps(chat()).encode()
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload))  # fmt: skip
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                lines = head.split("\r\n")
                assert [line for line in lines if line.lower().startswith(("set-cookie", "x-mixed"))] == [
                    "Set-Cookie: a=1", "X-Mixed-Case: v", "set-cookie: b=2"
                ]  # fmt: skip
                await reader.readexactly(2)  # the body, {}
                writer.write(b"DELETE /v1/thing HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
                assert head.startswith("http/1.1 204") and "content-length" not in head and "chunked" not in head
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection still works
                assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
                writer.close()

        asyncio.run(body())


def test_a_head_request_is_answered_without_waiting_for_a_body() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):
            while head := await reader.readuntil(b"\r\n\r\n"):  # a HEAD's answer: the GET's length, no body
                body = b"" if head.startswith(b"HEAD ") else b'{"object": "list", "data": []}'.ljust(42)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 42\r\n\r\n" + body)

    async def body() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        timeout = aiohttp.ClientTimeout(total=5)
        async with routing(url) as router, client() as http, http.head(f"{router.url}/files/x", timeout=timeout) as r:
            assert (r.status, r.headers["content-length"]) == (200, "42")
        server.close()

    asyncio.run(body())


def test_a_100_continue_expectation_is_met_by_the_router_and_interim_answers_are_not_the_answer() -> None:
    """The router answers a client's Expect: 100-continue itself (it holds the whole body), so the backend is
    not asked to; a 1xx a backend sends anyway (here 103 Early Hints, in a write of its own, as uvicorn sends
    its 100 Continue) is skipped, and the final answer is the one relayed."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                if not head.startswith(b"POST "):  # health checks, /v1/models
                    listed = b'{"object": "list", "data": [{"id": "m", "object": "model"}]}'
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(listed), listed))
                    continue
                seen.append(head)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                             % (len(body), body))  # fmt: skip

    async def body() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with routing(url) as router:
            reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
            payload = json.dumps(chat()).encode()
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(payload))  # fmt: skip
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(payload)
            for _ in range(2):  # the same connection, twice: nothing of the first answer is left over
                head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
                assert head.startswith("http/1.1 200 ") and "link:" not in head, head
                length = int(head.split("content-length: ")[1].split("\r\n")[0])
                assert await reader.readexactly(length) == payload
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload))  # fmt: skip
            writer.close()
        server.close()

    asyncio.run(body())
    assert seen and not any(b"expect:" in head.lower() for head in seen), seen
