"""resume.py on its own: whole events only, the text so far, the continuation body, the role event dropped."""

from __future__ import annotations

import json

from vllm_fleet.router.resume import MAX_HELD, Transcript, continuation_body, without_role_event


def sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def delta(content: str | None = None, role: str | None = None, finish: str | None = None) -> bytes:
    d = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    return sse({"choices": [{"index": 0, "delta": d, "finish_reason": finish}]})


def test_a_torn_event_is_held_until_its_end_arrives() -> None:
    t = Transcript()
    whole = delta("Hel") + delta("lo")
    assert t.whole_events(whole[:5]) == b""
    assert t.whole_events(whole[5:-3]) == delta("Hel")
    assert t.whole_events(whole[-3:]) == delta("lo")
    assert t.so_far() == ("Hello", 2, False, False)


def test_the_sink_passes_whole_events_at_once_holds_a_torn_one_and_a_cut_drops_it() -> None:
    written: list[bytes] = []
    t = Transcript()
    sink = t.sink(lambda data: written.append(data) is None)
    first, torn = delta("The"), delta(" end")
    assert sink(first) and written == [first]  # whole: on at once
    sink(torn[:7])
    assert written[-1] == b""  # torn: nothing of it yet
    sink(torn[7:] + delta(" is")[:4])
    assert written[-1] == torn  # its end arrived: the event, and the next one's start held back
    assert t.so_far() == ("The end", 2, False, False)
    t.cut()  # the backend died: the held start never reached the client
    assert t.rest() == b""
    assert sink(delta(".")) and written[-1] == delta(".")


def test_events_with_crlf_line_ends_are_whole_as_lf_ones_are() -> None:
    crlf = [e.replace(b"\n", b"\r\n") for e in (delta("", role="assistant"), delta("Hel"), delta("lo"))]
    t = Transcript()
    written: list[bytes] = []
    sink = t.sink(lambda data: written.append(data) is None)
    sink(crlf[0])
    assert written == [crlf[0]]  # whole: on at once
    sink(crlf[1][:-1])  # its blank line's LF still to come
    sink(crlf[1][-1:] + crlf[2] + b"data:[DONE]\r\n\r\n")
    assert written[1:] == [b"", crlf[1] + crlf[2] + b"data:[DONE]\r\n\r\n"]
    assert t.so_far() == ("Hello", 2, True, True)  # "data:" without its optional space read too
    assert without_role_event(b"".join(crlf)) == crlf[1] + crlf[2]


def test_a_stream_that_is_not_sse_goes_on_as_it_comes_and_is_not_continued() -> None:
    t = Transcript()
    assert t.whole_events(b"x" * MAX_HELD) == b""  # held: perhaps a long event
    assert t.whole_events(b"y") == b"x" * MAX_HELD + b"y"  # past the bound: not SSE
    assert t.whole_events(b"z") == b"z" and not t.whole


def test_so_far_sees_the_end_of_an_answer() -> None:
    t = Transcript()
    t.whole_events(delta("", role="assistant") + delta("Hi", finish="stop"))
    assert t.so_far() == ("Hi", 1, True, False)  # finished, its [DONE] still to come
    t.whole_events(b"data: [DONE]\n\n")
    assert t.so_far() == ("Hi", 1, True, True)


def test_the_continuation_carries_the_text_and_a_smaller_budget() -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "q"}], "max_tokens": 10}).encode()
    again = json.loads(continuation_body(body, "The answer", 2) or b"")
    assert again["messages"] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "The answer"}]
    assert (again["continue_final_message"], again["add_generation_prompt"], again["max_tokens"]) == (True, False, 8)
    assert continuation_body(body, "", 0) == body  # nothing streamed yet: the request as it was


def test_a_client_continuation_is_extended_not_stacked() -> None:
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "Once"}]
    body = json.dumps({"messages": messages, "continue_final_message": True}).encode()
    again = json.loads(continuation_body(body, " upon", 1) or b"")
    assert again["messages"][-1] == {"role": "assistant", "content": "Once upon"} and len(again["messages"]) == 2


def test_a_completion_continues_from_its_prompt_and_the_text_so_far() -> None:
    body = json.dumps({"model": "m", "prompt": "Paris is", "max_tokens": 10, "stream": True}).encode()
    again = json.loads(continuation_body(body, " the capital", 2) or b"")
    assert again == {"model": "m", "prompt": "Paris is the capital", "max_tokens": 8, "stream": True}
    listed = json.dumps({"prompt": ["Paris is"]}).encode()
    assert json.loads(continuation_body(listed, " the", 1) or b"")["prompt"] == "Paris is the"
    t = Transcript()
    t.whole_events(sse({"choices": [{"index": 0, "text": " the", "finish_reason": None}]}))
    assert t.so_far() == (" the", 1, False, False)


def test_what_cannot_be_continued() -> None:
    assert continuation_body(b'{"messages": [], "n": 2}', "x", 1) is None
    assert continuation_body(b'{"prompt": [1, 2, 3]}', "x", 1) is None  # token ids: no text to append to
    assert continuation_body(b'{"prompt": "x", "echo": true}', "x", 1) is None  # the prompt is in the answer
    assert continuation_body(b'{"prompt": ["a", "b"]}', "x", 1) is None  # two prompts, two answers
    assert continuation_body(b'{"input": "x"}', "x", 1) is None
    assert continuation_body(b"not json", "x", 1) is None


def test_the_continuation_role_event_is_dropped_and_nothing_else() -> None:
    assert without_role_event(delta("", role="assistant") + delta("x")) == delta("x")
    assert without_role_event(delta("x")) == delta("x")
    assert without_role_event(delta("", role="assistant")) == b""


def test_what_is_held_back_is_given_up_at_the_end() -> None:
    t = Transcript()
    assert t.whole_events(b'data: {"x": 1}') == b""
    assert t.rest() == b'data: {"x": 1}' and t.rest() == b""
