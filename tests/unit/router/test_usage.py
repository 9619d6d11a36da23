"""What an answer used, read from its bytes as they pass (a key's tokens are settled to it, issue 14)."""

from __future__ import annotations

import json

import pytest

from vllm_fleet.router.usage import MAX_USAGE, Meter, Tally

# vLLM's non-streamed chat answer ends so (its UsageInfo: prompt, total, completion, then the details).
VLLM = (
    b'{"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":'
    b'"assistant","content":"Hi"},"finish_reason":"length"}],"usage":{"prompt_tokens":9,"total_tokens":21,'
    b'"completion_tokens":12,"prompt_tokens_details":null},"prompt_logprobs":null,"kv_transfer_params":null}'
)


def metered(*pieces: bytes, stream: bool = False) -> Meter:
    meter = Meter()
    sink = meter.sink(lambda data: True, stream)
    for piece in pieces:
        sink(piece) if stream else meter.saw(piece)
    return meter


@pytest.mark.parametrize(
    ("answer", "used"),
    [
        (VLLM, 21),
        # OpenAI's order, its details an object before the total.
        (b'{"usage": {"prompt_tokens_details": {"cached_tokens": 3}, "prompt_tokens": 5, "total_tokens": 8}}', 8),
        (b'{"object":"list","data":[],"usage":{"prompt_tokens":4,"total_tokens":4}}', 4),  # embeddings
        (b'{"id":"x","choices":[]}', None),  # no usage: the estimate stands
    ],
    ids=["vllm-chat", "openai-order", "embeddings", "none"],
)
def test_a_whole_answers_own_usage_is_what_it_used(answer: bytes, used: int | None) -> None:
    assert metered(answer[:50], answer[50:]).used(prompt_tokens=3) == used


def test_usage_inside_the_text_is_not_the_answers() -> None:
    """A model that writes `"usage": {"total_tokens": 999}` does not set its own bill: in a JSON string the
    quotes are escaped."""
    text = '"usage": {"total_tokens": 999}'
    answer = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
    assert metered(answer).used(0) is None
    assert metered(answer[:-1] + b',"usage":{"total_tokens":7}}').used(0) == 7


def test_a_stream_with_a_usage_event_is_billed_by_it_and_one_without_by_its_events() -> None:
    events = [b'data: {"choices":[{"delta":{"content":"w"}}]}\n\n'] * 40
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":6,"total_tokens":46,"completion_tokens":40}}\n\n'
    stream = b"".join([*events, usage, b"data: [DONE]\n\n"])
    assert metered(*(stream[i : i + 7] for i in range(0, len(stream), 7)), stream=True).used(6) == 46  # torn pieces
    assert metered(*events, stream=True).used(prompt_tokens=6) == 6 + 40


def test_only_a_streams_events_are_counted_and_no_answer_is_kept() -> None:
    body = b'{"choices":[{"text":"data: data: data:"}]}'
    assert metered(body, body, stream=False).used(5) is None  # not an event stream: "data:" is text
    long = metered(b"x" * 100_000, b'"usage":{"total_tokens":3}', b"y" * 100_000)
    assert long.used(0) == 3 and long._usages._carry == b""  # nothing of the answer held


def test_a_usage_followed_by_prompt_logprobs_is_still_the_answers() -> None:
    """vLLM puts ``prompt_logprobs`` (asked for: one entry per prompt token) after the usage: far from the end."""
    logprobs = json.dumps([{str(i): {"logprob": -1.5, "rank": 1, "decoded_token": "word"}} for i in range(2000)])
    answer = VLLM[: VLLM.index(b'"prompt_logprobs":null')] + b'"prompt_logprobs":' + logprobs.encode() + b"}"
    assert len(answer) > 100_000
    assert metered(*(answer[i : i + 65536] for i in range(0, len(answer), 65536))).used(0) == 21


# vLLM's realtime turn, as its connection sends it (a text frame each: a 2-byte header, then the JSON).
DELTA = b'{"type":"transcription.delta","delta":"said \\"usage\\":{\\"total_tokens\\":999}"}'
DONE = (
    b'{"type":"transcription.done","text":"said \\"usage\\":{\\"total_tokens\\":999}","usage":{"prompt_tokens":30,'
    b'"total_tokens":42,"completion_tokens":12,"prompt_tokens_details":null,"completion_tokens_details":null}}'
)


def frame(message: bytes) -> bytes:
    return bytes([0x81, 126]) + len(message).to_bytes(2, "big") + message


def test_a_sessions_turns_are_summed_each_once_however_the_reads_cut_them() -> None:
    session = b"".join(frame(m) for m in (b'{"type":"session.created"}', DELTA, DONE, DELTA, DONE))
    for cut in range(1, len(session)):
        tally = Tally()
        assert tally.feed(session[:cut]) + tally.feed(session[cut:]) == 84, cut
    tally = Tally()
    assert sum(tally.feed(session[i : i + 1]) for i in range(len(session))) == 84  # a byte a read


def test_a_usage_that_is_not_an_object_is_passed_over_and_what_follows_still_counts() -> None:
    tally = Tally()
    assert tally.feed(b'{"usage":null}' + frame(DONE)) == 42
    # "usage" as a value, or naming no object: passed over at once, not held back with what follows
    assert tally.feed(b'{"object":"usage","data":[]}' + frame(DONE)) == 42
    assert tally.feed(b'{"usage":7}' + frame(DONE)) == 42
    assert Meter().used(0) is None and metered(b'{"object":"usage"}', DONE).used(0) == 42
    # a "usage" whose value is no usage object: held while it might still become one, then passed over
    assert tally.feed(b'{"usage":"' + b"x" * 100) == 0
    assert tally.feed(b"x" * MAX_USAGE + b'"}' + frame(DONE)) == 42
