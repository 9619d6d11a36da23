"""Validation errors as a person reads them: the YAML path, what is wrong, and a did-you-mean."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from vllm_fleet.errors import SpecError
from vllm_fleet.spec.schema import FleetSpec


def validate(data: dict, origin: str, overlay: tuple[str, dict] | None) -> FleetSpec:
    """``data`` as a FleetSpec, or a SpecError naming up to three problems by YAML path (in ``overlay`` if given)."""
    try:
        return FleetSpec.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err, overlay) for err in exc.errors()[:3]]
        more = len(exc.errors()) - 3
        if more > 0:
            lines.append(f"... and {more} more")
        raise SpecError(f"{origin}: " + "\n  ".join(lines)) from None


def _describe(err: ErrorDetails, overlay: tuple[str, dict] | None) -> str:
    loc = [str(p) for p in err["loc"]]
    if overlay is not None and _in_overlay(overlay[1], err["loc"]):
        loc = ["environments", overlay[0], *loc]
    path = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        parent = _model_at(err["loc"][:-1])
        hint = did_you_mean(str(err["loc"][-1]), list(parent.model_fields) if parent else [])
        return f"{path}: unknown key{hint}"
    if err["type"] == "missing":
        return f"{path}: required key is missing"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] not in ("value_error",) and "input" in err:
        message += f" (got {err['input']!r})"
    return f"{path}: {message}"


def _in_overlay(overlay: dict, loc: tuple) -> bool:
    node: Any = overlay
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = FleetSpec
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def did_you_mean(word: str, options: list[str]) -> str:
    """' (did you mean X?)' for the closest of ``options``, or nothing."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
