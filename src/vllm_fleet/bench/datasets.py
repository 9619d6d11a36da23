"""Where prompts come from: synthetic, shared-prefix groups, ShareGPT JSON, a JSONL of prompts.

Token lengths use the model's own tokenizer when one is on this machine (a
directory with ``tokenizer.json`` and ``transformers`` installed). Otherwise
they use a documented approximation: prompts are built from short common
English words that byte-pair tokenizers (Llama, GPT, SmolLM2) keep as one
token each when preceded by a space, so N words are about N tokens (with
SmolLM2's tokenizer each of the words is exactly one token: 1,024 words, 1,024
tokens). The server's usage counts, not these estimates, are what the report
uses whenever the server sends them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from vllm_fleet.errors import SpecError

# Short, frequent words: one BPE token each after a space.
_WORD_TEXT = (
    "the of and to in is it that for on was with as at by be this are from or have an they which one you were "
    "all we when there can more if out so up said what its about than into them only new some could time these "
    "two may first then do any like my now over such our man me even most made after also did many before must "
    "through back years where much your way well down should because each just those people how too little state "
    "good very make world still own see men work long get here between both life being under never day same "
    "another know while last might us great old year off come since against go came right used take three"
)
WORDS = _WORD_TEXT.split()

DATASETS = ("random", "shared-prefix", "sharegpt", "jsonl")


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class Prompt:
    """One request's input: the text, its expected token length, and how many tokens to ask for."""

    text: str
    prompt_len: int
    output_len: int


@dataclass
class TokenCounter:
    """Counts tokens with the model's tokenizer when there is one, else the word approximation."""

    tokenizer: Tokenizer | None = None
    source: str = "approximation (1 token per word)"

    def count(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        return len(text.split())


def load_tokenizer(path: str | Path | None) -> TokenCounter:
    """The tokenizer in directory ``path`` if it and transformers are here; else the approximation."""
    if path is None or not (Path(path) / "tokenizer_config.json").is_file():
        return TokenCounter()
    try:
        from transformers import AutoTokenizer  # heavy: only when a local tokenizer exists
    except ImportError:
        return TokenCounter(source="approximation (transformers not installed)")
    try:
        # cast: transformers annotates decode as str | list[str] (for batches); one id list decodes to a str
        tokenizer = cast(Tokenizer, AutoTokenizer.from_pretrained(str(path)))
        return TokenCounter(tokenizer, source=f"tokenizer {path}")
    except (OSError, ValueError) as exc:
        return TokenCounter(source=f"approximation (tokenizer {path} failed: {exc})")


def synthetic_text(rng: random.Random, tokens: int, counter: TokenCounter) -> str:
    """Random words of about ``tokens`` tokens (exactly, after re-encoding, when a tokenizer is here)."""
    text = " ".join(rng.choice(WORDS) for _ in range(max(tokens, 0)))
    tokenizer = counter.tokenizer
    if tokenizer is None or tokens <= 0:
        return text
    ids = tokenizer.encode(text, add_special_tokens=False)[:tokens]
    return tokenizer.decode(ids)


def random_prompts(n: int, input_len: int, output_len: int, counter: TokenCounter, seed: int = 0) -> list[Prompt]:
    """``n`` distinct synthetic prompts (distinct so the prefix cache does not flatter the server)."""
    rng = random.Random(seed)
    return [Prompt(synthetic_text(rng, input_len, counter), input_len, output_len) for _ in range(n)]


def shared_prefix_prompts(
    n: int, groups: int, prefix_len: int, input_len: int, output_len: int, counter: TokenCounter, seed: int = 0
) -> list[Prompt]:
    """``n`` prompts in ``groups`` groups; each group shares a ``prefix_len``-token system prompt.

    The workload that shows what prefix caching and prefix-aware routing buy.
    Requests of the groups are interleaved round-robin.
    """
    rng = random.Random(seed)
    prefixes = [synthetic_text(rng, prefix_len, counter) for _ in range(max(groups, 1))]
    return [
        Prompt(
            prefixes[i % len(prefixes)] + "\n" + synthetic_text(rng, input_len, counter),
            prefix_len + input_len,
            output_len,
        )
        for i in range(n)
    ]


def sharegpt_prompts(path: Path, n: int, counter: TokenCounter, seed: int = 0) -> list[Prompt]:
    """First human turn and the length of the reply, from ShareGPT-format JSON (vLLM's filters apply)."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot read ShareGPT dataset {path}: {exc}", fix="pass a ShareGPT-format JSON file") from exc
    pairs = [
        (row["conversations"][0]["value"], row["conversations"][1]["value"])
        for row in rows
        if isinstance(row, dict) and len(row.get("conversations") or []) >= 2
    ]
    random.Random(seed).shuffle(pairs)
    prompts: list[Prompt] = []
    for question, answer in pairs:
        prompt_len, reply_len = counter.count(question), counter.count(answer)
        # vLLM's sharegpt filter: too short to measure, or too long for a 2k context.
        if prompt_len < 4 or reply_len < 4 or prompt_len > 1024 or prompt_len + reply_len > 2048:
            continue
        prompts.append(Prompt(question, prompt_len, reply_len))
        if len(prompts) == n:
            break
    return _enough(prompts, path)


def jsonl_prompts(path: Path, n: int, counter: TokenCounter, output_len: int) -> list[Prompt]:
    """One prompt per line: a JSON string, or an object with ``prompt`` (or ``text``) and optional ``output_len``."""
    prompts: list[Prompt] = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise SpecError(f"cannot read JSONL dataset {path}: {exc.strerror}", fix="pass a JSONL file") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text = row if isinstance(row, str) else row.get("prompt") or row["text"]
            wanted = output_len if isinstance(row, str) else int(row.get("output_len") or output_len)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SpecError(
                f"{path}:{number}: not a prompt ({exc})", fix='write one JSON string or {"prompt": ...} per line'
            ) from exc
        prompts.append(Prompt(text, counter.count(text), wanted))
        if len(prompts) == n:
            break
    return _enough(prompts, path)


def _enough(prompts: list[Prompt], path: Path) -> list[Prompt]:
    if not prompts:
        raise SpecError(f"{path} holds no usable prompt", fix="check the file's format (see `vllm-fleet bench --help`)")
    return prompts


def load_prompts(
    name: str,
    n: int,
    counter: TokenCounter,
    *,
    path: Path | None = None,
    input_len: int = 128,
    output_len: int = 32,
    prefix_groups: int = 4,
    prefix_len: int = 512,
    seed: int = 0,
) -> list[Prompt]:
    """The prompts of dataset ``name`` (one of DATASETS); files are required for sharegpt and jsonl."""
    if name == "random":
        return random_prompts(n, input_len, output_len, counter, seed)
    if name == "shared-prefix":
        return shared_prefix_prompts(n, prefix_groups, prefix_len, input_len, output_len, counter, seed)
    if name in ("sharegpt", "jsonl"):
        if path is None:
            raise SpecError(f"dataset {name} needs a file", fix="pass --dataset-path FILE")
        if name == "sharegpt":
            return sharegpt_prompts(path, n, counter, seed)
        return jsonl_prompts(path, n, counter, output_len)
    raise SpecError(f"unknown dataset {name!r}", fix=f"use one of: {', '.join(DATASETS)}")
