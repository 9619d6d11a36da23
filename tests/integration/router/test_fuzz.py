"""Mutated requests against the router's HTTP/1.1 server over real sockets (issue 14: bad input never hurts
the router). Each input is a well-formed request (JSON bodies, chunked, 100-continue, pipelined, a
WebSocket handshake, the admin API) with a few random edits: bytes flipped, inserted, cut, repeated,
spliced with another request, or tokens that matter to a parser (CRLFs, lengths, chunk sizes). Whatever
comes, the router answers in HTTP/1.1 or closes, never raises into its event loop or logs an error, leaves
no connection open, and still answers a well-formed request afterwards. Seeded: a failure is reproducible."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from tests.integration.router.harness import routing
from tests.servers.fake_engine import running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
INPUTS = 400  # per seed: about 15 s on a 2-core machine

_CHAT = b'{"model":"yardstick","messages":[{"role":"user","content":"hi"}],"max_tokens":3}'
WELL_FORMED = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + (
    b"Content-Length: %d\r\n\r\n%s" % (len(_CHAT), _CHAT)
)
SEEDS = [
    WELL_FORMED,
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.0\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'1a\r\n{"model":"yardstick","prom\r\n1b\r\npt":"hi","max_tokens":2,"a":1}\r\n0\r\n\r\n',
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 81\r\n\r\n"
    b'{"model":"yardstick","messages":[{"role":"user","content":"hi"}],"stream":true}  ',
    b"GET /v1/realtime?model=yardstick HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x81\x82abcd\x09\x07",
    b'POST /v1/embeddings HTTP/1.0\r\nContent-Length: 40\r\n\r\n{"model":"yardstick","input":["a","b"]}  ',
    b"GET /admin/backends HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n\r\n",
]
TOKENS = [
    b"\r\n", b"\r\n\r\n", b"0\r\n\r\n", b":", b" ", b"\x00", b"\xff", b"\xed\xa0\x80", b"{", b"}", b"%",
    b"Content-Length: 99999999999999999999\r\n", b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n",
    b"ffffffffffffffff\r\n", b"Connection: close\r\n", b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
    b"Expect: 100-continue\r\n", b"HTTP/1.1", b'"model":', b'"messages":[', b'"prompt":[1,2]', b'"stream":true',
]  # fmt: skip


def mutated(rng: random.Random) -> bytes:
    data = bytearray(rng.choice(SEEDS))
    for _ in range(rng.randint(1, 5)):
        at = rng.randrange(len(data) + 1)
        edit = rng.randrange(6)
        if edit == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif edit == 1:
            data[at:at] = rng.choice(TOKENS)
        elif edit == 2:
            del data[at : at + rng.randint(1, 16)]
        elif edit == 3:
            data[at:at] = data[at : at + rng.randint(1, 64)] * rng.randint(1, 4)
        elif edit == 4:
            other = rng.choice(SEEDS)
            data[at:] = other[rng.randrange(len(other) + 1) :]
        else:
            data += rng.choice(SEEDS)  # pipelined
    return bytes(data)


async def exchange(port: int, data: bytes, pieces: int = 1, eof: bool = False) -> bytes:
    """Send ``data`` (in ``pieces``) on a new connection; what came back until the router closed or went quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        step = max(1, len(data) // pieces)
        for at in range(0, len(data), step):
            writer.write(data[at : at + step])
            await writer.drain()
        if eof:
            writer.write_eof()
        while chunk := await asyncio.wait_for(reader.read(65536), 0.3 if got else 3.0):
            got += chunk
    except (TimeoutError, ConnectionResetError, BrokenPipeError):
        pass  # quiet (a keep-alive connection waiting for more), or closed on us
    finally:
        writer.close()
    return got


@pytest.mark.parametrize("seed", [1, 2])
def test_mutated_requests_get_http_answers_or_a_close_and_never_hurt_the_router(seed: int) -> None:
    with running() as backend:

        async def body() -> None:
            hurt: list[str] = []

            class Errors(logging.Handler):
                def emit(self, record: logging.LogRecord) -> None:
                    if record.levelno >= logging.ERROR and record.name.startswith("vllm_fleet"):
                        hurt.append(f"logged: {record.getMessage()}")

            handler = Errors()
            logging.getLogger().addHandler(handler)
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _, context: hurt.append(f"raised: {context.get('message')}"))
            rng = random.Random(seed)
            try:
                async with routing(backend.url, request_timeout_s=1.0, max_body_bytes=4096) as router:
                    for i in range(INPUTS):
                        data = mutated(rng)
                        got = await exchange(router.port, data, rng.choice((1, 1, 3, 40)), rng.random() < 0.2)
                        assert not got or got.startswith(b"HTTP/1.1 "), (data, got[:200])
                        assert not hurt, (data, hurt)
                        if i % 100 == 0:
                            answer = await exchange(router.port, WELL_FORMED)
                            assert answer.startswith(b"HTTP/1.1 200 "), (i, answer[:200])
                    await asyncio.sleep(1.5)  # the last ones' lingering closes and request timeouts
                    assert not router._server.connections and router.in_flight() == 0
            finally:
                logging.getLogger().removeHandler(handler)

        asyncio.run(body())
