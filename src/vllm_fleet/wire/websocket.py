"""What a proxy that passes a WebSocket's bytes on unread needs of its framing (RFC 6455 §5), to end a session
itself: where one side's messages end, followed as its bytes pass, and the frames it sends in their place.

Only the frame headers are read, never a payload: a message ends with its last data frame (FIN set), and a
control frame (close, ping, pong) may come between two messages or between the fragments of one (§5.4), so
only between two messages may a frame of the proxy's own go in.
"""

from __future__ import annotations

POLICY_VIOLATION = 1008  # §7.4.1: the endpoint ends the session because a message broke its policy
MAX_REASON_BYTES = 123  # §5.5: a control frame's payload is at most 125 bytes, two of them the close code


class Messages:
    """Where the messages end in the frames one side of a WebSocket sends, read as they pass."""

    __slots__ = ("_ends", "_fragmented", "_head", "_left", "between")

    def __init__(self) -> None:
        self.between = True  # what was read ends with a whole message (or nothing yet): a frame may go in here
        self._head = b""  # a frame header cut at the end of a read
        self._left = 0  # payload bytes of the frame being read still to come
        self._ends = False  # the frame being read leaves the side between two messages
        self._fragmented = False  # a data message is begun and not ended

    def read(self, data: bytes, to_end: bool = False) -> int:
        """Follow ``data``'s frames on; with ``to_end``, stop just past the first point between two messages in it.
        Returns how many of its bytes were read (all of them unless it stopped)."""
        at, size = 0, len(data)
        while at < size:
            if self._left:  # within a payload
                step = min(self._left, size - at)
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
                self.between = True
                if to_end:
                    return at
        return at

    def _begin(self, first: int, length: int) -> None:
        final, control = first & 0x80, first & 0x08
        if not control:
            self._fragmented = not final
        self._ends = not self._fragmented  # a control frame between two messages, or a message's last frame
        self._left = length
        self.between = False


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
