"""`batch` without a server: the input's problems by line, the output's recovery and appends, the concurrency
choice, and the evaluation of an output file (issue 15)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vllm_fleet.errors import CheckFailed, SpecError
from vllm_fleet.ops.batch import (
    PROBE_GROWTH,
    BatchRequest,
    ResultLog,
    choose_concurrency,
    evaluate_output,
    read_input,
    read_results,
)


def _line(custom_id: str, **extra: object) -> str:
    body = {"messages": [{"role": "user", "content": f"q {custom_id}"}], "max_tokens": 4}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body} | extra)


def test_bad_lines_are_reported_with_their_numbers_and_the_rest_kept(tmp_path: Path) -> None:
    lines = [
        _line("a", expected="x", category="geo"),
        "{not json",
        json.dumps({"url": "/v1/completions", "body": {}}),  # no custom_id
        _line("a"),  # duplicate
        "",  # blank lines are skipped, not errors
        json.dumps([1, 2]),
        json.dumps({"custom_id": "b", "url": "/v1/completions"}),  # no body
        json.dumps({"custom_id": "c", "method": "GET", "url": "/v1/models", "body": {}}),
        json.dumps({"custom_id": "d", "url": "https://elsewhere/v1/x", "body": {}}),
        json.dumps({"custom_id": "e", "url": "/v1/completions", "body": {"prompt": "p", "stream": True}}),
        _line("f"),
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    batch = read_input(path)
    assert [r.custom_id for r in batch.requests] == ["a", "f"]
    assert batch.requests[0] == BatchRequest(
        1, "a", "/v1/chat/completions", json.loads(lines[0])["body"], expected="x", category="geo"
    )
    assert batch.requests[0].question == "q a"
    problems = {p.line: p.message for p in batch.problems}
    assert sorted(problems) == [2, 3, 4, 6, 7, 8, 9, 10]
    assert "not JSON" in problems[2]
    assert "custom_id" in problems[3]
    assert "duplicate custom_id 'a' (first on line 1)" in problems[4]
    assert "body" in problems[7] and "POST" in problems[8] and "url" in problems[9] and "stream" in problems[10]


def test_expected_that_the_metric_cannot_score_is_an_input_problem(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(_line("a", expected="([") + "\n" + _line("b", expected=r"\d") + "\n")
    assert [p.line for p in read_input(path, "regex").problems] == [1]
    assert read_input(path).problems == []  # without --eval the field is not looked at


def test_a_missing_input_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        read_input(tmp_path / "nope.jsonl")


def _record(custom_id: str, status: int = 200, content: str = "ok") -> dict:
    body = {"choices": [{"message": {"content": content}}], "usage": {"completion_tokens": 1}}
    return {
        "id": f"r-{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": status, "body": body},
        "error": None,
    }


def test_appended_lines_are_read_back_and_a_torn_tail_is_dropped(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    log = ResultLog(out).open()
    log.append(_record("a"))
    log.append(_record("b", content="naïve\nline"))  # a newline inside a value stays escaped: one line
    log.close()
    whole = out.read_bytes()
    assert whole.count(b"\n") == 2
    out.write_bytes(whole + b'{"id":"r-c","custom_id":"c","resp')  # a kill -9 in the middle of a write
    again = ResultLog(out).open()
    try:
        assert sorted(again.done) == ["a", "b"]
        assert again.done["b"]["response"]["body"]["choices"][0]["message"]["content"] == "naïve\nline"
        assert again.dropped_bytes == len(b'{"id":"r-c","custom_id":"c","resp')
        assert out.read_bytes() == whole  # truncated to the last complete line
        again.append(_record("c"))
    finally:
        again.close()
    assert [r["custom_id"] for r in read_results(out)] == ["a", "b", "c"]


def test_appends_go_to_the_end_even_after_someone_moves_the_offset(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    log = ResultLog(out).open()
    try:
        log.append(_record("a"))
        os.lseek(log._fd, 0, os.SEEK_SET)  # O_APPEND: the kernel writes at the end regardless
        log.append(_record("b"))
    finally:
        log.close()
    assert [r["custom_id"] for r in read_results(out)] == ["a", "b"]


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    first = ResultLog(out).open()
    try:
        with pytest.raises(CheckFailed, match="another batch run"):
            ResultLog(out).open()
    finally:
        first.close()
    ResultLog(out).open().close()  # free again once the first one closed


def test_an_output_that_is_not_results_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(_line("a").replace("custom_id", "name") + "\n")
    with pytest.raises(SpecError, match="line 1 is not a batch result line"):
        ResultLog(out).open()


def test_concurrency_settles_where_doubling_stops_paying() -> None:
    level, why = choose_concurrency([(1, 20.0), (2, 39.0), (4, 78.0), (8, 150.0), (16, 300.0), (32, 310.0)])
    assert level == 32 and "doubling stopped paying" in why
    # growth just above the threshold keeps going; just below stops
    assert choose_concurrency([(1, 10.0), (2, 10.0 * PROBE_GROWTH + 0.01), (4, 30.0)])[0] == 4
    assert choose_concurrency([(1, 10.0), (2, 10.0 * PROBE_GROWTH - 0.01), (4, 30.0)])[0] == 2
    level, why = choose_concurrency([(1, 10.0), (2, 20.0)])
    assert level == 2 and "still growing" in why


def test_evaluation_joins_the_input_and_every_run_of_the_output(tmp_path: Path) -> None:
    requests = [
        BatchRequest(1, "a", "/v1/chat/completions", {}, expected="ok", category="x"),
        BatchRequest(2, "b", "/v1/chat/completions", {}, expected="ok", category="x"),
        BatchRequest(3, "c", "/v1/chat/completions", {}, expected="ok", category="y"),
        BatchRequest(4, "d", "/v1/chat/completions", {}, expected="ok", category="y"),
    ]
    out = tmp_path / "out.jsonl"
    failed = {"id": "r-c", "custom_id": "c", "response": None, "error": {"code": "ClientOSError", "message": "reset"}}
    lines = [_record("a"), _record("b", status=500), failed]
    out.write_text("".join(json.dumps(r) + "\n" for r in lines))  # "d" was never sent
    report = evaluate_output("exact", requests, out, 1e-6)
    assert (report.overall.correct, report.overall.total) == (1, 4)
    assert {f["custom_id"]: f.get("error") for f in report.failures} == {
        "b": "HTTP 500",
        "c": "reset",
        "d": "no result line (not sent yet)",
    }


def test_a_spec_sets_the_concurrency_from_its_engines_batch(tmp_path: Path) -> None:
    from vllm_fleet.ops.batch import spec_concurrency
    from vllm_fleet.plan import resolve
    from vllm_fleet.spec import parse_spec

    plan = resolve(
        parse_spec("name: demo\nmodel: {source: ./m}\nreplicas: 2\nengine: {max_num_seqs: 8}\n"), spec_dir=tmp_path
    )
    level, why = spec_concurrency(plan, servers=1)  # one router URL in front of two replicas
    assert level == 20 and "8 max_num_seqs x 2 replica(s)" in why
    assert spec_concurrency(None, servers=1) == (None, "")  # a URL: the probe decides
