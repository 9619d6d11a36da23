"""What the router reads of a request body: the model, the prompt's leading text, a session key, token estimates.

The body is parsed to read these (orjson: a quarter of the json module's time on the bench's bodies) and
is forwarded as received, byte for byte: nothing here re-encodes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

# Prefix affinity keys (policies.PrefixAffinity): the leading text at two depths. The shallow one is the
# system prompt (or the first block of a plain prompt): what many requests share and vLLM's prefix cache
# keeps; the deep one is the conversation so far, so a hot system prompt that spills still keeps each
# conversation's turns together.
SHALLOW_CHARS = 2048
DEEP_CHARS = 8192
CHARS_PER_TOKEN = 4  # a token estimate for limits and load, good enough for English text


class BodyError(ValueError):
    """The body is not what an OpenAI request is; the message is the client's 400."""


@dataclass(frozen=True, slots=True)
class RequestFacts:
    model: str | None
    shallow: str  # leading text, system prompt depth
    deep: str  # leading text, conversation depth
    session: str | None  # the `user` field (a header may override it)
    stream: bool
    prompt_tokens: int = 0  # the prompt's estimate: all its text / CHARS_PER_TOKEN, or its token ids
    max_tokens: int = 0

    @property
    def tokens(self) -> int:
        """The prompt's estimate + max_tokens: what a key's token limit is charged up front, and the load."""
        return self.prompt_tokens + self.max_tokens


NO_FACTS = RequestFacts(None, "", "", None, False)


def read_facts(body: bytes) -> RequestFacts:
    """The routing facts of a JSON request body; BodyError when it is not a JSON object."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:  # strict JSON only: what Python's json module also reads (NaN) passes too
        data = _lenient(body)
    if not isinstance(data, dict):
        raise BodyError("the request body must be a JSON object")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise BodyError("`model` must be a string")
    shallow, deep = _leading_text(data)
    max_tokens = data.get("max_tokens") or data.get("max_completion_tokens") or 0
    user = data.get("user")
    return RequestFacts(
        model=model,
        shallow=shallow,
        deep=deep,
        session=user if isinstance(user, str) else None,
        stream=data.get("stream") is True,
        prompt_tokens=_prompt_tokens(data),
        max_tokens=max_tokens if isinstance(max_tokens, int) else 0,
    )


def _lenient(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyError(f"the request body is not JSON: {exc}") from None
    except RecursionError:
        raise BodyError("the request body is not JSON the router reads: nested too deeply") from None


def _leading_text(data: dict[str, Any]) -> tuple[str, str]:
    messages = data.get("messages")
    if isinstance(messages, list) and messages:
        parts = [_content_text(m) for m in messages[:8] if isinstance(m, dict)]
        first = parts[0] if parts else ""
        is_system = isinstance(messages[0], dict) and messages[0].get("role") in ("system", "developer")
        deep = "\n".join(parts)[:DEEP_CHARS]
        return (first[:SHALLOW_CHARS] if is_system and len(parts) > 1 else deep[:SHALLOW_CHARS]), deep
    text = _prompt_text(data.get("prompt", data.get("input")))
    return text[:SHALLOW_CHARS], text[:DEEP_CHARS]


def _prompt_tokens(data: dict[str, Any]) -> int:
    """The whole prompt's token estimate (not only the leading text the policies read)."""
    messages = data.get("messages")
    if isinstance(messages, list):
        return sum(len(_content_text(m)) for m in messages if isinstance(m, dict)) // CHARS_PER_TOKEN
    prompt = data.get("prompt", data.get("input"))
    prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
    chars = ids = 0
    for one in prompts:
        if isinstance(one, str):
            chars += len(one)
        elif isinstance(one, list):  # token ids: counted, not estimated
            ids += len(one)
    return chars // CHARS_PER_TOKEN + ids


def _content_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str):
            return first
        if isinstance(first, int):  # token ids
            return ",".join(map(str, prompt[: DEEP_CHARS // 6]))
        if isinstance(first, list):  # a batch of token id lists
            return ",".join(map(str, first[: DEEP_CHARS // 6]))
    return ""
