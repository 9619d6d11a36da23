"""Derived: a number the Plan computed, and why it has that value (what `vllm-fleet plan` shows)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Derived:
    """A number the Plan computed, and why it has that value."""

    value: float | int | str | None
    why: str
