"""What the model's own files say when they are readable here: total size, config.json, attention shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vllm_fleet.errors import SpecError
from vllm_fleet.spec import FleetSpec, ModelShape
from vllm_fleet.weights.sources import file_path


def measure_bytes(spec: FleetSpec, source: str) -> int | None:
    """Bytes of the weights: measured for a local directory, else ``model.size_gb``, else unknown."""
    if source.startswith("file://"):
        root = file_path(source)
        if root.is_dir():
            return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    if spec.model.size_gb:
        return int(spec.model.size_gb * 1e9)
    return None


def local_config(source: str) -> dict[str, Any]:
    """The model's config.json when the source is a local directory (empty otherwise or when unreadable)."""
    return config_in(file_path(source)) if source.startswith("file://") else {}


def config_in(model_dir: Path) -> dict[str, Any]:
    """``model_dir``/config.json as a dict (empty when absent or unreadable)."""
    path = model_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def shape_from_config(config: dict[str, Any]) -> ModelShape | None:
    """Layers, KV heads and head size from a Hugging Face config, or None when it lacks them."""
    try:
        heads = int(config["num_attention_heads"])
        return ModelShape(
            layers=int(config["num_hidden_layers"]),
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
        )
    except (KeyError, TypeError, ValueError):
        return None


# The config keys vLLM reads a model's context length from, the smallest one present wins
# (vllm/config/model.py, _get_and_verify_max_len); rope scaling stretches it by its factor.
_LENGTH_KEYS = (
    "max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
    "max_sequence_length", "max_seq_length", "seq_len",
)  # fmt: skip


def context_limit(config: dict[str, Any]) -> int | None:
    """The longest context the model's config allows (None when it says nothing)."""
    lengths = [int(v) for k in _LENGTH_KEYS if isinstance(v := config.get(k), int | float) and v > 0]
    if not lengths:
        return None
    scaling = config.get("rope_scaling") or {}
    factor = scaling.get("factor") if isinstance(scaling, dict) else None
    return int(min(lengths) * (factor if isinstance(factor, int | float) and factor > 1 else 1))


def check_engine_fits_model(spec: FleetSpec, config: dict[str, Any], where: str) -> None:
    """Raise a SpecError naming the field when the engine settings exceed what the model's config allows.

    Better here than 10 s into the engine's start with a 30-line traceback.
    """
    limit = context_limit(config)
    if limit is not None and spec.engine.max_model_len > limit:
        raise SpecError(
            f"engine.max_model_len: {spec.engine.max_model_len} is more than the model allows ({limit} tokens, "
            f"from {where})",
            fix=f"set engine.max_model_len to at most {limit}",
        )
    heads = config.get("num_attention_heads")
    tp = spec.engine.tensor_parallel_size
    if isinstance(heads, int) and heads % tp:
        raise SpecError(
            f"engine.tensor_parallel_size: {tp} does not divide the model's {heads} attention heads (from {where})",
            fix="use a tensor_parallel_size that divides " + str(heads),
        )
