"""Where replicas run: ``base`` is the interface, ``local`` and ``kubernetes`` implement it.

The two never import each other; :func:`target_for` is the one place that picks between them.
"""

from __future__ import annotations

from vllm_fleet.plan import Plan
from vllm_fleet.targets.base import Target, TargetOptions


def target_for(plan: Plan, options: TargetOptions | None = None) -> Target:
    """The Target that runs ``plan`` (its ``target:`` key), imported only when chosen."""
    if plan.spec.target == "kubernetes":
        from vllm_fleet.targets.kubernetes.target import KubernetesTarget

        return KubernetesTarget(plan, options)
    from vllm_fleet.targets.local import LocalTarget

    return LocalTarget(plan, options)
