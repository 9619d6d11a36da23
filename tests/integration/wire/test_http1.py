"""The bench's HTTP/1.1 client against a scripted server on loopback: bodies, keep-alive, broken answers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from vllm_fleet.wire import http1

pytestmark = pytest.mark.integration

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # returns whether to keep the connection


class Scripted:
    """A server whose answer to each request is the handler of its path; counts connections and keeps the heads."""

    def __init__(self, handlers: dict[str, Handler]):
        self.handlers = handlers
        self.connections = 0
        self.heads: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        for writer in self.writers:
            writer.close()
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = int(
                    next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(
                        b":"
                    )[1]
                )
                await reader.readexactly(length)
                path = head.split(b" ")[1].decode()
                if not await self.handlers[path](head, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


async def _ok(head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
    return True


async def _chunked_slowly(head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    for piece in (b"data: 1\n\n", b"data: 2\n\n"):
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
        await asyncio.sleep(0.05)
    writer.write(b"0\r\n\r\n")
    return True


async def _until_close(head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    return False


async def _connection_close(head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
    return False


async def _hang_up(head: bytes, writer: asyncio.StreamWriter) -> bool:
    return False


async def _cut_mid_body(head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await writer.drain()
    return False


async def _garbage(head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"SPDY/9 what\r\n\r\n")
    return True


async def _endless_head(head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nx-endless: ")
    with contextlib.suppress(ConnectionError):  # until the client gives up on it
        for _ in range(1024):  # 16 MiB of one header: without a limit, the client holds it all
            writer.write(b"a" * 16384)
            await writer.drain()
    return False


_answered: set[asyncio.StreamWriter] = set()


async def _closes_when_idle(head: bytes, writer: asyncio.StreamWriter) -> bool:
    """The first request on a connection is answered; the next finds the connection closed by the server."""
    if writer in _answered:
        return False  # as uvicorn's keep-alive timeout, crossing the request: not a byte of answer
    _answered.add(writer)
    return await _ok(head, writer)


async def _answers_part_then_closes(head: bytes, writer: asyncio.StreamWriter) -> bool:
    if writer in _answered:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-le")  # the server read this request: it is not sent again
        await writer.drain()
        return False
    _answered.add(writer)
    return await _ok(head, writer)


async def _never(head: bytes, writer: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(10)
    return True


def _run(handlers: dict[str, Handler], test: Callable[[str, Scripted], Awaitable[None]]) -> Scripted:
    async def main() -> Scripted:
        server = Scripted(handlers)
        async with server as url:
            await test(url, server)
        return server

    return asyncio.run(main())


async def _get(client: http1.Client, path: str) -> tuple[int, bytes]:
    response = await client.request("POST", path, b"{}")
    try:
        return response.status, await response.read()
    finally:
        response.release()


def test_keep_alive_reuses_one_connection_and_sends_one_well_formed_head():
    async def test(url: str, server: Scripted) -> None:
        client = http1.Client(url + "/prefix/", {"Authorization": "Bearer k"})
        assert client.send_now("POST", "/ok", b"{}") is None  # nothing idle yet: request() connects
        for _ in range(3):
            assert await _get(client, "/ok") == (200, b"hello")
        response = client.send_now("POST", "/ok", b"{}")  # written now, on the idle connection
        assert response is not None and response.sent_at > 0
        assert (await response.ready()).status == 200 and await response.read() == b"hello"
        response.release()
        client.close()

    server = _run({"/prefix/ok": _ok}, test)
    assert server.connections == 1
    head = server.heads[0].decode()
    port = head.split("Host: 127.0.0.1:")[1].split("\r\n")[0]
    assert (
        head
        == f"POST /prefix/ok HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer k\r\nContent-Length: 2\r\n\r\n"
    )


def test_chunked_body_arrives_as_it_is_sent():
    async def test(url: str, server: Scripted) -> None:
        client = http1.Client(url)
        response = await client.request("POST", "/sse", b"{}")
        arrivals = []
        async for chunk in response.chunks():
            arrivals.append((asyncio.get_running_loop().time(), chunk))
        response.release()
        assert b"".join(c for _, c in arrivals) == b"data: 1\n\ndata: 2\n\n"
        assert len(arrivals) == 2 and arrivals[1][0] - arrivals[0][0] >= 0.04  # streamed, not buffered to the end
        assert await _get(client, "/sse") == (200, b"data: 1\n\ndata: 2\n\n")  # and the connection is reused
        client.close()

    assert _run({"/sse": _chunked_slowly}, test).connections == 1


def test_a_body_ended_by_close_is_complete_and_its_connection_not_reused():
    async def test(url: str, server: Scripted) -> None:
        client = http1.Client(url)
        assert await _get(client, "/eof") == (200, b"all of it")
        assert await _get(client, "/close") == (200, b"ok")
        assert await _get(client, "/close") == (200, b"ok")
        client.close()

    assert _run({"/eof": _until_close, "/close": _connection_close}, test).connections == 3


def test_a_server_that_hangs_up_fails_that_request_only():
    async def test(url: str, server: Scripted) -> None:
        client = http1.Client(url)
        with pytest.raises(http1.ConnectionClosed, match="before answering"):
            await _get(client, "/hang-up")
        with pytest.raises(http1.ConnectionClosed, match="while sending its response"):
            await _get(client, "/cut")
        with pytest.raises(http1.MalformedResponse, match=r"not an HTTP/1\.1 response"):
            await _get(client, "/garbage")
        with pytest.raises(http1.MalformedResponse, match="a response head larger than 65536 bytes"):
            await _get(client, "/endless-head")
        assert await _get(client, "/ok") == (200, b"hello")
        client.close()

    handlers = {"/hang-up": _hang_up, "/cut": _cut_mid_body, "/garbage": _garbage, "/endless-head": _endless_head}
    assert _run({**handlers, "/ok": _ok}, test).connections == 5


def test_a_kept_alive_connection_closed_under_the_request_sends_it_again_once_on_a_new_one():
    async def test(url: str, server: Scripted) -> None:
        client = http1.Client(url)
        for _ in range(3):  # each on the connection the last one left idle, which the server then closes
            assert await _get(client, "/idle-close") == (200, b"hello")
        with pytest.raises(http1.ConnectionClosed, match="before answering"):  # a byte came: the server read it
            await _get(client, "/part")
        client.close()

    server = _run({"/idle-close": _closes_when_idle, "/part": _answers_part_then_closes}, test)
    assert server.connections == 3
    assert [h.split(b" ")[1] for h in server.heads] == [b"/idle-close"] * 5 + [b"/part"]


def test_an_abandoned_response_closes_its_connection():
    async def test(url: str, server: Scripted) -> None:
        client = http1.Client(url)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await _get(client, "/never")
        assert await _get(client, "/ok") == (200, b"hello")
        client.close()

    assert _run({"/never": _never, "/ok": _ok}, test).connections == 2


def test_an_idle_connection_the_server_closed_is_not_used_again():
    async def test(url: str, server: Scripted) -> None:
        client = http1.Client(url)
        assert await _get(client, "/ok") == (200, b"hello")
        server.writers[0].close()  # the server's keep-alive timeout
        await asyncio.sleep(0.05)
        assert await _get(client, "/ok") == (200, b"hello")
        client.close()

    assert _run({"/ok": _ok}, test).connections == 2


def test_nothing_listening_is_a_connection_error():
    async def test(url: str, server: Scripted) -> None:
        server.server.close()
        await server.server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await _get(http1.Client(url), "/ok")

    _run({}, test)


@pytest.mark.parametrize("url", ["ftp://host/", "http://", "localhost:8000"])
def test_a_url_that_is_not_http_is_refused(url: str):
    with pytest.raises(ValueError, match="not an http"):
        http1.Client(url)


def test_https_verifies_the_server_against_the_trusted_certificates(tmp_path, monkeypatch):
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ssl.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    async def main() -> None:
        server = Scripted({"/ok": _ok})
        server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=server_ssl)
        url = f"https://localhost:{server.server.sockets[0].getsockname()[1]}"
        async with server.server:
            with pytest.raises(ssl.SSLCertVerificationError):  # not trusted yet
                await _get(http1.Client(url), "/ok")
            monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "cert.pem"))
            client = http1.Client(url)
            assert await _get(client, "/ok") == (200, b"hello")
            client.close()
            for writer in server.writers:
                writer.close()

    asyncio.run(main())


async def _interim_then_answer(head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # alone in its read
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")  # with the final answer, in one read
    writer.write(b"HTTP/1.1 200 OK\r\nx-final: 1\r\ncontent-length: 5\r\n\r\nhello")
    return True


def test_interim_1xx_answers_are_skipped_for_the_final_one():
    async def test(url: str, server: Scripted) -> None:
        client = http1.Client(url)
        for _ in range(2):  # and the connection is clean for the next request
            response = await client.request("POST", "/interim")
            assert (response.status, response.raw_headers) == (200, [("x-final", "1"), ("content-length", "5")])
            assert await response.read() == b"hello"
            response.release()
        client.close()

    assert _run({"/interim": _interim_then_answer}, test).connections == 1


_SECOND = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nsmuggled!"


async def _two_answers(head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello" + _SECOND)  # one read: two answers
    return True


async def _answer_and_a_half(head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello" + _SECOND[:20])  # the start of a second
    return True


async def _answer_then_more(head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(_SECOND)  # while the answer is held, before it is released
    return True


@pytest.mark.parametrize("path", ["/two", "/half", "/more"])
def test_an_answer_followed_by_bytes_nobody_asked_for_arrives_alone_and_its_connection_is_not_reused(path: str):
    """A server that sends more than its answer (a second one, or the start of one) must not have it read as
    part of that answer, nor as the next request's: the answer arrives whole and alone, and the connection,
    spoiled, is closed, so the next request gets its own answer on a new one."""

    async def test(url: str, server: Scripted) -> None:
        client = http1.Client(url)
        for _ in range(2):
            response = await client.request("POST", path, b"{}")
            assert (response.status, await response.read()) == (200, b"hello")
            assert response.raw_headers == [("content-length", "5")]
            await asyncio.sleep(0.1)  # the rest arrives while the answer is held
            response.release()
        client.close()

    handlers = {"/two": _two_answers, "/half": _answer_and_a_half, "/more": _answer_then_more}
    assert _run(handlers, test).connections == 2
