"""The evaluation metrics on hand-made answers, and the report by category (issue 15)."""

from __future__ import annotations

import math

import pytest

from vllm_fleet.errors import SpecError
from vllm_fleet.ops import evaluate
from vllm_fleet.ops.evaluate import Item


@pytest.mark.parametrize(
    ("answer", "expected", "want"),
    [
        ("  Paris \n", "paris", True),
        ("PARIS", "Paris", True),
        ("Paris.", "Paris", False),  # exact is exact after trimming and case folding
        ("The capital is Paris", "Paris", False),
        ("new   york", "New York", True),  # inner whitespace collapsed
        ("Lyon", ["Paris", "lyon"], True),  # any of a list
    ],
)
def test_exact(answer: str, expected: object, want: bool) -> None:
    assert evaluate.exact(answer, expected) is want


@pytest.mark.parametrize(
    ("answer", "expected", "want"),
    [
        ("The capital of France is PARIS.", "Paris", True),
        ("It is Lyon", "Paris", False),
        ("carbon  dioxide, mostly", "Carbon dioxide", True),
        ("Tokyo", ["Kyoto", "tokyo"], True),
    ],
)
def test_contains(answer: str, expected: object, want: bool) -> None:
    assert evaluate.contains(answer, expected) is want


@pytest.mark.parametrize(
    ("answer", "expected", "want"),
    [
        ("Answer: 42", r"\b42\b", True),
        ("Answer: 420", r"\b42\b", False),
        ("PARIS", "paris", False),  # case-sensitive unless asked
        ("PARIS", "(?i)paris", True),
    ],
)
def test_regex(answer: str, expected: str, want: bool) -> None:
    assert evaluate.regex(answer, expected) is want


@pytest.mark.parametrize(
    ("answer", "expected", "tolerance", "want"),
    [
        ("3 + 4 = 7, so the answer is 7", "7", 1e-6, True),
        ("First 3 then 5", "3", 1e-6, False),  # the LAST number is the answer
        ("#### 1,234", 1234, 1e-6, True),  # thousands separators
        ("about 3.1416", "3.14159", 1e-4, True),
        ("about 3.2", "3.14159", 1e-4, False),
        ("-0.5", "-.5", 1e-9, True),
        ("0.0000001", "0", 1e-6, True),  # an absolute floor near zero
        ("no number here", "7", 1e-6, False),
        ("1e3 items", "1000", 1e-9, True),
    ],
)
def test_numeric(answer: str, expected: object, tolerance: float, want: bool) -> None:
    assert evaluate.numeric(answer, expected, tolerance) is want


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("C) Paris", "C"),
        ("The answer is (D).", "D"),
        ("Answer: e", None),  # letters are capitals
        ("A good guess would be C", "C"),  # the article is no option
        ("I pick A because it is smaller", "A"),
        ("[B] is right, not (C)", "B"),
        ("Option A. Then B", "A"),
        ("none of them", None),
    ],
)
def test_choice_letter(text: str, letter: str | None) -> None:
    assert evaluate.choice_letter(text) == letter


def test_choice_against_expected() -> None:
    assert evaluate.choice("The answer is (B)", "B")
    assert evaluate.choice("The answer is (B)", "b")
    assert evaluate.choice("B. Paris", "B) Paris")
    assert not evaluate.choice("The answer is (B)", "C")
    assert not evaluate.choice("no idea", "A")


def test_answer_text_from_chat_and_completions() -> None:
    assert evaluate.answer_text({"choices": [{"message": {"content": "hi"}}]}) == "hi"
    assert evaluate.answer_text({"choices": [{"text": "yo"}]}) == "yo"
    assert evaluate.answer_text({"choices": []}) is None
    assert evaluate.answer_text({"error": {"message": "bad"}}) is None
    assert evaluate.answer_text("plain text") is None


def test_expected_problems_are_found_before_a_run() -> None:
    assert evaluate.expected_problem("regex", "([") is not None
    assert evaluate.expected_problem("numeric", "seven") is not None
    assert evaluate.expected_problem("choice", "Z") is not None
    assert evaluate.expected_problem("exact", {"a": 1}) is not None
    assert evaluate.expected_problem("exact", True) is not None
    for metric, expected in [("regex", r"\d+"), ("numeric", 7), ("choice", "b"), ("exact", ["x", "y"])]:
        assert evaluate.expected_problem(metric, expected) is None
    assert evaluate.expected_problem("numeric", None) is None  # no ground truth: not scored


def test_unknown_metric_lists_the_others() -> None:
    with pytest.raises(SpecError, match="not a metric") as caught:
        evaluate.metric_named("fuzzy")
    assert caught.value.fix is not None and "choice" in caught.value.fix


def test_report_by_category_with_failures() -> None:
    items = [
        Item("g1", "Paris", "Paris", "geo", "capital of France?"),
        Item("g2", "Tokyo", "Kyoto", "geo", "capital of Japan?"),
        Item("m1", "5", "5", "math"),
        Item("m2", "6", None, "math", error="HTTP 500"),  # a failed request is a wrong answer
        Item("x1", None, "anything"),  # no ground truth: not scored
        Item("u1", "yes", "yes"),  # no category: counted overall only
    ]
    report = evaluate.evaluate("exact", items)
    assert (report.overall.total, report.overall.correct) == (5, 3)
    assert report.accuracy == pytest.approx(0.6)
    assert report.unscored == 1
    assert {k: (t.correct, t.total) for k, t in report.by_category.items()} == {"geo": (1, 2), "math": (1, 2)}
    assert [f["custom_id"] for f in report.failures] == ["g2", "m2"]
    assert report.failures[0] == {
        "custom_id": "g2",
        "category": "geo",
        "question": "capital of Japan?",
        "expected": "Tokyo",
        "answer": "Kyoto",
    }
    assert report.failures[1]["error"] == "HTTP 500"
    data = report.to_dict()
    assert data["accuracy"] == 0.6 and data["by_category"]["geo"]["accuracy"] == 0.5


def test_report_of_nothing_scored_has_no_accuracy() -> None:
    report = evaluate.evaluate("contains", [Item("a", None, "x")])
    assert math.isnan(report.accuracy)
    assert report.to_dict()["accuracy"] is None
