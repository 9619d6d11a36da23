"""One request through the router: choose a backend, send the body as received, retry before the first
byte, stream the answer back as it arrives.

A retry happens only while nothing has reached the client: on a refused or reset connection,
and on 502/503/504/429 answers (a 429 or 503 with Retry-After keeps that backend out for
that long). Once the answer's head is sent, a failing backend fails that one request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from vllm_fleet.router.backends import Backend, Pool
from vllm_fleet.router.body import RequestFacts
from vllm_fleet.router.metrics import RouterMetrics
from vllm_fleet.router.policies import Policy, least_load
from vllm_fleet.router.resume import Transcript, continuation_body, without_role_event
from vllm_fleet.wire.openai import error_body

access_log = logging.getLogger("vllm_fleet.router.access")

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones aiohttp writes itself: never forwarded.
_HOP = frozenset(
    ("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
     "trailer", "transfer-encoding", "upgrade", "host", "content-length")
)  # fmt: skip
RETRIED_STATUS = frozenset((429, 502, 503, 504))
BACKEND_HEADER = "x-vllm-fleet-backend"
SESSION_HEADER = "x-session-id"
LOAD_FORMAT_HEADER = "endpoint-load-metrics-format"  # vLLM answers it with endpoint-load-metrics (non-streamed)
LOAD_HEADER = "endpoint-load-metrics"


def forwarded_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _HOP)


def json_error(message: str, status: int, kind: str = "invalid_request_error", **headers: str) -> web.Response:
    return web.Response(
        status=status, body=error_body(message, status, kind), content_type="application/json", headers=headers
    )


def retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP-date: not worth parsing, the backoff applies


@dataclass
class Proxy:
    pool: Pool
    session: aiohttp.ClientSession
    metrics: RouterMetrics
    retries: int = 2

    async def forward(
        self, request: web.BaseRequest, body: bytes, facts: RequestFacts, choose: Policy, started: float
    ) -> web.StreamResponse:
        candidates = self.pool.available(facts.model)
        if not candidates:
            refused = self._none_available(facts)
            log_access(request, refused.status, facts.model, "-", 0, started)
            return refused
        headers = forwarded_headers(request.headers)
        ask_load = not facts.stream and LOAD_FORMAT_HEADER not in headers
        if ask_load:
            headers[LOAD_FORMAT_HEADER] = "TEXT"
        session = request.headers.get(SESSION_HEADER)
        tried: list[Backend] = []
        upstream: aiohttp.ClientResponse | None = None
        while True:
            left: Sequence[Backend] = [b for b in candidates if b not in tried] if tried else candidates
            backend = choose(left, facts, session)
            tried.append(backend)
            last = len(tried) > self.retries or len(tried) == len(candidates)
            backend.in_flight += 1
            backend.in_flight_tokens += facts.tokens
            self.metrics.in_flight.inc()
            try:
                sent = time.perf_counter()
                upstream = await self.session.request(
                    request.method, backend.url + request.path_qs, data=body or None, headers=headers
                )
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self._done(backend, facts)
                why = f"{exc.__class__.__name__}: {exc}".rstrip(": ")
                self.pool.failed(backend, why)
                if last:
                    return self._failed(request, facts, tried, why, started)
                self.metrics.retries.labels("connect").inc()
                continue
            except BaseException:  # the client left while we waited for the head (handler cancelled): uncount it
                self._done(backend, facts)
                raise
            if upstream.status in RETRIED_STATUS and not last:
                wait = retry_after(upstream.headers.get("retry-after"))
                why = f"answered {upstream.status}"
                upstream.close()
                self._done(backend, facts)
                if wait is not None:
                    self.pool.eject(backend, f"{why} with Retry-After {wait:g}", for_s=wait)
                elif upstream.status != 429:
                    self.pool.failed(backend, why)
                self.metrics.retries.labels(str(upstream.status)).inc()
                continue
            try:
                return await self._relay(
                    request, upstream, backend, facts, ask_load, started, sent, tried, body, headers
                )
            finally:
                self._done(backend, facts)

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        backend: Backend,
        facts: RequestFacts,
        asked_load: bool,
        started: float,
        sent: float,
        tried: list[Backend],
        body: bytes,
        request_headers: CIMultiDict[str],
    ) -> web.StreamResponse:
        answered = time.perf_counter()
        complete = False
        attempts = len(tried)
        # A streamed chat answer can be continued elsewhere if its backend dies (resume.py).
        resumable = (
            facts.stream
            and upstream.status == 200
            and request.path.endswith("/chat/completions")
            and upstream.content_type == "text/event-stream"
        )
        transcript = Transcript() if resumable else None
        try:
            headers = forwarded_headers(upstream.headers)
            if upstream.content_length is not None:
                headers["content-length"] = str(upstream.content_length)
            load = headers.pop(LOAD_HEADER, None) if asked_load else headers.get(LOAD_HEADER)
            if load:
                self.pool.load_header(backend, load)
            headers[BACKEND_HEADER] = backend.url
            out = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
            await out.prepare(request)
            added = sent - started
            first = True
            async for chunk in upstream.content.iter_any():
                if transcript is not None and not (chunk := transcript.whole_events(chunk)):
                    continue
                await out.write(chunk)
                if first:
                    added += time.perf_counter() - answered
                    first = False
            if transcript is not None and (rest := transcript.rest()):
                await out.write(rest)  # a last event without its blank line: the stream ended whole anyway
            await out.write_eof()
            complete = True
        except (TimeoutError, aiohttp.ClientError) as exc:
            # The head went out: no retry now. A stream may be continued elsewhere; otherwise the
            # client sees its connection end early (never a truncated answer that looks whole).
            self.pool.failed(backend, f"{exc.__class__.__name__} mid-answer")
            upstream.close()
            if transcript is not None and await self._resume(
                request, out, facts, transcript, tried, body, request_headers
            ):
                log_access(request, 200, facts.model, backend.url, attempts, started, "continued on another backend")
                self.metrics.requests.labels(facts.model or "", backend.url, "200").inc()
                return out
            log_access(request, upstream.status, facts.model, backend.url, attempts, started, "aborted mid-answer")
            raise
        finally:
            if not complete:
                upstream.close()
            else:
                upstream.release()
        if upstream.status < 500:
            self.pool.succeeded(backend)
        else:
            self.pool.failed(backend, f"answered {upstream.status}")
        self.metrics.added.observe(added)
        self.metrics.requests.labels(facts.model or "", backend.url, str(upstream.status)).inc()
        log_access(request, upstream.status, facts.model, backend.url, attempts, started)
        return out

    async def _resume(
        self,
        request: web.BaseRequest,
        out: web.StreamResponse,
        facts: RequestFacts,
        transcript: Transcript,
        tried: list[Backend],
        body: bytes,
        headers: CIMultiDict[str],
    ) -> bool:
        """Continue the stream on other backends (within the retry budget); True once it ended whole."""
        while len(tried) <= self.retries:
            text, tokens, finished = transcript.so_far()
            again = continuation_body(body, text, tokens)
            left = [b for b in self.pool.available(facts.model) if b not in tried]
            if finished or again is None or not left:
                return False
            backend = least_load(left, facts, None)
            tried.append(backend)
            self.metrics.retries.labels("continued").inc()
            backend.in_flight += 1
            try:
                async with self.session.post(backend.url + request.path_qs, data=again, headers=headers) as upstream:
                    if upstream.status != 200:
                        self.pool.failed(backend, f"answered {upstream.status} to a continuation")
                        continue
                    opening = bool(text)  # the client has its role event already
                    async for chunk in upstream.content.iter_any():
                        chunk = transcript.whole_events(chunk)
                        if opening and chunk:
                            chunk, opening = without_role_event(chunk), False
                        if chunk:
                            await out.write(chunk)
                    if rest := transcript.rest():
                        await out.write(rest)
                await out.write_eof()
                self.pool.succeeded(backend)
                return True
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self.pool.failed(backend, f"{exc.__class__.__name__} continuing a stream")
            finally:
                backend.in_flight -= 1
        return False

    def _done(self, backend: Backend, facts: RequestFacts) -> None:
        backend.in_flight -= 1
        backend.in_flight_tokens -= facts.tokens
        self.metrics.in_flight.dec()

    def _none_available(self, facts: RequestFacts) -> web.Response:
        known = sorted({m for b in self.pool.backends.values() for m in b.models})
        # Unknown only when every backend has said what it serves: a backend never yet healthy (its
        # models unknown) may serve it, so that is a 503, not a 404.
        told = all(b.models for b in self.pool.backends.values())
        if facts.model is not None and facts.model not in known and told:
            listed = ", ".join(known) or "none yet"
            self.metrics.requests.labels("", "", "404").inc()  # not the name: a client's typos must not grow /metrics
            return json_error(f"model {facts.model!r} is not served here; known models: {listed}", 404, "NotFound")
        wait = str(self.pool.retry_after_s())
        self.metrics.requests.labels(facts.model if facts.model in known else "", "", "503").inc()
        return json_error(
            "no healthy backend can take this request now", 503, "ServiceUnavailable", **{"Retry-After": wait}
        )

    def _failed(
        self, request: web.BaseRequest, facts: RequestFacts, tried: list[Backend], why: str, started: float
    ) -> web.Response:
        self.metrics.requests.labels(facts.model or "", tried[-1].url, "502").inc()
        log_access(request, 502, facts.model, tried[-1].url, len(tried), started, why)
        names = ", ".join(b.url for b in tried)
        return json_error(
            f"no backend answered ({names}): {why}",
            502,
            "BadGateway",
            **{"Retry-After": str(self.pool.retry_after_s())},
        )


def log_access(
    request: web.BaseRequest,
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
