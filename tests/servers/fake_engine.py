"""The yardstick: the smallest fast streaming OpenAI-compatible server we could write.

It answers POST /v1/completions and /v1/chat/completions with a streamed
(SSE, chunked) answer of ``max_tokens`` one-token chunks, a usage chunk and
``[DONE]``, from bytes prepared once per (endpoint, max_tokens), on a raw
asyncio protocol with keep-alive. GET /v1/models, /health and /stats (requests
served) exist too. With ``--itl-ms`` the tokens are spaced in time; with 0
(default) the whole answer goes in one write, so the server costs almost
nothing and a load generator's own limits show.

    python tests/servers/fake_engine.py --port 8011 [--itl-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json

MODEL = "yardstick"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload: dict) -> bytes:
    return _chunk(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


def stream_parts(chat: bool, max_tokens: int) -> list[bytes]:
    """Head, one chunk per token, then usage, [DONE] and the end of the chunked body."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
        b"connection: keep-alive\r\n\r\n"
    )
    kind = "chat.completion.chunk" if chat else "text_completion"
    parts = [head]
    if chat:
        parts.append(_event({"id": "y", "object": kind, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
    for i in range(max_tokens):
        choice = {"index": 0, "delta": {"content": f" t{i}"}} if chat else {"index": 0, "text": f" t{i}"}
        parts.append(_event({"id": "y", "object": kind, "model": MODEL, "choices": [choice]}))
    usage = {"prompt_tokens": 8, "completion_tokens": max_tokens, "total_tokens": 8 + max_tokens}
    parts.append(_event({"id": "y", "object": kind, "model": MODEL, "choices": [], "usage": usage}))
    parts.append(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return parts


def _plain(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status.encode(),
        content_type,
        len(body),
        body,
    )


class Yardstick(asyncio.Protocol):
    """One connection: parse requests from the buffer, answer each in order."""

    served = 0
    itl_s = 0.0
    _cache: dict[tuple[bool, int], list[bytes]] = {}  # noqa: RUF012 - shared by every connection on purpose

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._answer(head.split(" ", 2), body)

    def _answer(self, request_line: list[str], body: bytes) -> None:
        method, path = request_line[0], request_line[1]
        if method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            Yardstick.served += 1
            max_tokens = int(json.loads(body).get("max_tokens") or 16)
            key = (path.endswith("chat/completions"), max_tokens)
            parts = self._cache.get(key) or self._cache.setdefault(key, stream_parts(*key))
            if self.itl_s <= 0:
                self.transport.write(b"".join(parts))
            else:
                self.transport.write(parts[0])
                self._drip(parts, 1)
        elif path == "/v1/models":
            self.transport.write(_plain("200 OK", json.dumps({"object": "list", "data": [{"id": MODEL}]}).encode()))
        elif path == "/health":
            self.transport.write(_plain("200 OK", b""))
        elif path == "/stats":
            self.transport.write(_plain("200 OK", json.dumps({"served": Yardstick.served}).encode()))
        else:
            self.transport.write(_plain("404 Not Found", b"{}"))

    def _drip(self, parts: list[bytes], index: int) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(parts[index])
        if index + 1 < len(parts):
            asyncio.get_running_loop().call_later(self.itl_s, self._drip, parts, index + 1)


async def serve(port: int, itl_ms: float) -> None:
    Yardstick.itl_s = itl_ms / 1000
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Yardstick, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--itl-ms", type=float, default=0.0, help="Gap between streamed tokens.")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port, args.itl_ms))
    else:
        uvloop.run(serve(args.port, args.itl_ms))


if __name__ == "__main__":
    main()
