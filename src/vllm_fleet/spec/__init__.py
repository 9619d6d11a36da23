"""FleetSpec: the schema a person writes (schema.py), loaded from YAML with overlays (loading.py),
its mistakes explained by YAML path (messages.py)."""

from vllm_fleet.spec.loading import load_spec, parse_spec
from vllm_fleet.spec.schema import STORAGE_PROFILES, FleetSpec, ModelShape

__all__ = ["STORAGE_PROFILES", "FleetSpec", "ModelShape", "load_spec", "parse_spec"]
