"""One request through the router: choose a backend, send the body as received, retry before the first
byte, stream the answer back as it arrives.

A retry happens only while nothing has reached the client: on a refused or reset connection,
and on 502/503/504/429 answers (a 429 or 503 with Retry-After keeps that backend out for
that long). Once the answer's head is sent, a failing backend fails that one request, except a
streamed (chat) completion, which is continued on another backend (resume.py).

A WebSocket (vLLM's /v1/realtime) is routed and retried the same way up to its handshake's answer; after a
101 it is a byte tunnel between client and backend (wire/upgrade.py) until either side closes, counted
in the backend's in-flight requests meanwhile (so a drain waits for it). A session of an API key is metered:
the backend's messages are read on their way (inflated, when compressed) for the usage of each turn, and
a turn that leaves the key past its tokens/min ends the session after that turn's last message: the client
gets an error event (vLLM's realtime ``error``) and a Close frame (1008) saying why, and the backend's
side closes, so the backend stops the session's work.

Upstream requests go over the project's own HTTP/1.1 client (wire/http1.py: one write per
request, httptools parsing), not aiohttp's: aiohttp's client was a third of the router's CPU
per request (benchmarks/bench_router.py). An answer whose whole body comes in its first read
(most non-streamed ones) goes to the client head and body in one write.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

from vllm_fleet.router.backends import Backend, Pool
from vllm_fleet.router.body import RequestFacts
from vllm_fleet.router.metrics import RouterMetrics
from vllm_fleet.router.policies import Policy, least_load
from vllm_fleet.router.resume import DONE_EVENT, Transcript, continuation_body, needs_text_ids, without_role_event
from vllm_fleet.router.usage import Meter, metering
from vllm_fleet.wire import http1, upgrade, websocket
from vllm_fleet.wire.http1_server import Reply, Request
from vllm_fleet.wire.openai import error_body, realtime_error

access_log = logging.getLogger("vllm_fleet.router.access")

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the sending side writes itself: never forwarded. Nor
# is Expect: the router's server met a 100-continue expectation itself and holds the whole body.
_HOP = frozenset(
    ("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
     "trailer", "transfer-encoding", "upgrade", "host", "content-length", "expect")
)  # fmt: skip
FORWARDED_FOR = "x-forwarded-for"
_HOP_OR_XFF = _HOP | {FORWARDED_FOR}
RETRIED_STATUS = frozenset((429, 502, 503, 504))
BACKEND_HEADER = "x-vllm-fleet-backend"
SESSION_HEADER = "x-session-id"
EXTENSIONS = "sec-websocket-extensions"
LOAD_FORMAT_HEADER = "endpoint-load-metrics-format"  # vLLM answers it with endpoint-load-metrics (non-streamed)
LOAD_HEADER = "endpoint-load-metrics"
# What a failed upstream exchange raises: refused/reset (OSError, http1.ConnectionClosed), not HTTP
# (http1.MalformedResponse, a ValueError), no connection in time (TimeoutError, an OSError).
UPSTREAM_ERRORS = (OSError, ValueError)


def forwarded_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in _HOP]


def upstream_headers(request: Request) -> list[tuple[str, str]]:
    """The client's headers as it sent them, less the hop-by-hop ones, with its address added to the end of
    X-Forwarded-For (as Envoy and nginx's ``$proxy_add_x_forwarded_for`` do): vLLM's uvicorn, trusting a
    proxy on 127.0.0.1 by default, logs it as the peer, not the router."""
    headers = [(k, v) for k, v in request.raw_headers if k.lower() not in _HOP_OR_XFF]
    before = request.headers.get(FORWARDED_FOR)
    headers.append((FORWARDED_FOR, f"{before}, {request.remote}" if before else request.remote))
    return headers


def json_error(message: str, status: int, kind: str = "invalid_request_error", **headers: str) -> Reply:
    return Reply(status, [("Content-Type", "application/json"), *headers.items()], error_body(message, status, kind))


def retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP-date: not worth parsing, the backoff applies


@dataclass
class Proxy:
    pool: Pool
    metrics: RouterMetrics
    retries: int = 2
    connect_timeout_s: float = 5.0

    def client(self, backend: Backend) -> http1.Client:
        if backend.client is None:
            backend.client = http1.Client(backend.url, connect_timeout_s=self.connect_timeout_s)
        return backend.client

    async def forward(
        self, request: Request, facts: RequestFacts, choose: Policy, started: float, meter: Meter | None = None
    ) -> Reply | None:
        """Answer ``request`` from a backend: a whole answer is returned, a streamed one written (None); what
        reaches the client passes ``meter`` when there is one (a key's tokens are settled from it)."""
        body = request.body
        candidates = self.pool.available(facts.model)
        if not candidates:
            return self._none_available(request, facts, started)
        headers = upstream_headers(request)  # in the order and spelling the client sent them
        ask_load = not facts.stream and LOAD_FORMAT_HEADER not in request.headers
        if ask_load:
            headers.append((LOAD_FORMAT_HEADER, "TEXT"))
        session = request.headers.get(SESSION_HEADER)
        tried: list[Backend] = []
        while True:
            backend, last = self._next(candidates, tried, choose, facts, session)
            backend.in_flight += 1
            backend.in_flight_tokens += facts.tokens
            client = self.client(backend)
            try:
                sent = time.perf_counter()
                head = client.head(request.method, request.path_qs, body, headers)
                upstream = await client.request(request.method, request.path_qs, body, head)
            except UPSTREAM_ERRORS as exc:
                self._done(backend, facts)
                if (failed := self._unreached(request, facts, tried, exc, last, started)) is not None:
                    return failed
                continue
            except BaseException:  # the client left while we waited for the head (handler cancelled): uncount it
                self._done(backend, facts)
                raise
            if upstream.status in RETRIED_STATUS and not last:
                upstream.release()  # its body unread: the connection closes
                self._done(backend, facts)
                self._retrying(backend, upstream.status, upstream.headers)
                continue
            try:
                return await self._relay(
                    request, upstream, backend, facts, ask_load, started, sent, tried, body, headers, meter
                )
            finally:
                self._done(backend, facts)

    async def tunnel(
        self, request: Request, facts: RequestFacts, choose: Policy, started: float,
        used: Callable[[int], Awaitable[str | None]] | None = None,
    ) -> Reply | None:  # fmt: skip
        """Pass a WebSocket handshake to a backend; once it is accepted, bytes both ways until one side closes.
        ``used``: charges the tokens of each usage the backend's messages carry, as they pass (its handshake
        then offers no extension but permessage-deflate, which the router inflates to read them), and answers
        why the session must end, if it must."""
        candidates = self.pool.available(facts.model)
        if not candidates:
            return self._none_available(request, facts, started)
        kind = request.headers["upgrade"]
        headers = [*upstream_headers(request), ("Connection", "Upgrade"), ("Upgrade", kind)]
        if used is not None:
            headers = _readable_extensions(headers)
        session = request.headers.get(SESSION_HEADER)
        tried: list[Backend] = []
        while True:
            backend, last = self._next(candidates, tried, choose, facts, session)
            try:
                upstream = await upgrade.upgrade(self.client(backend), request.method, request.path_qs, headers)
            except UPSTREAM_ERRORS as exc:
                if (failed := self._unreached(request, facts, tried, exc, last, started)) is not None:
                    return failed
                continue
            if upstream.status in RETRIED_STATUS and not last:
                self._retrying(backend, upstream.status, upstream.headers)
                continue
            answer = [*forwarded_headers(upstream.raw_headers), (BACKEND_HEADER, backend.url)]
            self.metrics.answered(facts.model or "", backend.url, upstream.status)
            if upstream.status != 101:  # refused (a 403 for a path without a WebSocket, a 401): as it came
                log_access(request, upstream.status, facts.model, backend.url, len(tried), started)
                return Reply(upstream.status, answer, upstream.body)
            self.pool.succeeded(backend)
            backend.in_flight += 1
            ended: list[str] = []  # why the router ended the session, if it did
            try:
                client = request.switch([*answer, ("Connection", "Upgrade"), ("Upgrade", kind)], upstream.transport)
                if used is None:
                    upstream.join(client)
                else:
                    sink = metering(used, partial(_end, upstream, ended))
                    inflater = websocket.inflater(upstream.headers.get(EXTENSIONS, ""))
                    upstream.join(client, websocket.Messages(sink, inflater))
                await upstream.closed  # or the client leaves: this handler is cancelled
            finally:
                backend.in_flight -= 1
                upstream.close()
                note = f"ended by the router: {ended[0]}" if ended else "tunnel closed"
                log_access(request, 101, facts.model, backend.url, len(tried), started, note)
            return None

    async def _relay(
        self,
        request: Request,
        upstream: http1.Response,
        backend: Backend,
        facts: RequestFacts,
        asked_load: bool,
        started: float,
        sent: float,
        tried: list[Backend],
        body: bytes,
        request_headers: list[tuple[str, str]],
        meter: Meter | None,
    ) -> Reply | None:
        answered = time.perf_counter()
        attempts = len(tried)
        up_headers = upstream.headers
        events = up_headers.get("content-type", "").startswith("text/event-stream")
        # A streamed (chat) completion can be continued elsewhere if its backend dies (resume.py).
        resumable = facts.stream and upstream.status == 200 and request.path.endswith("/completions") and events
        transcript = Transcript() if resumable else None
        answer: Reply | None = None
        try:
            headers = forwarded_headers(upstream.raw_headers)  # as the backend sent them
            load = up_headers.get(LOAD_HEADER)
            if load:
                self.pool.load_header(backend, load)
                if asked_load:  # our question, not the client's: its answer stays here
                    headers = [(k, v) for k, v in headers if k.lower() != LOAD_HEADER]
            headers.append((BACKEND_HEADER, backend.url))
            length = up_headers.get("content-length")
            first = await upstream.next_chunk() if length is not None else b""
            if length is not None and upstream.complete and len(first) == int(length):
                answer = Reply(upstream.status, headers, first)
                added = (sent - started) + (time.perf_counter() - answered)
                if meter is not None:
                    meter.saw(first)
            else:
                request.start(upstream.status, headers, None if length is None else int(length))
                write = request.writer() if meter is None else meter.sink(request.writer(), events)
                added = await self._stream(request, write, first, upstream, transcript, sent - started, answered)
                request.finish()
        except UPSTREAM_ERRORS as exc:
            # The head went out: no retry now. A stream may be continued elsewhere; otherwise the
            # client sees its connection end early (never a truncated answer that looks whole).
            self.pool.failed(backend, f"{exc.__class__.__name__} mid-answer")
            upstream.release()
            if not request.started:  # nothing reached the client: an answer of our own
                return self._failed(
                    request, facts, tried, f"{exc.__class__.__name__} before the answer's body", started
                )
            resumed = (
                transcript is not None
                and transcript.whole
                and await self._resume(request, facts, transcript, tried, body, request_headers, meter)
            )
            if resumed:
                log_access(request, 200, facts.model, backend.url, attempts, started, resumed)
                self.metrics.answered(facts.model or "", backend.url, 200)
                return None
            log_access(request, upstream.status, facts.model, backend.url, attempts, started, "aborted mid-answer")
            request.abort()  # an upstream's failure, logged above: not an error of the router's
            return None
        finally:
            upstream.release()  # complete: the connection goes back to the pool; else it closes
        if upstream.status < 500:
            self.pool.succeeded(backend)
        else:
            self.pool.failed(backend, f"answered {upstream.status}")
        self.metrics.added(added)
        self.metrics.answered(facts.model or "", backend.url, upstream.status)
        log_access(request, upstream.status, facts.model, backend.url, attempts, started)
        return answer

    @staticmethod
    async def _stream(
        out: Request,
        write: Callable[[bytes], bool],
        first: bytes,
        upstream: http1.Response,
        transcript: Transcript | None,
        added: float,
        answered: float,
    ) -> float:
        """Write the answer's chunks as they arrive (whole SSE events when a transcript is kept); returns the
        added latency (to the client's first byte)."""
        while not first and not upstream.complete:
            first = await upstream.next_chunk()
            if transcript is not None:
                first = transcript.whole_events(first)
        if first:
            write(first)
        added += time.perf_counter() - answered
        # The rest is written from the upstream connection's callback, the moment each piece arrives.
        sink = write if transcript is None else transcript.sink(write)
        while not await upstream.pipe(sink):
            await out.drain()  # a slow client: the backend's connection waits with it
        if transcript is not None and (rest := transcript.rest()):
            write(rest)  # a last event without its blank line: the stream ended whole anyway
        return added

    async def _resume(
        self,
        request: Request,
        facts: RequestFacts,
        transcript: Transcript,
        tried: list[Backend],
        body: bytes,
        headers: list[tuple[str, str]],
        meter: Meter | None,
    ) -> str:
        """Continue the stream on other backends (within the retry budget): how it ended whole (the access log's
        note), or "" when it could not."""
        write = request.writer() if meter is None else meter.sink(request.writer(), True)
        while True:
            transcript.cut()
            text, tokens, finished, done = transcript.so_far()
            if finished:  # the answer had ended: only its last events (a usage event, [DONE]) were lost
                if not done:
                    write(DONE_EVENT)
                request.finish()
                return "ended by the router: its backend failed after the answer's end"
            if len(tried) > self.retries:
                return ""
            again = continuation_body(body, text, tokens)
            ids_needed = again is None and bool(text) and needs_text_ids(body)
            left = [b for b in self.pool.available(facts.model) if b not in tried]
            if (again is None and not ids_needed) or not left:
                return ""
            backend = least_load(left, facts, None)
            tried.append(backend)
            self.metrics.retries.labels("continued").inc()
            backend.in_flight += 1
            client = self.client(backend)
            upstream: http1.Response | None = None
            try:
                if ids_needed:  # a prompt of token ids: the text goes on as ids, by this backend's tokenizer
                    text_ids = await _text_ids(client, facts.model or "", text, headers)
                    again = None if text_ids is None else continuation_body(body, text, tokens, text_ids)
                if again is None:
                    return ""
                head = client.head(request.method, request.path_qs, again, headers)
                upstream = await client.request(request.method, request.path_qs, again, head)
                if upstream.status != 200:
                    self.pool.failed(backend, f"answered {upstream.status} to a continuation")
                    continue
                opening = bool(text)  # the client has its role event already
                async for chunk in upstream.chunks():
                    chunk = transcript.whole_events(chunk)
                    if opening and chunk:
                        chunk, opening = without_role_event(chunk), False
                    if not write(chunk):
                        await request.drain()
                if rest := transcript.rest():
                    write(rest)
                request.finish()
                self.pool.succeeded(backend)
                return "continued on another backend"
            except UPSTREAM_ERRORS as exc:
                self.pool.failed(backend, f"{exc.__class__.__name__} continuing a stream")
            finally:
                backend.in_flight -= 1
                if upstream is not None:
                    upstream.release()

    def _next(
        self,
        candidates: Sequence[Backend],
        tried: list[Backend],
        choose: Policy,
        facts: RequestFacts,
        session: str | None,
    ) -> tuple[Backend, bool]:
        """The backend for the next attempt (one not tried yet), and whether it is the last attempt."""
        left = [b for b in candidates if b not in tried] if tried else candidates
        backend = choose(left, facts, session)
        tried.append(backend)
        return backend, len(tried) > self.retries or len(tried) == len(candidates)

    def _unreached(
        self, request: Request, facts: RequestFacts, tried: list[Backend], exc: Exception, last: bool, started: float
    ) -> Reply | None:
        """The last backend tried did not answer (refused, reset, not HTTP): the 502 when it was the last
        attempt, else None (a retry follows)."""
        why = f"{exc.__class__.__name__}: {exc}".rstrip(": ")
        self.pool.failed(tried[-1], why)
        if last:
            return self._failed(request, facts, tried, why, started)
        self.metrics.retries.labels("connect").inc()
        return None

    def _retrying(self, backend: Backend, status: int, headers: dict[str, str]) -> None:
        """A retried answer (502/503/504/429): with Retry-After the backend is out for that long."""
        wait = retry_after(headers.get("retry-after"))
        if wait is not None:
            self.pool.eject(backend, f"answered {status} with Retry-After {wait:g}", for_s=wait)
        elif status != 429:
            self.pool.failed(backend, f"answered {status}")
        self.metrics.retries.labels(str(status)).inc()

    def _done(self, backend: Backend, facts: RequestFacts) -> None:
        backend.in_flight -= 1
        backend.in_flight_tokens -= facts.tokens

    def _none_available(self, request: Request, facts: RequestFacts, started: float) -> Reply:
        """No backend can take ``request``: the 404 naming the known models, or a 503 with Retry-After; logged."""
        known = sorted({m for b in self.pool.backends.values() for m in b.models})
        # Unknown only when every backend has said what it serves: a backend never yet healthy (its
        # models unknown) may serve it, so that is a 503, not a 404.
        told = all(b.models for b in self.pool.backends.values())
        if facts.model is not None and facts.model not in known and told:
            listed = ", ".join(known) or "none yet"
            self.metrics.answered("", "", 404)  # not the name: a client's typos must not grow /metrics
            refused = json_error(f"model {facts.model!r} is not served here; known models: {listed}", 404, "NotFound")
        else:
            wait = str(self.pool.retry_after_s())
            self.metrics.answered(facts.model if facts.model in known else "", "", 503)
            refused = json_error(
                "no healthy backend can take this request now", 503, "ServiceUnavailable", **{"Retry-After": wait}
            )
        log_access(request, refused.status, facts.model, "-", 0, started)
        return refused

    def _failed(self, request: Request, facts: RequestFacts, tried: list[Backend], why: str, started: float) -> Reply:
        self.metrics.answered(facts.model or "", tried[-1].url, 502)
        log_access(request, 502, facts.model, tried[-1].url, len(tried), started, why)
        names = ", ".join(b.url for b in tried)
        wait = str(self.pool.retry_after_s())
        return json_error(f"no backend answered ({names}): {why}", 502, "BadGateway", **{"Retry-After": wait})


def _readable_extensions(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A handshake's headers offering no extension the router could not read a metered session through (it
    inflates permessage-deflate)."""
    kept = []
    for name, value in headers:
        if name.lower() == EXTENSIONS and not (value := websocket.deflate_only(value)):
            continue
        kept.append((name, value))
    return kept


def _end(session: upgrade.Upgrade, ended: list[str], why: str) -> None:
    """End a WebSocket session that its key may not go on with, saying why as vLLM's realtime endpoint would."""
    ended.append(why)
    last = websocket.text(realtime_error(why, "rate_limit_exceeded"))
    session.end(last + websocket.close(websocket.POLICY_VIOLATION, why))


def log_access(
    request: Request,
    status: int,
    model: str | None,
    backend: str,
    attempts: int,
    started: float,
    note: str = "",
) -> None:
    """The access log's line for one request (also for the ones the router answers itself: backend '-')."""
    if access_log.isEnabledFor(logging.INFO):
        ms = (time.perf_counter() - started) * 1000
        access_log.info(
            '%s "%s %s" %d model=%s backend=%s attempts=%d ms=%.1f%s',
            request.remote, request.method, request.path, status, model, backend, attempts, ms,
            f" {note}" if note else "",
        )  # fmt: skip


async def _text_ids(client: http1.Client, model: str, text: str, headers: list[tuple[str, str]]) -> list[int] | None:
    """``text``'s token ids by the backend's tokenizer (vLLM's ``/tokenize``, no special tokens added); None when
    the backend has no such endpoint or answers otherwise (the stream is then not continued)."""
    payload = json.dumps({"model": model, "prompt": text, "add_special_tokens": False}).encode()
    answer = await client.request("POST", "/tokenize", payload, client.head("POST", "/tokenize", payload, headers))
    try:
        data = await answer.read()
    finally:
        answer.release()
    try:
        said = json.loads(data) if answer.status == 200 else None
    except ValueError:
        return None
    ids = said.get("tokens") if isinstance(said, dict) else None
    return ids if isinstance(ids, list) and all(isinstance(i, int) for i in ids) else None
