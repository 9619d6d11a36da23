"""The origin's side of an HTTP/1.1 Upgrade (a WebSocket, such as vLLM's /v1/realtime) a proxy passes on.

The handshake request goes out on a connection of its own; the answer's head is parsed by httptools. A
``101 Switching Protocols`` turns the connection into one end of a byte tunnel (:meth:`Upgrade.join`):
what the origin sends goes to the client unread, frames, masks, compression and all, so the proxy need
not speak WebSocket at all. A proxy that meters a session, or must end one itself (:meth:`Upgrade.end`),
follows the origin's messages as they pass (websocket.Messages): what they say, and where they end, so
that its own last frames go in between two of them. Any other answer is read whole (it is the handshake's
refusal: small) and the connection closes.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools

from vllm_fleet.wire.http1 import Client, ConnectionClosed, MalformedResponse
from vllm_fleet.wire.websocket import Messages

MAX_REFUSAL_BYTES = 1 << 20  # a refusal's body beyond this is cut


class Upgrade(asyncio.Protocol):
    """One upgrade handshake, then (after a 101) one end of a tunnel; :meth:`close` when done."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport
        self.status = 0
        self.headers: dict[str, str] = {}  # lower-cased names (the last of a repeated one)
        self.raw_headers: list[tuple[str, str]] = []  # as the origin sent them
        self.body = b""  # a refusal's body
        self._parts: list[bytes] = []
        self._size = 0  # of the refusal's body held in _parts
        self._answered: asyncio.Future[None]
        self.closed: asyncio.Future[None]  # done when the connection is gone
        self._client: asyncio.Transport | None = None  # after join: where the origin's bytes go
        self._messages: Messages | None = None  # after join: the origin's messages, when followed
        self._last: bytes | None = None  # after end: what the client gets in place of the origin's next message
        self._early = b""  # bytes after the 101's head, held until join

    async def answered(self) -> Upgrade:
        """Wait for the answer: its head (a 101), or head and body (a refusal). Raises if the connection ends
        first, or what came is not HTTP."""
        await asyncio.shield(self._answered)
        return self

    def join(self, client: asyncio.Transport, messages: Messages | None = None) -> None:
        """After a 101: the origin's bytes go to ``client`` from now on (the other way is the client side's),
        followed by ``messages`` on their way, if given (then :meth:`end` may be called)."""
        self._client, self._messages = client, messages
        early, self._early = self._early, b""
        if early:
            self.data_received(early)
        self.transport.resume_reading()

    def end(self, last: bytes) -> None:
        """End the session from here: the client gets ``last`` in place of what the origin sends after the message
        it is sending now (at once, if between two), and the origin's side closes (so it stops the session's
        work, as when its client leaves). Needs the ``messages`` given to :meth:`join`."""
        if self._last is not None or self.transport.is_closing():
            return
        self._last = last
        if cast(Messages, self._messages).between:
            self._finish()

    def close(self) -> None:
        self.transport.close()

    def _finish(self) -> None:
        cast(asyncio.Transport, self._client).write(cast(bytes, self._last))
        self.transport.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._answered, self.closed = loop.create_future(), loop.create_future()
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._client is not None:
            ending = False
            if self._messages is not None:
                read = self._messages.read(data, to_end=self._last is not None)
                if ending := self._last is not None and self._messages.between:
                    data = data[:read]  # the rest is never sent on
            self._client.write(data)
            if ending:
                self._finish()
            return
        if self._answered.done():  # switched, not yet joined (or a refusal's excess)
            if self.status == 101:  # held until join; no more is read till then, so this stays one read
                self._early += data
                self.transport.pause_reading()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._early = data[exc.args[0] :]
            self.transport.pause_reading()  # until join
            self._answer()
        except httptools.HttpParserError as exc:
            self._answer(MalformedResponse(f"not an HTTP/1.1 answer to an upgrade: {exc}"))
            self.transport.close()

    def pause_writing(self) -> None:  # the origin reads slower than the client sends: the client waits
        if self._client is not None:
            self._client.pause_reading()

    def resume_writing(self) -> None:
        if self._client is not None:
            self._client.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.status and self.status != 101 and not self._answered.done():  # a refusal read to the end
            self._answer()
        self._answer(exc or ConnectionClosed("the server closed the connection before answering the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        self.raw_headers.append((key, text))
        self.headers[key.lower()] = text

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim (100, 103): the final answer follows
            self.headers.clear()
            self.raw_headers.clear()
            return
        self.status = status

    def on_body(self, body: bytes) -> None:
        if self._size < MAX_REFUSAL_BYTES:
            self._parts.append(body)
            self._size += len(body)

    def on_message_complete(self) -> None:
        if self.status and self.status != 101:  # a refusal, whole (a 101 is answered at the upgrade)
            self._answer()
            self.transport.close()

    def _answer(self, error: BaseException | None = None) -> None:
        if self._answered.done():
            return
        if error is not None:
            self._answered.set_exception(error)
            self._answered.exception()  # retrieved: a handshake nobody waits for any more is no error
            return
        self.body = b"".join(self._parts)[:MAX_REFUSAL_BYTES]
        self._answered.set_result(None)


async def upgrade(client: Client, method: str, path: str, headers: list[tuple[str, str]]) -> Upgrade:
    """Send the handshake to ``client``'s origin on a new connection and wait for its answer."""
    request = client.head(method, path, b"", headers)
    upgrading = await client.connect(lambda: Upgrade(request))
    try:
        return await upgrading.answered()
    except BaseException:
        upgrading.close()
        raise
