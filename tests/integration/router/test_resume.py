"""A streamed chat completion whose backend dies mid-stream is continued on another backend (resume.py):
the client sees one stream (one role event, every content event once, the end), and the other backend
gets the prompt plus the text so far with continue_final_message."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import aiohttp
import pytest

from tests.integration.router.harness import chat, client, metric, routing
from tests.servers.faults import Answer, FaultServer, Stream

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
PATH = "/v1/chat/completions"


def event(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": choices, "usage": usage}).encode()


ROLE = event({"role": "assistant", "content": ""})
BROKEN = Stream(
    (ROLE, event({"content": "The"}), event({"content": " capital"}), event({"content": " is"})), reset=True
)
REST = Stream((ROLE, event({"content": " Paris"}), event({"content": "."}, "stop"), b"[DONE]"))


async def stream_through(url: str, body: dict) -> tuple[list[dict], bool]:
    """The JSON events the client received, and whether the stream ended with [DONE] and no error."""
    events, done = [], False
    async with client() as http, http.post(f"{url}{PATH}", json=body) as resp:
        assert resp.status == 200
        raw = await resp.read()
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):  # either line end (SSE allows both)
        if block == b"data: [DONE]":
            done = True
        elif block.startswith(b"data: "):
            events.append(json.loads(block[6:]))
    return events, done


# The same backend dying in the middle of an event: the torn event never reached the client (whole events
# only), so the continuation must not carry it either.
TORN = Stream(BROKEN.events, reset=True, torn=b'data: {"id": "c", "object": "chat.completion.chunk", "cho')


CRLF = b"\r\n"  # sse-starlette's line end


@pytest.mark.parametrize(
    ("broken", "rest"),
    [(BROKEN, REST), (TORN, REST), (replace(TORN, line_end=CRLF), replace(REST, line_end=CRLF))],
    ids=["between-events", "mid-event", "mid-event-crlf"],
)
def test_a_stream_cut_mid_answer_is_continued_on_another_backend(broken: Stream, rest: Stream) -> None:
    with FaultServer() as first, FaultServer() as second:
        first.script(PATH, broken)
        second.script(PATH, rest)

        async def body() -> None:
            async with routing(first.url, second.url, policy="round-robin") as router:
                events, done = await stream_through(router.url, chat(stream=True, max_tokens=10))
                text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
                roles = [e for e in events if e["choices"] and "role" in e["choices"][0]["delta"]]
                assert (text, done, len(roles)) == ("The capital is Paris.", True, 1)
                async with client() as http, http.get(f"{router.url}/metrics") as resp:
                    assert metric(await resp.text(), "vllm_fleet_router_retries_total", reason="continued") == 1

        asyncio.run(body())
        [again] = second.requests(PATH)
        sent = json.loads(again.body)
        assert sent["messages"][-1] == {"role": "assistant", "content": "The capital is"}
        assert sent["messages"][:-1] == chat()["messages"]
        assert (sent["continue_final_message"], sent["add_generation_prompt"], sent["max_tokens"]) == (True, False, 7)


def test_with_no_other_backend_the_client_sees_the_stream_break() -> None:
    with FaultServer() as only:
        only.script(PATH, BROKEN)

        async def body() -> None:
            async with routing(only.url) as router, client() as http:
                with pytest.raises(Exception):  # noqa: B017 (aiohttp's payload error: the stream did not end)
                    async with http.post(f"{router.url}{PATH}", json=chat(stream=True)) as resp:
                        await resp.read()

        asyncio.run(body())
        assert len(only.requests(PATH)) == 1  # never sent twice to the same backend


FINISHED = (ROLE, event({"content": "Paris"}), event({"content": "."}, "stop"))


@pytest.mark.parametrize(
    "sent", [FINISHED, (*FINISHED, b"[DONE]")], ids=["finish-reason-came", "done-came-but-not-the-chunked-end"]
)
def test_a_backend_failing_after_the_answers_end_leaves_a_whole_stream_and_sends_nothing_again(
    sent: tuple[bytes, ...],
) -> None:
    """The answer had finished when its backend died: there is nothing to continue; the router ends the stream
    (with the [DONE] that was lost, if it was), even with no other backend to go to."""
    with FaultServer() as only:
        only.script(PATH, Stream(sent, reset=True))

        async def body() -> bytes:
            async with (
                routing(only.url) as router,
                client() as http,
                http.post(f"{router.url}{PATH}", json=chat(stream=True)) as resp,
            ):
                return await resp.read()  # raises if the stream did not end

        raw = asyncio.run(body())
        events = [json.loads(b[6:]) for b in raw.split(b"\n\n") if b.startswith(b"data: {")]
        assert [e["choices"][0]["delta"].get("content") for e in events] == ["", "Paris", "."]
        assert raw.count(b"data: [DONE]") == 1 and raw.endswith(b"data: [DONE]\n\n")
        assert len(only.requests(PATH)) == 1


def test_a_stream_that_is_not_sse_reaches_the_client_whole_and_is_not_continued() -> None:
    """Past MAX_HELD bytes with no event end the stream is not SSE: passed on as it came, and a continuation
    (which would need whole events) is not tried when it breaks."""
    blob = Stream((b"x" * (700 * 1024), b"y" * (700 * 1024)), reset=True, line_end=b"")
    with FaultServer() as first, FaultServer() as second:
        first.script(PATH, blob)

        async def body() -> bytes:
            got = b""
            async with routing(first.url, second.url, policy="round-robin") as router, client() as http:
                with pytest.raises(Exception):  # noqa: B017 (aiohttp's payload error: the stream did not end)
                    async with http.post(f"{router.url}{PATH}", json=chat(stream=True)) as resp:
                        async for piece in resp.content.iter_any():
                            got += piece
            return got

        got = asyncio.run(body())
        assert got == b"".join(b"data: " + e for e in blob.events)
        assert second.requests(PATH) == []


def test_a_plain_stream_is_not_held_back_by_the_transcript() -> None:
    """Events go out as they arrive (the router holds back only a torn event's start)."""
    with FaultServer() as backend:
        backend.script(PATH, Stream((ROLE, event({"content": "a"}), event({"content": "b"}, "stop"), b"[DONE]"), 0.3))

        async def body() -> None:
            async with routing(backend.url) as router, client() as http:
                async with http.post(f"{router.url}{PATH}", json=chat(stream=True)) as resp:
                    first = await resp.content.readuntil(b"\n\n")
                    assert first.startswith(b"data: ") and b"assistant" in first
                    rest = await resp.read()
                assert rest.endswith(b"data: [DONE]\n\n")

        asyncio.run(body())


def text_event(text: str, finish: str | None = None) -> bytes:
    return json.dumps({"id": "t", "object": "text_completion", "choices": [{"index": 0, "text": text,
                       "finish_reason": finish}]}).encode()  # fmt: skip


def test_a_streamed_completion_is_continued_from_its_prompt() -> None:
    path = "/v1/completions"
    with FaultServer() as first, FaultServer() as second:
        first.script(path, Stream((text_event(" the"), text_event(" capital")), reset=True))
        second.script(path, Stream((text_event(" of France"), text_event(".", "stop"), b"[DONE]")))

        async def body() -> None:
            async with routing(first.url, second.url, policy="round-robin") as router, client() as http:
                request = {"model": "m", "prompt": "Paris is", "max_tokens": 10, "stream": True}
                async with http.post(f"{router.url}{path}", json=request) as resp:
                    assert resp.status == 200
                    raw = await resp.read()
                blocks = [b[6:] for b in raw.split(b"\n\n") if b.startswith(b"data: ")]
                text = "".join(json.loads(b)["choices"][0]["text"] for b in blocks if b != b"[DONE]")
                assert (text, blocks[-1]) == (" the capital of France.", b"[DONE]")

        asyncio.run(body())
        [again] = second.requests(path)
        assert json.loads(again.body) == {
            "model": "m", "prompt": "Paris is the capital", "max_tokens": 8, "stream": True
        }  # fmt: skip


@pytest.mark.parametrize("prompt", [[9, 8, 7], [[9, 8, 7]]], ids=["ids", "one-list-of-ids"])
def test_a_streamed_completion_of_token_ids_is_continued_with_the_texts_ids_from_the_new_backend(
    prompt: list,
) -> None:
    path = "/v1/completions"
    with FaultServer() as first, FaultServer() as second:
        first.script(path, Stream((text_event(" the"), text_event(" capital")), reset=True))
        second.always(
            "/tokenize", Answer(200, json.dumps({"count": 2, "max_model_len": 64, "tokens": [5, 6]}).encode())
        )
        second.script(path, Stream((text_event(" of France"), text_event(".", "stop"), b"[DONE]")))

        async def body() -> None:
            async with routing(first.url, second.url, policy="round-robin") as router, client() as http:
                request = {"model": "m", "prompt": prompt, "max_tokens": 10, "stream": True}
                async with http.post(f"{router.url}{path}", json=request) as resp:
                    raw = await resp.read()
                blocks = [b[6:] for b in raw.split(b"\n\n") if b.startswith(b"data: ")]
                text = "".join(json.loads(b)["choices"][0]["text"] for b in blocks if b != b"[DONE]")
                assert (text, blocks[-1]) == (" the capital of France.", b"[DONE]")

        asyncio.run(body())
        [tokenize] = second.requests("/tokenize")
        assert json.loads(tokenize.body) == {"model": "m", "prompt": " the capital", "add_special_tokens": False}
        [again] = second.requests(path)
        assert json.loads(again.body) == {"model": "m", "prompt": [9, 8, 7, 5, 6], "max_tokens": 8, "stream": True}


def test_a_completion_of_token_ids_is_not_continued_where_the_backend_cannot_tokenize() -> None:
    path = "/v1/completions"
    with FaultServer() as first, FaultServer() as second:
        first.script(path, Stream((text_event(" the"),), reset=True))
        second.always("/tokenize", Answer(404, b'{"detail": "Not Found"}'))

        async def body() -> None:
            async with routing(first.url, second.url, policy="round-robin") as router, client() as http:
                request = {"model": "m", "prompt": [9, 8, 7], "max_tokens": 10, "stream": True}
                with pytest.raises(aiohttp.ClientPayloadError):  # the stream breaks, as without a continuation
                    async with http.post(f"{router.url}{path}", json=request) as resp:
                        await resp.read()
                assert router.pool.backends[second.url].failures == 0  # no failure counted against it

        asyncio.run(body())
        assert second.requests(path) == []
