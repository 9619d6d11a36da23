"""Scoring a batch's answers against ground truth (issue 15): the metrics, and the report by category.

An input line may carry ``expected`` (the ground truth, never sent) and ``category``;
``--eval METRIC`` scores each answer with one of ``METRICS``. A request that failed
counts as a wrong answer (otherwise a flaky endpoint would raise the accuracy); a line
without ``expected`` is not scored. The report lists every failure with its question,
answer and expectation, like the predictions file of the reference deployments.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vllm_fleet.errors import SpecError

Metric = Callable[[str, Any, float], bool]


def normalize(text: str) -> str:
    """Trimmed, case-folded, inner whitespace collapsed: what `exact` and `contains` compare."""
    return " ".join(text.split()).casefold()


def _options(expected: Any) -> list[str]:
    """``expected`` as a list of acceptable answers (a list means any of them)."""
    return [str(e) for e in expected] if isinstance(expected, list) else [str(expected)]


def exact(answer: str, expected: Any, tolerance: float = 0.0) -> bool:
    """The answer equals an expected one after trimming and case folding."""
    return normalize(answer) in {normalize(e) for e in _options(expected)}


def contains(answer: str, expected: Any, tolerance: float = 0.0) -> bool:
    """An expected text appears in the answer (both trimmed and case folded)."""
    said = normalize(answer)
    return any(normalize(e) in said for e in _options(expected))


def regex(answer: str, expected: Any, tolerance: float = 0.0) -> bool:
    """An expected pattern matches somewhere in the answer (Python syntax; ``(?i)`` for case folding)."""
    return any(re.search(pattern, answer) for pattern in _options(expected))


# A number as models write one: sign, thousands separators, decimals, an exponent.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def last_number(text: str) -> float | None:
    """The last number in ``text``: a worked answer ends with its result (GSM8K's ``#### 42``)."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def numeric(answer: str, expected: Any, tolerance: float = 1e-6) -> bool:
    """The answer's last number is within ``tolerance`` of an expected one.

    ``tolerance`` is relative to the expected value, with an absolute floor of the same
    size near zero: ``|got - want| <= tolerance * max(1, |want|)``.
    """
    got = last_number(answer)
    if got is None:
        return False
    for want in _options(expected):
        value = last_number(want)
        if value is not None and abs(got - value) <= tolerance * max(1.0, abs(value)):
            return True
    return False


# Where a model names its choice, strongest signal first; letters are capitals.
_CHOICE_PATTERNS = (
    re.compile(r"(?i:answer\s*(?:is|:)?\s*(?:option\s*)?)[(\[]?([A-E])\b"),  # "The answer is (C)"
    re.compile(r"[(\[]([A-E])[)\]]"),  # "(B)", "[D]"
    re.compile(r"^\s*([A-E])(?:[.):]|\s*$)", re.MULTILINE),  # "B." / "C)" / "D" at a line's start
)
_LONE_LETTER = re.compile(r"\b([A-E])\b")
_ARTICLE = re.compile(r"(?:^|[.!?:]\s*)$")  # before a sentence's first "A" (then followed by a lowercase word)


def choice_letter(text: str) -> str | None:
    """The first option letter A-E the text gives, or None."""
    for pattern in _CHOICE_PATTERNS:
        if found := pattern.search(text):
            return found.group(1).upper()
    for found in _LONE_LETTER.finditer(text):  # "I pick B", "C because ..."; not the article in "A good one"
        letter = found.group(1)
        is_article = (
            letter == "A" and _ARTICLE.search(text[: found.start()]) and re.match(r"\s+[a-z]", text[found.end() :])
        )
        if not is_article:
            return letter
    return None


def choice(answer: str, expected: Any, tolerance: float = 0.0) -> bool:
    """The first option letter the answer gives is the expected one (``"B"``, ``"b"`` or ``"B) Paris"``)."""
    got = choice_letter(answer)
    wants = {choice_letter(e) or e.strip().upper()[:1] for e in _options(expected)}
    return got is not None and got in wants


METRICS: dict[str, Metric] = {
    "exact": exact,
    "contains": contains,
    "regex": regex,
    "numeric": numeric,
    "choice": choice,
}


def metric_named(name: str) -> Metric:
    """The metric called ``name``; a SpecError lists the others."""
    try:
        return METRICS[name]
    except KeyError:
        raise SpecError(f"--eval {name!r} is not a metric", fix=f"one of: {', '.join(METRICS)}") from None


def expected_problem(metric: str, expected: Any) -> str | None:
    """Why ``expected`` cannot be scored by ``metric`` (a bad regex, no number), or None when it can."""
    if expected is None:
        return None
    if not isinstance(expected, str | int | float | list) or isinstance(expected, bool):
        return f"expected must be a string, a number or a list of them, not {type(expected).__name__}"
    for option in _options(expected):
        if metric == "regex":
            try:
                re.compile(option)
            except re.error as exc:
                return f"expected {option!r} is not a valid regex: {exc}"
        if metric == "numeric" and last_number(option) is None:
            return f"expected {option!r} holds no number"
        if metric == "choice" and not (choice_letter(option) or option.strip().upper()[:1] in "ABCDE"):
            return f"expected {option!r} is not an option letter A-E"
    return None


def answer_text(body: Any) -> str | None:
    """The generated text of a chat or text completion response body, or None when it holds none."""
    try:
        first = body["choices"][0]
    except (KeyError, IndexError, TypeError):
        return None
    if isinstance(first, dict):
        if isinstance(message := first.get("message"), dict):
            content = message.get("content")
            return content if isinstance(content, str) else None
        if isinstance(text := first.get("text"), str):
            return text
    return None


@dataclass(frozen=True)
class Item:
    """One scored line: what was asked, what came back (None: the request failed), what was expected."""

    custom_id: str
    expected: Any
    answer: str | None
    category: str | None = None
    question: str | None = None
    error: str | None = None  # why no answer: the request's error or status


@dataclass
class Tally:
    total: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "correct": self.correct, "accuracy": _round(self.accuracy)}


@dataclass
class EvalReport:
    """Accuracy overall and per category, with every failure listed."""

    metric: str
    overall: Tally = field(default_factory=Tally)
    by_category: dict[str, Tally] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    unscored: int = 0  # lines without ``expected``

    @property
    def accuracy(self) -> float:
        return self.overall.accuracy

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            **self.overall.to_dict(),
            "unscored": self.unscored,
            "by_category": {name: t.to_dict() for name, t in sorted(self.by_category.items())},
            "failures": self.failures,
        }


def evaluate(metric: str, items: Iterable[Item], tolerance: float = 1e-6) -> EvalReport:
    """Score every item with ``metric``; items without ``expected`` are counted as unscored."""
    score = metric_named(metric)
    report = EvalReport(metric)
    for item in items:
        if item.expected is None:
            report.unscored += 1
            continue
        correct = item.answer is not None and score(item.answer, item.expected, tolerance)
        for tally in (
            report.overall,
            *([report.by_category.setdefault(item.category, Tally())] if item.category else []),
        ):
            tally.total += 1
            tally.correct += correct
        if not correct:
            report.failures.append(
                {
                    "custom_id": item.custom_id,
                    "category": item.category,
                    "question": item.question,
                    "expected": item.expected,
                    "answer": item.answer,
                    **({"error": item.error} if item.error else {}),
                }
            )
    return report


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)
