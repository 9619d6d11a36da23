"""`batch`: send an OpenAI batch file to an endpoint, resumably, and score the answers (issue 15).

Input lines are the OpenAI batch format (``custom_id``, ``method``, ``url``, ``body``), plus
two fields of ours that are never sent: ``expected`` (ground truth) and ``category``.
Output lines are the OpenAI batch output format, one per input line, in the order the
requests finish: ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}``.

Crash safety comes from the output file alone, so a run needs no journal:

- each result is appended as one complete line with one ``write(2)`` on an ``O_APPEND``
  descriptor (see ``ResultLog.append``); the kernel places it at the end of the file
  whole, and the page cache keeps it when the process is killed right after;
- a run starts by dropping a torn last line (a write cut short by ``kill -9`` or a full
  disk: everything after the last newline) and skipping every ``custom_id`` already there,
  so a ``kill -9`` loses at most the requests in flight, and no line is partial or twice;
- one writer at a time: the output is ``flock``-ed, so two runs cannot interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import math
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from vllm_fleet.errors import CacheError, CheckFailed, SpecError
from vllm_fleet.ops import evaluate
from vllm_fleet.ops.bench import first_model
from vllm_fleet.ops.endpoints import open_endpoints
from vllm_fleet.plan import Plan
from vllm_fleet.targets.base import TargetOptions
from vllm_fleet.wire.health import ensure_listening

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})  # worth a retry: overloaded or restarting
JSON = {"content-type": "application/json"}
PROBE_MAX = 256  # the probe's highest level: beyond this, more in flight is queueing, not throughput
PROBE_GROWTH = 1.15  # a doubling must raise throughput this much to be worth it
SPEC_HEADROOM = 1.25  # in flight per engine slot: a queue keeps the engine's batch full between requests


@dataclass(frozen=True)
class BatchOptions:
    """Everything `vllm-fleet batch` takes besides the endpoint, the input and the output."""

    model: str | None = None  # default: the spec's served name, else the endpoint's first model
    concurrency: int | None = None  # default: from the spec or a probe (see choose_concurrency)
    retries: int = 3
    retry_backoff_s: float = 0.5  # doubled each attempt, with jitter, at most 30 s
    timeout_s: float = 600.0
    strict: bool = False
    eval_metric: str | None = None
    tolerance: float = 1e-6


@dataclass(frozen=True)
class BatchRequest:
    """One valid input line."""

    line: int
    custom_id: str
    url: str
    body: dict[str, Any]
    expected: Any = None
    category: str | None = None

    @property
    def question(self) -> str | None:
        """The last user message (chat) or the prompt (completions), for the eval report."""
        if isinstance(messages := self.body.get("messages"), list) and messages:
            content = messages[-1].get("content") if isinstance(messages[-1], dict) else None
            return content if isinstance(content, str) else json.dumps(content)
        prompt = self.body.get("prompt")
        return prompt if isinstance(prompt, str) else None


@dataclass(frozen=True)
class InputProblem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class BatchInput:
    requests: list[BatchRequest]
    problems: list[InputProblem]


def read_input(path: Path, eval_metric: str | None = None) -> BatchInput:
    """Every valid request of ``path``, and each bad line with its number (not JSON, no custom_id, a duplicate)."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        raise SpecError(f"input {path} does not exist", fix="pass the path of a JSONL batch file") from None
    except OSError as exc:
        raise SpecError(f"cannot read input {path}: {exc.strerror}") from exc
    requests: list[BatchRequest] = []
    problems: list[InputProblem] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        request = _parse_line(number, raw, eval_metric)
        if isinstance(request, InputProblem):
            problems.append(request)
        elif request.custom_id in seen:
            problems.append(
                InputProblem(
                    number, f"duplicate custom_id {request.custom_id!r} (first on line {seen[request.custom_id]})"
                )
            )
        else:
            seen[request.custom_id] = number
            requests.append(request)
    return BatchInput(requests, problems)


def _parse_line(number: int, raw: bytes, eval_metric: str | None) -> BatchRequest | InputProblem:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return InputProblem(number, f"not JSON ({exc})")
    if not isinstance(data, dict):
        return InputProblem(number, f"not a JSON object but {type(data).__name__}")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return InputProblem(number, "lacks custom_id (a non-empty string)")
    method, url, body = data.get("method", "POST"), data.get("url"), data.get("body")
    if not isinstance(method, str) or method.upper() != "POST":
        return InputProblem(number, f"method {method!r}: only POST is supported")
    if not isinstance(url, str) or not url.startswith("/v1/"):
        return InputProblem(number, f"url {url!r} is not an API path such as /v1/chat/completions")
    if not isinstance(body, dict):
        return InputProblem(number, "lacks body (a JSON object)")
    if body.get("stream"):
        return InputProblem(number, "body asks for a stream; batch requests are answered whole")
    category = data.get("category")
    if eval_metric and (why := evaluate.expected_problem(eval_metric, data.get("expected"))):
        return InputProblem(number, why)
    return BatchRequest(number, custom_id, url, body, data.get("expected"), None if category is None else str(category))


class ResultLog:
    """The output file: results appended whole, read back on start (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, dict[str, Any]] = {}  # custom_id -> its result line, from earlier runs
        self.dropped_bytes = 0  # a torn last line removed on open
        self._fd = -1

    def open(self) -> ResultLog:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise SpecError(f"cannot open output {self.path}: {exc.strerror}", fix="pass a writable -o path") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise CheckFailed(
                f"another batch run is writing {self.path}", fix="wait for it to finish, or pass another -o"
            ) from None
        self._recover()
        return self

    def _recover(self) -> None:
        size = os.fstat(self._fd).st_size
        data = os.pread(self._fd, size, 0)
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line cut short by a crash: it was never a result, drop it
            self.dropped_bytes = len(data) - end
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        for number, raw in enumerate(data[:end].splitlines(), 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                self.done[record["custom_id"]] = record
            except (ValueError, KeyError, TypeError):
                self.close()
                raise SpecError(
                    f"output {self.path} line {number} is not a batch result line",
                    fix="pass an output file written by vllm-fleet batch, or a new path",
                ) from None

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line, whole.

        One ``write(2)`` of the complete line on an O_APPEND descriptor: the kernel moves
        the offset to the end and copies the bytes under the inode lock, so a line never
        lands inside another, and once ``write`` returns a ``kill -9`` cannot undo it (the
        page cache holds it). A write can still be cut short (disk full, or a fatal signal
        in the middle of copying a long line); the rest is written at once, and if the
        process dies first the torn tail is dropped by the next run's ``_recover``.
        The call is a copy into the page cache, short enough to make on the event loop.
        """
        data = memoryview((json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            raise CacheError(
                f"cannot append to {self.path}: {exc.strerror}", fix="free disk space, then rerun"
            ) from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the flock
            self._fd = -1


def read_results(path: Path) -> Iterator[dict[str, Any]]:
    """The complete result lines of an output file."""
    with path.open("rb") as file:
        for raw in file:
            if raw.endswith(b"\n") and raw.strip():
                yield json.loads(raw)


@dataclass
class BatchProgress:
    """What the progress bar shows; updated after every finished request."""

    total: int  # requests to send in this run
    done: int = 0
    failed: int = 0
    output_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    concurrency: int | None = None  # once settled
    probing: int | None = None  # in flight now, while the probe ramps

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


@dataclass
class BatchResult:
    """A run: what was sent, skipped, failed, the input's problems, and the evaluation when asked."""

    url: str
    model: str
    output: str
    requests: int  # valid input lines
    skipped: int  # already in the output
    sent: int
    failed: int
    elapsed_s: float
    output_tokens: int
    concurrency: int
    concurrency_why: str
    problems: list[InputProblem] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)  # custom_id and why, for this run
    dropped_bytes: int = 0
    evaluation: evaluate.EvalReport | None = None

    @property
    def request_throughput(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "model": self.model,
            "output": self.output,
            "requests": self.requests,
            "skipped": self.skipped,
            "sent": self.sent,
            "succeeded": self.sent - self.failed,
            "failed": self.failed,
            "elapsed_s": round(self.elapsed_s, 3),
            "request_throughput": round(self.request_throughput, 3),
            "output_token_throughput": round(self.output_tokens / self.elapsed_s, 1) if self.elapsed_s > 0 else 0.0,
            "concurrency": self.concurrency,
            "concurrency_why": self.concurrency_why,
            "input_problems": [{"line": p.line, "message": p.message} for p in self.problems],
            "failures": self.failures,
            "dropped_torn_bytes": self.dropped_bytes,
            "evaluation": self.evaluation.to_dict() if self.evaluation else None,
        }


Send = Callable[[BatchRequest], Awaitable[bool]]  # True when the request succeeded


async def run_batch(
    where: str,
    input_path: Path,
    output_path: Path,
    opts: BatchOptions,
    *,
    env: str | None = None,
    options: TargetOptions | None = None,
    on_progress: Callable[[BatchProgress], None] | None = None,
) -> BatchResult:
    """Send every request of ``input_path`` not yet in ``output_path`` to ``where`` (a URL or a spec)."""
    if opts.eval_metric:
        evaluate.metric_named(opts.eval_metric)
    batch = await asyncio.to_thread(read_input, input_path, opts.eval_metric)
    if opts.strict and batch.problems:
        shown = "; ".join(map(str, batch.problems[:5])) + (" ..." if len(batch.problems) > 5 else "")
        raise CheckFailed(
            f"{len(batch.problems)} bad input line(s) in {input_path}: {shown}",
            fix="fix those lines, or drop --strict to run the others",
        )
    log = ResultLog(output_path).open()
    try:
        async with open_endpoints(where, env, options) as found:
            for url in found.urls:
                await ensure_listening(url)
            model = opts.model or (found.plan.served_name if found.plan else None) or await first_model(found.urls[0])
            pending = deque(r for r in batch.requests if r.custom_id not in log.done)
            progress = BatchProgress(total=len(pending))
            failures: list[dict[str, Any]] = []
            fixed, why = spec_concurrency(found.plan, len(found.urls))
            if opts.concurrency:
                fixed, why = opts.concurrency, "--concurrency"
            # aiohttp, not httpx: httpx's pool spent ~7 ms of CPU a request at 64 in flight here
            # (aiohttp well under 1), and a batch must keep up with the engine (benchmarks/bench_batch.py).
            connector = aiohttp.TCPConnector(limit=fixed or PROBE_MAX, limit_per_host=0)
            timeout = aiohttp.ClientTimeout(total=opts.timeout_s, connect=min(opts.timeout_s, 30.0))
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
                send = _sender(client, found.urls, model, opts, log, progress, failures, on_progress)
                progress.concurrency = fixed
                level, probed = await run_requests(pending, send, fixed, progress)
                fixed, why = level, why or probed
    finally:
        log.close()
    result = BatchResult(
        url=found.urls[0],
        model=model,
        output=str(output_path),
        requests=len(batch.requests),
        skipped=len(batch.requests) - progress.total,
        sent=progress.done,
        failed=progress.failed,
        elapsed_s=progress.elapsed_s,
        output_tokens=progress.output_tokens,
        concurrency=fixed,
        concurrency_why=why,
        problems=batch.problems,
        failures=failures,
        dropped_bytes=log.dropped_bytes,
    )
    if opts.eval_metric:
        result.evaluation = await asyncio.to_thread(
            evaluate_output, opts.eval_metric, batch.requests, output_path, opts.tolerance
        )
    return result


def evaluate_output(metric: str, requests: list[BatchRequest], output: Path, tolerance: float) -> evaluate.EvalReport:
    """Score every input request against its line in ``output`` (from this run and earlier ones)."""
    results = {record["custom_id"]: record for record in read_results(output)}
    items = []
    for request in requests:
        record = results.get(request.custom_id)
        body, error = _outcome(record)
        items.append(
            evaluate.Item(
                request.custom_id,
                request.expected,
                evaluate.answer_text(body) if error is None else None,
                request.category,
                request.question,
                error,
            )
        )
    return evaluate.evaluate(metric, items, tolerance)


def _outcome(record: dict[str, Any] | None) -> tuple[Any, str | None]:
    """A result line's response body, and why it has no answer (None when it has one)."""
    if record is None:
        return None, "no result line (not sent yet)"
    if record.get("error"):
        return None, str(record["error"].get("message", record["error"]))
    response = record.get("response") or {}
    if response.get("status_code") != 200:
        return None, f"HTTP {response.get('status_code')}"
    return response.get("body"), None


def spec_concurrency(plan: Plan | None, servers: int) -> tuple[int | None, str]:
    """With a spec, the engine's own batch size says how much to keep in flight; without, (None, '')."""
    if plan is None:
        return None, ""
    replicas = max(plan.spec.replicas, servers)
    slots = plan.spec.engine.max_num_seqs * replicas
    level = math.ceil(slots * SPEC_HEADROOM)
    return level, (
        f"spec: {plan.spec.engine.max_num_seqs} max_num_seqs x {replicas} replica(s) x {SPEC_HEADROOM} "
        "(a short queue keeps every engine's batch full)"
    )


def choose_concurrency(history: list[tuple[int, float]]) -> tuple[int, str]:
    """The level to run at, from (in flight, requests/s) measured at 1, 2, 4, ...

    The first level whose doubling did not pay (throughput up by less than PROBE_GROWTH)
    is where the server is full: more in flight only waits in its queue. We run at that
    level rather than the one before, so a short queue on the server fills each slot
    the moment it frees (no client round trip between one request and the next).
    """
    best_level, best_rate = history[0]
    for level, rate in history[1:]:
        if rate < best_rate * PROBE_GROWTH:
            return level, (
                f"probe: {rate:.1f} req/s at {level} in flight, {best_rate:.1f} at {best_level}; "
                f"doubling stopped paying off"
            )
        best_level, best_rate = level, rate
    level, rate = history[-1]
    return level, f"probe: {rate:.1f} req/s at {level} in flight, still growing when the probe stopped"


class _Pool:
    """Workers taking requests from one queue; more can join while it runs (the probe adds them)."""

    def __init__(self, pending: deque[BatchRequest], send: Send, group: asyncio.TaskGroup):
        self.pending, self.send, self.group = pending, send, group
        self.finished: list[float] = []  # when each request finished (monotonic)
        self.workers = 0  # started
        self.alive = 0  # not yet out of work
        self.changed = asyncio.Event()

    def grow_to(self, count: int) -> None:
        while self.workers < count and self.pending:
            self.workers += 1
            self.alive += 1
            self.group.create_task(self._worker())

    async def _worker(self) -> None:
        try:
            while self.pending:
                await self.send(self.pending.popleft())
                self.finished.append(time.monotonic())
                self.changed.set()
        finally:
            self.alive -= 1
            self.changed.set()

    async def finished_count(self, count: int) -> bool:
        """Wait until ``count`` requests have finished; False when the queue ran dry first."""
        while len(self.finished) < count:
            if not self.alive:
                return False
            self.changed.clear()
            await self.changed.wait()
        return True


async def run_requests(
    pending: deque[BatchRequest], send: Send, concurrency: int | None, progress: BatchProgress | None = None
) -> tuple[int, str]:
    """Send everything in ``pending``, ``concurrency`` in flight or, when None, as many as a probe finds.

    The probe ramps 1, 2, 4, ... in flight on the batch's own requests (nothing is sent
    twice, nothing is thrown away), because vLLM does not export its max_num_seqs and
    behind a router the replicas' sum is what counts. At each level it lets ``level``
    requests finish (the previous level's stragglers and the new connections' first
    answers), then times the next ``max(2 x level, 4)``. When a doubling no longer pays
    (see choose_concurrency) the run stays at the level it reached: nothing to drain,
    no level to step back to. Returns the level and why.
    """
    if not pending:
        return 0, "nothing to send: every request is in the output already"
    async with asyncio.TaskGroup() as group:  # leaving it waits for every worker
        pool = _Pool(pending, send, group)
        if concurrency:
            pool.grow_to(concurrency)
            return concurrency, ""
        level, why = await _ramp(pool, progress)
        if progress:
            progress.concurrency, progress.probing = level, None
        return level, why


async def _ramp(pool: _Pool, progress: BatchProgress | None) -> tuple[int, str]:
    level = 1
    history: list[tuple[int, float]] = []
    while True:
        pool.grow_to(level)
        if progress:
            progress.probing = level
        mark, window = len(pool.finished) + level, max(2 * level, 4)
        if not await pool.finished_count(mark + window):
            return level, f"probe: the batch ended while measuring {level} in flight"
        elapsed = pool.finished[mark + window - 1] - pool.finished[mark - 1]
        history.append((level, window / max(elapsed, 1e-6)))
        paid = len(history) == 1 or history[-1][1] >= history[-2][1] * PROBE_GROWTH
        if not paid or level * 2 > PROBE_MAX:
            return choose_concurrency(history)  # the level reached: see its docstring
        level *= 2


def _sender(
    client: aiohttp.ClientSession,
    urls: list[str],
    model: str,
    opts: BatchOptions,
    log: ResultLog,
    progress: BatchProgress,
    failures: list[dict[str, Any]],
    on_progress: Callable[[BatchProgress], None] | None,
) -> Send:
    """Send one request (retried on connection errors and 429/5xx), append its line, count it."""
    turn = 0

    async def send(request: BatchRequest) -> bool:
        nonlocal turn
        body = request.body if "model" in request.body and not opts.model else request.body | {"model": model}
        record: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": request.custom_id}
        for attempt in range(opts.retries + 1):
            root = urls[turn % len(urls)]  # several replicas of a spec: round robin
            turn += 1
            try:
                async with client.post(f"{root}{request.url}", data=json.dumps(body), headers=JSON) as response:
                    record |= {"response": _response(response.status, response.headers, await response.read())}
                    record["error"] = None
            except (aiohttp.ClientError, TimeoutError) as exc:
                record |= {"response": None, "error": {"code": type(exc).__name__, "message": str(exc) or repr(exc)}}
            else:
                if record["response"]["status_code"] not in RETRY_STATUSES:
                    break
            if attempt < opts.retries:
                await asyncio.sleep(min(30.0, opts.retry_backoff_s * 2**attempt) * random.uniform(0.5, 1.0))
        log.append(record)
        ok = record["error"] is None and record["response"]["status_code"] < 400
        progress.done += 1
        if ok:
            with contextlib.suppress(KeyError, TypeError, AttributeError):
                progress.output_tokens += int(record["response"]["body"]["usage"]["completion_tokens"])
        else:
            progress.failed += 1
            failures.append({"custom_id": request.custom_id, "why": _why(record)})
        if on_progress:
            on_progress(progress)
        return ok

    return send


def _response(status: int, headers: Any, raw: bytes) -> dict[str, Any]:
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    request_id = headers.get("x-request-id") or (body.get("id") if isinstance(body, dict) else None)
    return {"status_code": status, "request_id": request_id, "body": body}


def _why(record: dict[str, Any]) -> str:
    if record["error"]:
        return f"{record['error']['code']}: {record['error']['message']}"
    response = record["response"]
    detail = response["body"].get("error", {}) if isinstance(response["body"], dict) else response["body"]
    message = detail.get("message") if isinstance(detail, dict) else detail
    return f"HTTP {response['status_code']}" + (f": {str(message)[:200]}" if message else "")
