"""What the router reads of a body, and the pool's bookkeeping (ejection, backoff, drain, load), without a
network (issue 14)."""

from __future__ import annotations

import json
import time

import pytest

from vllm_fleet.router.backends import MAX_BACKOFF_S, Backend, Pool, PoolSettings
from vllm_fleet.router.body import DEEP_CHARS, SHALLOW_CHARS, BodyError, read_facts
from vllm_fleet.router.proxy import forwarded_headers, retry_after


def test_facts_of_a_chat_request() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": [{"type": "text", "text": "U1"}, {"type": "image_url", "image_url": {}}]},
        ],
        "max_tokens": 10,
        "stream": True,
        "user": "alice",
    }
    facts = read_facts(json.dumps(body).encode())
    assert (facts.model, facts.shallow, facts.deep, facts.session, facts.stream) == ("m", "S", "S\nU1", "alice", True)
    assert (facts.prompt_tokens, facts.tokens) == (len("SU1") // 4, len("SU1") // 4 + 10)


def test_the_token_estimate_is_the_whole_prompts_not_the_leading_texts() -> None:
    """A key's token limit is charged this up front: a long conversation is not charged its first turns only."""
    turns = [{"role": "user", "content": "w" * 4000} for _ in range(20)]
    facts = read_facts(json.dumps({"model": "m", "messages": turns, "max_completion_tokens": 7}).encode())
    assert len(facts.deep) == DEEP_CHARS and (facts.prompt_tokens, facts.tokens) == (20_000, 20_007)
    ids = (b'{"prompt":[1,2,3]}', b'{"prompt":[[4,5],[6,7,8]]}', b'{"input":["aaaaaaaa","bbbb"]}', b'{"prompt":"xy"}')
    assert [read_facts(body).prompt_tokens for body in ids] == [3, 5, 3, 0]  # token ids are counted, text estimated


def test_facts_of_completions_prompts_and_embeddings_inputs() -> None:
    long = "p" * (DEEP_CHARS + 100)
    facts = read_facts(json.dumps({"model": "m", "prompt": long}).encode())
    assert len(facts.shallow) == SHALLOW_CHARS and len(facts.deep) == DEEP_CHARS and not facts.stream
    assert read_facts(b'{"model":"m","prompt":[1,2,3]}').shallow == "1,2,3"
    assert read_facts(b'{"model":"m","prompt":[[4,5],[6]]}').shallow == "4,5"
    assert read_facts(b'{"model":"m","input":["a","b"]}').shallow == "a"
    assert read_facts(b'{"model":"m","stream":"yes"}').stream is False  # only a JSON true streams
    assert read_facts(b'{"model":"m","user":5}').session is None


@pytest.mark.parametrize("body", [b"", b"{", b"\xff", b"[1]", b'"s"', b'{"model": 1}', b'{"model": ["a"]}'])
def test_what_is_not_an_openai_body_is_a_body_error(body: bytes) -> None:
    with pytest.raises(BodyError):
        read_facts(body)


def test_what_pythons_json_reads_beyond_strict_json_is_still_a_body() -> None:
    """orjson reads the body first; NaN (which json.dumps writes and vLLM's server reads) falls back to json."""
    facts = read_facts(b'{"model": "m", "temperature": NaN, "prompt": "hi", "max_tokens": 4}')
    assert (facts.model, facts.shallow, facts.tokens) == ("m", "hi", 4)
    with pytest.raises(BodyError, match="not JSON"):
        read_facts(b'{"model": "m", "prompt": NaX}')


def test_retry_after_and_hop_by_hop_headers() -> None:
    assert (retry_after("3"), retry_after("0.5"), retry_after("-2"), retry_after(None)) == (3.0, 0.5, 0.0, None)
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    sent = [("Connection", "close"), ("Host", "x"), ("Transfer-Encoding", "chunked"), ("X-A", "1"), ("x-b", "2")]
    assert forwarded_headers(sent) == [("X-A", "1"), ("x-b", "2")]  # order and spelling kept


def backend(pool: Pool, url: str = "http://a:1", models: tuple[str, ...] = ("m",)) -> Backend:
    b = pool.add(url)
    b.healthy, b.models = True, models
    pool.changed()
    return b


def test_consecutive_failures_eject_with_a_doubling_backoff_and_success_resets_it() -> None:
    pool = Pool(PoolSettings(eject_after=2))
    b = backend(pool)
    pool.failed(b, "x")
    assert pool.available("m") == [b]
    pool.failed(b, "x")
    assert pool.available("m") == [] and 0.9 < b.ejected_until - time.monotonic() <= 1.0
    b.ejected_until = 0  # the backoff ran out; it fails again at once: ejected for twice as long
    pool.changed()
    pool.failed(b, "x")
    assert 1.9 < b.ejected_until - time.monotonic() <= 2.0
    b.ejected_until = 0
    pool.changed()
    pool.succeeded(b)
    assert (b.failures, b.ejections, b.served) == (0, 0, 1)
    for _ in range(20):
        pool.eject(b, "x")
    assert b.ejected_until - time.monotonic() <= MAX_BACKOFF_S


def test_an_ejection_ends_by_time_although_nothing_else_changed() -> None:
    pool = Pool()
    b = backend(pool)
    pool.eject(b, "429", for_s=0.05)
    assert pool.available("m") == [] and pool.retry_after_s() == 1
    time.sleep(0.06)
    assert pool.available("m") == [b]  # the cached list expired with the ejection


def test_drain_and_removal_and_models() -> None:
    pool = Pool()
    a, b = backend(pool, "http://a:1", ("m",)), backend(pool, "http://b:1/", ("m", "n"))
    assert pool.available("n") == [b] and pool.available(None) == [a, b]
    pool.drain("http://a:1")
    assert pool.available("m") == [b] and a.state(time.monotonic()) == "draining"
    assert pool.drain("http://nowhere:1") is None
    pool.drain("http://a:1", draining=False)
    assert pool.remove("http://b:1") and pool.available("m") == [a] and not pool.remove("http://b:1")
    pool.set_backends(["http://c:1"])
    assert list(pool.backends) == ["http://c:1"] and pool.available("m") == []  # c is not yet checked


def test_the_endpoint_load_metrics_header_in_its_forms() -> None:
    pool = Pool()
    b = backend(pool)
    pool.load_header(b, "TEXT named_metrics.num_requests_waiting=3, named_metrics.kv_cache_usage_perc=0.5")
    assert (b.engine_waiting, b.kv_cache_usage) == (3.0, 0.5)
    pool.load_header(b, 'JSON {"named_metrics": {"num_requests_waiting": 7}}')
    assert b.engine_waiting == 7.0
    pool.load_header(b, "TEXT garbage")  # never raises
    pool.load_header(b, "JSON {not json")
    assert b.engine_waiting == 7.0
