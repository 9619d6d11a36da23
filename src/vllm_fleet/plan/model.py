"""What the model's own files say when they are readable here: total size, config.json, attention shape."""

from __future__ import annotations

import json
from typing import Any

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
    path = file_path(source) / "config.json"
    if not source.startswith("file://") or not path.is_file():
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
