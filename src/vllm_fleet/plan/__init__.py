"""The Plan: the spec resolved (resolve.py) with its time budgets (budgets.py), GPU table and fit
(gpus.py), what the model's files say (model.py) and lint warnings (lint.py)."""

from vllm_fleet.plan.budgets import STARTUP_PROBE_PERIOD_S
from vllm_fleet.plan.derived import Derived
from vllm_fleet.plan.resolve import Plan, load_plan, model_key, resolve

__all__ = ["STARTUP_PROBE_PERIOD_S", "Derived", "Plan", "load_plan", "model_key", "resolve"]
