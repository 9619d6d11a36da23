"""A tunnel the proxy ends itself (``Upgrade.end``): its last frames go in between two of the origin's messages,
never into one, and the origin's side closes. Real sockets on loopback: an origin that answers the upgrade,
and a peer standing for the client."""

from __future__ import annotations

import asyncio

from websockets.frames import Frame, Opcode

from vllm_fleet.wire import http1, websocket
from vllm_fleet.wire.upgrade import upgrade

SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
FIRST = Frame(Opcode.TEXT, b"a" * 1000).serialize(mask=False)
SECOND = Frame(Opcode.TEXT, b"the next message").serialize(mask=False)
LAST = websocket.close(websocket.POLICY_VIOLATION, "ended here")


async def _ended_within_a_message(cut: int) -> tuple[bytes, bool]:
    """The origin sends ``FIRST`` up to ``cut``, the proxy ends the session, the origin sends the rest and
    ``SECOND``: what the client got, and whether the origin's side was closed."""
    go_on, origin_closed = asyncio.Event(), asyncio.Event()

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(SWITCHED + FIRST[:cut])
        await go_on.wait()
        writer.write(FIRST[cut:] + SECOND)
        await reader.read()  # b"": the proxy closed its side
        origin_closed.set()
        writer.close()

    got = bytearray()
    client_done = asyncio.Event()

    async def client_end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            got.extend(data)
        client_done.set()

    loop = asyncio.get_running_loop()
    origin_server = await asyncio.start_server(origin, "127.0.0.1", 0)
    client_server = await asyncio.start_server(client_end, "127.0.0.1", 0)
    async with origin_server, client_server:
        port = origin_server.sockets[0].getsockname()[1]
        tunnel = await upgrade(http1.Client(f"http://127.0.0.1:{port}"), "GET", "/", [("Upgrade", "websocket")])
        to_client, _ = await loop.create_connection(asyncio.Protocol, *client_server.sockets[0].getsockname())
        tunnel.join(to_client, messages=websocket.Messages())
        while len(got) < cut:  # what came before the end is on its way
            await asyncio.sleep(0.01)
        tunnel.end(LAST)
        go_on.set()
        await asyncio.wait_for(tunnel.closed, 5)
        await asyncio.wait_for(origin_closed.wait(), 5)
        to_client.close()
        await asyncio.wait_for(client_done.wait(), 5)
    return bytes(got), origin_closed.is_set()


def test_an_end_within_a_message_comes_after_that_message_and_nothing_of_the_next_is_sent() -> None:
    for cut in (1, 2, 4, 500):  # within the frame's head, just past it, and within its payload
        got, origin_closed = asyncio.run(_ended_within_a_message(cut))
        assert got == FIRST + LAST, cut
        assert origin_closed


def test_an_end_between_two_messages_is_sent_at_once() -> None:
    got, origin_closed = asyncio.run(_ended_within_a_message(len(FIRST)))
    assert got == FIRST + LAST and origin_closed
