"""Server-side apply of a Plan's objects with field manager ``vllm-fleet``, pruning, and delete.

Objects go in dependency order and each carries the inventory annotation; the inventory
ConfigMap lists what was applied, so the next `up` prunes what it no longer renders and
`down` deletes exactly that. The weights claim is kept by both unless ``purge``: refilling a
cache of tens of GB costs more than the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.cluster.client import Cluster, ClusterError, errors
from vllm_fleet.targets.kubernetes.cluster.objects import (
    APPLY_ORDER,
    Obj,
    Ref,
    inventory_name,
    inventory_object,
    ordered,
    read_inventory,
    resource_class,
    to_resource,
    with_inventory,
)

Action = Literal["created", "configured", "unchanged", "pruned", "deleted", "kept", "absent"]


@dataclass(frozen=True)
class Applied:
    """What happened to one object."""

    ref: Ref
    action: Action

    def to_dict(self) -> dict[str, str | None]:
        return self.ref.to_dict() | {"action": self.action}


async def apply_plan(cluster: Cluster, plan: Plan, objects: list[Obj], *, force: bool = False) -> list[Applied]:
    """Apply ``objects``, record the inventory, prune what the previous `up` applied and this one did not."""
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import ConfigMap, Namespace

    ns = plan.spec.kubernetes.namespace
    done: list[Applied] = []
    if await cluster.get_or_none(Namespace, ns) is None:
        # Created when missing, never in the inventory: `down` must not delete a namespace others may share.
        with errors(cluster.server, f"creating namespace {ns}"):
            await cluster.client.apply(Namespace(metadata=ObjectMeta(name=ns)), force=force)
        done.append(Applied(Ref("v1", "Namespace", ns), "created"))
    previous = read_inventory(await cluster.get_or_none(ConfigMap, inventory_name(plan), namespace=ns))
    for obj in ordered(objects):
        done.append(await _apply_one(cluster, with_inventory(plan, obj), force))
    current = [Ref.of(o) for o in objects]
    kept = [r for r in previous if r not in current and r.kind == "PersistentVolumeClaim"]
    await _apply_one(cluster, inventory_object(plan, current + kept), force)
    for ref in _deletion_order([r for r in previous if r not in current and r not in kept]):
        done.append(Applied(ref, "pruned" if await delete(cluster, ref) else "absent"))
    return done


async def _apply_one(cluster: Cluster, obj: Obj, force: bool) -> Applied:
    ref = Ref.of(obj)
    before = await cluster.get_or_none(resource_class(ref), ref.name, namespace=ref.namespace)
    with errors(cluster.server, f"applying {ref}"):
        after = await cluster.client.apply(to_resource(obj), force=force)
    if before is None:
        return Applied(ref, "created")
    # An apply that changes nothing leaves the resourceVersion as it was (server-side apply is a no-op then).
    unchanged = before["metadata"].get("resourceVersion") == after.metadata.resourceVersion
    return Applied(ref, "unchanged" if unchanged else "configured")


async def delete(cluster: Cluster, ref: Ref) -> bool:
    """Delete ``ref`` and its dependents (background propagation); False when it was not there."""
    from lightkube.types import CascadeType

    try:
        with errors(cluster.server, f"deleting {ref}"):
            await cluster.client.delete(
                resource_class(ref), ref.name, namespace=ref.namespace, cascade=CascadeType.BACKGROUND
            )
    except ClusterError as exc:
        if exc.code == 404:
            return False
        raise
    return True


async def delete_plan(cluster: Cluster, plan: Plan, *, purge: bool = False) -> list[Applied]:
    """Delete what the inventory lists (the weights claim only with ``purge``), then the inventory itself."""
    from lightkube.resources.core_v1 import ConfigMap

    ns = plan.spec.kubernetes.namespace
    inventory = await cluster.get_or_none(ConfigMap, inventory_name(plan), namespace=ns)
    refs = read_inventory(inventory)
    done: list[Applied] = []
    kept = [] if purge else [r for r in refs if r.kind == "PersistentVolumeClaim"]
    for ref in _deletion_order([r for r in refs if r not in kept]):
        done.append(Applied(ref, "deleted" if await delete(cluster, ref) else "absent"))
    done += [Applied(r, "kept") for r in kept]
    if inventory is None:
        return done
    if kept:  # the inventory lists what stays, so a later `down --purge` still finds it
        await _apply_one(cluster, inventory_object(plan, kept), force=True)
    else:
        await delete(cluster, Ref("v1", "ConfigMap", inventory_name(plan), ns))
    return done


def _deletion_order(refs: list[Ref]) -> list[Ref]:
    """Dependents first: the reverse of the apply order."""
    rank = {kind: i for i, kind in enumerate(APPLY_ORDER)}
    return sorted(refs, key=lambda r: rank.get(r.kind, len(rank)), reverse=True)
