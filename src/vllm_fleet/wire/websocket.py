"""What a proxy that passes a WebSocket's bytes on unread needs of its framing (RFC 6455 §5): where one side's
messages end, followed as its bytes pass, so that it may end a session itself with frames of its own, and
what those messages say, to meter them (RFC 7692's permessage-deflate inflated, so that a session keeps
its compression end to end).

Frames are followed by their heads: a message ends with its last data frame (FIN set), and a control frame
(close, ping, pong) may come between two messages or between the fragments of one (§5.4), so only between
two messages may a frame of the proxy's own go in. Nothing is held but a frame head cut between two reads
and, for a compressed session, its inflater (its window: up to 32 KiB).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import cast

POLICY_VIOLATION = 1008  # §7.4.1: the endpoint ends the session because a message broke its policy
MAX_REASON_BYTES = 123  # §5.5: a control frame's payload is at most 125 bytes, two of them the close code
DEFLATE = "permessage-deflate"
_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 §7.2.2: what the sender took off the end of each compressed message
INFLATE_PIECE = 64 * 1024  # a compressed piece is inflated into the sink this much at a time (a small one may hold MBs)


class Messages:
    """Where the messages end in the frames one side of a WebSocket sends, read as they pass; with a ``sink``,
    what a server's data messages say goes there as it passes (inflated, with the ``inflater`` of a
    compressed session), in pieces that may cut a message anywhere (a client's are masked: not read)."""

    __slots__ = ("_compressed", "_data", "_ends", "_fragmented", "_head", "_inflater", "_left", "_sink", "between")

    def __init__(self, sink: Callable[[bytes], object] | None = None, inflater: Inflater | None = None) -> None:
        self.between = True  # what was read ends with a whole message (or nothing yet): a frame may go in here
        self._sink = sink
        self._inflater = inflater
        self._head = b""  # a frame header cut at the end of a read
        self._left = 0  # payload bytes of the frame being read still to come
        self._ends = False  # the frame being read leaves the side between two messages
        self._data = False  # the frame being read is a data frame (its payload goes to the sink)
        self._fragmented = False  # a data message is begun and not ended
        self._compressed = False  # the data message being read is compressed (RSV1 on its first frame)

    def read(self, data: bytes, to_end: bool = False) -> int:
        """Follow ``data``'s frames on; with ``to_end``, stop just past the first point between two messages in it.
        Returns how many of its bytes were read (all of them unless it stopped)."""
        at, size = 0, len(data)
        while at < size:
            if self._left:  # within a payload
                step = min(self._left, size - at)
                if self._data and self._sink is not None:
                    self._pass(data[at : at + step])
                at, self._left = at + step, self._left - step
            else:
                head = self._head + data[at : at + 14] if self._head else data[at : at + 14]
                length, header = _header(head)
                if length < 0:  # not whole yet: the rest of it comes with the next read
                    self._head, self.between = head, False
                    return size
                at += header - len(self._head)
                self._head = b""
                self._begin(head[0], length)
            if not self._left and self._ends:
                if self._data and self._compressed and self._sink is not None:
                    self._pass(_TAIL, ended=True)  # the message's end
                self.between = True
                if to_end:
                    return at
        return at

    def _begin(self, first: int, length: int) -> None:
        final, control = first & 0x80, first & 0x08
        if not control:
            if not self._fragmented:  # a message's first frame says whether it is compressed (RFC 7692 §6)
                self._compressed = bool(first & 0x40) and self._inflater is not None
            self._fragmented = not final
        self._data = not control
        self._ends = not self._fragmented  # a control frame between two messages, or a message's last frame
        self._left = length
        self.between = False

    def _pass(self, payload: bytes, ended: bool = False) -> None:
        sink = cast(Callable[[bytes], object], self._sink)
        if not self._compressed:
            sink(payload)
            return
        try:
            pieces = cast(Inflater, self._inflater).inflate(payload, ended)
        except zlib.error:  # not what was agreed on: the client fails the session (1007); nothing more is read
            self._sink = None
            return
        for piece in pieces:
            sink(piece)


class Inflater:
    """The decompressor of one side's compressed messages (RFC 7692 §7.2.2). One serves the whole session
    whether or not that side takes its window over from one message to the next (a message compressed
    afresh refers to nothing before it); a message that ends its stream (§7.2.3.4: a final block) has the
    next one start a new decompressor."""

    __slots__ = ("_z",)

    def __init__(self) -> None:
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)  # the largest window inflates any smaller one's output

    def inflate(self, payload: bytes, ended: bool) -> list[bytes]:
        """What ``payload`` inflates to, in pieces of at most INFLATE_PIECE bytes; ``ended``: it ends a message."""
        pieces = []
        while payload and not self._z.eof:
            pieces.append(self._z.decompress(payload, INFLATE_PIECE))
            payload = self._z.unconsumed_tail
        if ended and self._z.eof:
            self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        return pieces


def inflater(extensions: str) -> Inflater | None:
    """The Inflater for a session whose handshake answer agreed on ``extensions`` (its Sec-WebSocket-Extensions);
    None when its messages are not compressed."""
    agreed = (extension.split(";")[0].strip().lower() for extension in extensions.split(","))
    return Inflater() if DEFLATE in agreed else None


def deflate_only(offer: str) -> str:
    """A ``Sec-WebSocket-Extensions`` offer with only its permessage-deflate items: an extension the proxy could
    not read through must not be agreed on for a session it meters."""
    return ", ".join(item.strip() for item in offer.split(",") if item.split(";")[0].strip().lower() == DEFLATE)


def _header(head: bytes) -> tuple[int, int]:
    """(payload length, header size) of the frame ``head`` begins; (-1, 0) while it is not whole."""
    if len(head) < 2:
        return -1, 0
    short, masked = head[1] & 0x7F, head[1] & 0x80
    extended = 2 if short == 126 else 8 if short == 127 else 0
    size = 2 + extended + (4 if masked else 0)
    if len(head) < size:
        return -1, 0
    return (int.from_bytes(head[2 : 2 + extended], "big") if extended else short), size


def frame(opcode: int, payload: bytes) -> bytes:
    """A whole unmasked frame, as a server sends it (§5.1: a server masks nothing)."""
    size = len(payload)
    if size < 126:
        length = bytes((size,))
    elif size < 1 << 16:
        length = bytes((126,)) + size.to_bytes(2, "big")
    else:
        length = bytes((127,)) + size.to_bytes(8, "big")
    return bytes((0x80 | opcode,)) + length + payload


def text(message: str) -> bytes:
    return frame(0x1, message.encode())


def close(code: int, reason: str) -> bytes:
    """A Close frame; a reason longer than a control frame holds is cut (at a character's boundary)."""
    cut = reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore").encode()
    return frame(0x8, code.to_bytes(2, "big") + cut)
