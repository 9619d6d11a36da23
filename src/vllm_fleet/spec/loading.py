"""FleetSpec: what a person writes, loaded from YAML with environment overlays.

A spec file is one mapping. ``environments.<name>`` holds partial specs that are
deep-merged over the base when ``--env <name>`` is chosen. Every environment is
validated at load time, so a mistake in the production overlay is found during
development. Errors name the YAML path, what is wrong and, for a misspelt key,
the key that was probably meant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vllm_fleet.errors import SpecError
from vllm_fleet.spec.messages import did_you_mean, validate
from vllm_fleet.spec.schema import FleetSpec


def load_spec(path: str | Path, env: str | None = None) -> FleetSpec:
    """Read ``path``, validate the base and every overlay, and return the spec for ``env``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec {path}: {exc.strerror}", fix="pass the path of a YAML spec") from exc
    return parse_spec(text, env=env, origin=str(path))


def parse_spec(text: str, env: str | None = None, origin: str = "<spec>") -> FleetSpec:
    """Validate YAML ``text`` (see :func:`load_spec`)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark else origin
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{where}: invalid YAML: {problem}", fix="fix the YAML syntax at that line") from exc
    if not isinstance(raw, dict):
        raise SpecError(
            f"{origin}: the spec must be a mapping of keys (name, model, ...), got {type(raw).__name__}",
            fix="start the file with `name:` and `model:` keys",
        )
    base = validate(raw, origin, overlay=None)
    for name, overlay in base.environments.items():
        validate(_merge_overlay(raw, name, overlay, origin), origin, overlay=(name, overlay))
    if env is None:
        return base
    if env not in base.environments:
        known = sorted(base.environments)
        hint = did_you_mean(env, known)
        raise SpecError(
            f"{origin}: no environment {env!r}{hint}",
            fix=f"use one of: {', '.join(known)}" if known else "add it under `environments:` or drop --env",
        )
    return validate(_merge_overlay(raw, env, base.environments[env], origin), origin, overlay=None)


def _merge_overlay(raw: dict, name: str, overlay: Any, origin: str) -> dict:
    if not isinstance(overlay, dict):
        raise SpecError(f"{origin}: environments.{name}: must be a mapping of spec keys to override")
    if "environments" in overlay or "name" in overlay:
        key = "environments" if "environments" in overlay else "name"
        raise SpecError(f"{origin}: environments.{name}.{key}: cannot be overridden in an environment")
    merged = _deep_merge({k: v for k, v in raw.items() if k != "environments"}, overlay)
    return merged


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
