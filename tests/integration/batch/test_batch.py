"""`vllm-fleet batch` end to end: the fake engine in its own process, the command as a real subprocess, a
kill -9 in the middle of a run, and a server that fails on purpose (issue 15)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tests.servers.fake_engine import running
from vllm_fleet.ops.batch import BatchOptions, read_results, run_batch

pytestmark = pytest.mark.integration

# The command through the real app; `batch` registered here until cli/__init__.py registers it itself.
CLI = """
from vllm_fleet.cli import app
from vllm_fleet.cli.batch import register
if not any(c.callback is not None and c.callback.__name__ == "batch" for c in app.registered_commands):
    register(app)
app()
"""


def batch(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", CLI, "batch", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def write_input(path: Path, count: int, expected: dict[int, str] | None = None, prefix: str = "r") -> Path:
    with path.open("w") as file:
        for i in range(count):
            line = {
                "custom_id": f"{prefix}{i}",
                "method": "POST",
                "url": "/v1/chat/completions" if i % 2 else "/v1/completions",
                "body": {"messages": [{"role": "user", "content": f"q{i}"}]} if i % 2 else {"prompt": f"q{i}"},
            }
            line["body"]["max_tokens"] = 4
            if expected is not None:
                line |= {"expected": expected.get(i, "Paris"), "category": "odd" if i % 2 else "even"}
            file.write(json.dumps(line) + "\n")
    return path


def served(url: str) -> int:
    with urllib.request.urlopen(f"{url}/stats", timeout=5) as response:
        return json.load(response)["served"]


def test_every_request_answered_once_in_the_openai_output_format(tmp_path: Path) -> None:
    inp, out = write_input(tmp_path / "in.jsonl", 40), tmp_path / "out.jsonl"
    with running("--delay-ms", "5") as engine:
        done = batch(engine.url, inp, "-o", out, "--concurrency", "4", "--json")
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert (summary["sent"], summary["failed"], summary["skipped"], summary["concurrency"]) == (40, 0, 0, 4)
        records = list(read_results(out))
        assert sorted(r["custom_id"] for r in records) == sorted(f"r{i}" for i in range(40))
        first = next(r for r in records if r["custom_id"] == "r1")
        assert set(first) == {"id", "custom_id", "response", "error"} and first["error"] is None
        assert first["id"].startswith("batch_req_")
        assert first["response"]["status_code"] == 200 and first["response"]["request_id"]
        assert first["response"]["body"]["object"] == "chat.completion"  # the line's own url was used
        assert first["response"]["body"]["model"] == "yardstick"  # the model filled in from /v1/models
        assert next(r for r in records if r["custom_id"] == "r0")["response"]["body"]["object"] == "text_completion"

        again = batch(engine.url, inp, "-o", out, "--json")  # a rerun finds everything done
        assert again.returncode == 0, again.stderr
        assert (json.loads(again.stdout)["sent"], json.loads(again.stdout)["skipped"]) == (0, 40)
        assert served(engine.url) == 40
    assert len(list(read_results(out))) == 40


def test_kill_9_in_the_middle_then_a_rerun_answers_every_custom_id_exactly_once(tmp_path: Path) -> None:
    count = 400
    inp, out = write_input(tmp_path / "in.jsonl", count), tmp_path / "out.jsonl"
    with running("--delay-ms", "20") as engine:
        argv = [sys.executable, "-c", CLI, "batch", engine.url, str(inp), "-o", str(out), "--concurrency", "8"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while (not out.exists() or out.read_bytes().count(b"\n") < 60) and time.monotonic() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL
        before = out.read_bytes().count(b"\n")
        assert 60 <= before < count, "the kill must land in the middle of the run"
        rerun = batch(engine.url, inp, "-o", out, "--concurrency", "8", "--json")
        assert rerun.returncode == 0, rerun.stderr
        summary = json.loads(rerun.stdout)
        assert summary["skipped"] == before and summary["sent"] == count - before
        # the kill lost at most the 8 requests in flight (answered, or not, but never written)
        assert count <= served(engine.url) <= count + 8
    data = out.read_bytes()
    assert data.endswith(b"\n")
    ids = Counter(json.loads(line)["custom_id"] for line in data.splitlines())
    assert ids == Counter({f"r{i}": 1 for i in range(count)})


def test_concurrency_from_a_probe_settles_near_the_engines_batch(tmp_path: Path) -> None:
    inp, out = write_input(tmp_path / "in.jsonl", 300), tmp_path / "out.jsonl"
    with running("--delay-ms", "20", "--max-num-seqs", "4") as engine:
        done = batch(engine.url, inp, "-o", out, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["sent"] == 300 and summary["failed"] == 0
    assert summary["concurrency_why"].startswith("probe:")
    assert 4 <= summary["concurrency"] <= 16  # the engine runs 4 at once: 8 is where doubling stops paying


def test_bad_lines_are_reported_and_the_rest_run_or_strict_stops_first(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp, 5)
    with inp.open("a") as file:
        file.write("{broken\n" + json.dumps({"custom_id": "r1", "url": "/v1/completions", "body": {}}) + "\n")
    with running() as engine:
        strict = batch(engine.url, inp, "-o", out, "--strict")
        assert strict.returncode == 1
        assert "line 6" in strict.stderr and "line 7" in strict.stderr
        assert served(engine.url) == 0 and not out.exists()  # nothing sent, nothing written

        lenient = batch(engine.url, inp, "-o", out, "--json")
        assert lenient.returncode == 1  # the run went on, and says lines were left out
        summary = json.loads(lenient.stdout)
        assert summary["sent"] == 5
        assert [p["line"] for p in summary["input_problems"]] == [6, 7]
        assert "duplicate custom_id 'r1'" in summary["input_problems"][1]["message"]

        shown = batch(engine.url, inp, "-o", tmp_path / "out2.jsonl")
        assert "input line 6:" in shown.stdout and "not JSON" in shown.stdout


def test_bad_input_exits_2(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 1)
    with running() as engine:
        missing = batch(engine.url, tmp_path / "nope.jsonl", "-o", tmp_path / "out.jsonl")
        assert missing.returncode == 2 and "does not exist" in missing.stderr
        metric = batch(engine.url, inp, "-o", tmp_path / "out.jsonl", "--eval", "fuzzy", "--json")
        assert metric.returncode == 2 and json.loads(metric.stdout)["kind"] == "SpecError"


def test_eval_report_by_category_with_failures(tmp_path: Path) -> None:
    # The fake engine answers " t0 t1 t2 t3" to every max_tokens=4 request: "t2" is in it, "Paris" is not.
    inp = write_input(tmp_path / "in.jsonl", 8, expected={0: "t2", 1: "t2", 2: "t2", 3: "t3", 5: "T1"})
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"
    with running() as engine:
        done = batch(engine.url, inp, "-o", out, "--eval", "contains", "--report", report, "--concurrency", "2")
        assert done.returncode == 0, done.stderr
        assert "evaluation (contains)" in done.stdout and "62.5%" in done.stdout
        data = json.loads(report.read_text())
        assert (data["correct"], data["total"], data["accuracy"]) == (5, 8, 0.625)
        assert data["by_category"] == {
            "even": {"total": 4, "correct": 2, "accuracy": 0.5},  # r0, r2 right; r4, r6 "Paris"
            "odd": {"total": 4, "correct": 3, "accuracy": 0.75},  # r1, r3, r5 ("T1": case folded) right; r7
        }
        assert sorted(f["custom_id"] for f in data["failures"]) == ["r4", "r6", "r7"]
        wrong = next(f for f in data["failures"] if f["custom_id"] == "r7")
        assert wrong == {
            "custom_id": "r7",
            "category": "odd",
            "question": "q7",
            "expected": "Paris",
            "answer": " t0 t1 t2 t3",
        }

        strict = batch(engine.url, inp, "-o", out, "--eval", "exact", "--min-accuracy", "0.5", "--json")
        assert strict.returncode == 1  # rescored from the output alone (nothing resent): 0 of 8 exact
        summary = json.loads(strict.stdout)
        assert summary["sent"] == 0 and summary["evaluation"]["correct"] == 0
        assert served(engine.url) == 8


# A server that fails on purpose: each custom_id is answered 503, then its connection is reset, then 200.


class FaultServer:
    """HTTP/1.1 on loopback, raw asyncio in a thread; ``plan(attempt)`` says what the n-th try of an id gets."""

    def __init__(self, plan: list[str]):
        self.plan = plan
        self.attempts: Counter[str] = Counter()
        self.loop = asyncio.new_event_loop()
        self.port = 0

    def __enter__(self) -> FaultServer:
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, ready: threading.Event) -> None:
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                length = next(
                    (int(h.split(":", 1)[1]) for h in head.split("\r\n") if h.lower().startswith("content-length")), 0
                )
                body = json.loads(await reader.readexactly(length)) if length else {}
                if head.startswith("GET /v1/models"):
                    writer.write(_http(200, {"data": [{"id": "m"}]}))
                    continue
                key = body.get("prompt") or body["messages"][-1]["content"]
                self.attempts[key] += 1
                what = self.plan[min(self.attempts[key], len(self.plan)) - 1]
                if what == "reset":  # RST, not a clean close: SO_LINGER 0
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if what == "ok":
                    usage = {"completion_tokens": 3}
                    writer.write(_http(200, {"id": f"id-{key}", "choices": [{"text": "fine"}], "usage": usage}))
                else:
                    writer.write(_http(int(what), {"error": {"message": f"scripted {what}"}}))
                await writer.drain()


def _http(status: int, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        len(data),
        data,
    )


def _run(url: str, inp: Path, out: Path, **opts: object):
    from vllm_fleet.loop import run_loop

    options = BatchOptions(retry_backoff_s=0.01, concurrency=3, **opts)  # type: ignore[arg-type]
    return run_loop(run_batch(url, inp, out, options))


def test_retries_after_5xx_and_connection_resets(tmp_path: Path) -> None:
    inp, out = write_input(tmp_path / "in.jsonl", 10), tmp_path / "out.jsonl"
    with FaultServer(["503", "reset", "500", "ok"]) as server:
        result = _run(server.url, inp, out, retries=3)
    assert (result.sent, result.failed, result.output_tokens) == (10, 0, 30)
    assert set(server.attempts.values()) == {4}
    records = list(read_results(out))
    assert len(records) == 10 and all(r["response"]["status_code"] == 200 for r in records)


def test_a_request_failing_every_try_is_a_failed_line_and_exit_1(tmp_path: Path) -> None:
    inp, out = write_input(tmp_path / "in.jsonl", 4), tmp_path / "out.jsonl"
    with FaultServer(["503", "reset"]) as server:
        result = _run(server.url, inp, out, retries=1)
        assert set(server.attempts.values()) == {2}
        assert (result.sent, result.failed) == (4, 4)
        records = list(read_results(out))
        assert all(r["response"] is None and r["error"]["code"] for r in records)  # the last try's reset
        assert all("Disconnected" in f["why"] or "reset" in f["why"].lower() for f in result.failures)

        with FaultServer(["400"]) as refusing:  # a 4xx is the answer: not retried, a line with its status
            cli = batch(refusing.url, inp, "-o", tmp_path / "out2.jsonl", "--json")
            assert cli.returncode == 1
            assert set(refusing.attempts.values()) == {1}
            assert json.loads(cli.stdout)["failures"][0]["why"] == "HTTP 400: scripted 400"
            assert all(r["response"]["status_code"] == 400 for r in read_results(tmp_path / "out2.jsonl"))
