"""The PersistentVolume controller and a provisioner, one pass: bind claims, release volumes.

After ``pkg/controller/volume/persistentvolume/pv_controller.go`` and the external-provisioner:

- A claim of an ``Immediate`` StorageClass is provisioned and bound at once: a PV ``pvc-<uid>``
  (capacity from the request, the class's reclaimPolicy, a CSI source of the class's provisioner),
  the claim ``Bound`` with ``spec.volumeName``, event ``ProvisioningSucceeded``
  ``Successfully provisioned volume pvc-<uid>``.
- A claim of a ``WaitForFirstConsumer`` class stays Pending with the event ``WaitForFirstConsumer``
  ``waiting for first consumer to be created before binding`` until the scheduler has picked a node
  for a pod using it (annotation ``volume.kubernetes.io/selected-node``), then it is provisioned.
- A claim naming a class that does not exist: ``ProvisioningFailed`` ``storageclass.storage.k8s.io
  "x" not found``; a claim with no class (and no default class at its creation): ``FailedBinding``
  ``no persistent volumes available for this claim and no storage class is set``.
- A claim naming a PV in ``spec.volumeName`` binds to it if it exists (static provisioning).
- Protection finalizers (``pkg/controller/volume/pvcprotection``, ``pvprotection``): a deleted claim
  goes once no running pod uses it; its PV is then deleted (reclaimPolicy Delete) or Released.

Not modelled: matching claims to pre-existing unbound PVs by size and class, access-mode checks,
topology (the PV has no node affinity), expansion, snapshots.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import events
from .store import Store

COMPONENT = "persistentvolume-controller"


def _uses(pod: Mapping[str, Any], claim: str) -> bool:
    return any(
        (v.get("persistentVolumeClaim") or {}).get("claimName") == claim
        for v in (pod.get("spec") or {}).get("volumes") or ()
    )


def _drop_finalizer(store: Store, key: tuple[str, str], namespace: str, name: str, finalizer: str) -> None:
    def drop(obj: dict[str, Any]) -> None:
        fins = [f for f in obj["metadata"].get("finalizers") or () if f != finalizer]
        if fins:
            obj["metadata"]["finalizers"] = fins
        else:
            obj["metadata"].pop("finalizers", None)

    store.mutate(key, namespace, name, drop, manager=COMPONENT)


def sync_volumes(store: Store) -> None:
    """One pass over claims and volumes."""
    classes = {sc["metadata"]["name"]: sc for sc in store.objects(("storage.k8s.io", "storageclasses"))}
    pods = store.objects(("", "pods"))
    for pvc in store.objects(("", "persistentvolumeclaims")):
        meta, spec = pvc["metadata"], pvc.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        if meta.get("deletionTimestamp"):
            in_use = any(
                p["metadata"]["namespace"] == ns
                and _uses(p, name)
                and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                for p in pods
            )
            if not in_use:
                _drop_finalizer(store, ("", "persistentvolumeclaims"), ns, name, "kubernetes.io/pvc-protection")
            continue
        if (pvc.get("status") or {}).get("phase") == "Bound":
            continue
        if spec.get("volumeName"):
            pv = store.get(("", "persistentvolumes"), "", spec["volumeName"])
            if pv is not None:
                _bind(store, pvc, pv)
            continue
        class_name = spec.get("storageClassName")
        if not class_name:
            events.emit(
                store,
                pvc,
                "Normal",
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set",
                COMPONENT,
            )
            continue
        sc = classes.get(class_name)
        if sc is None:
            events.emit(
                store,
                pvc,
                "Warning",
                "ProvisioningFailed",
                f'storageclass.storage.k8s.io "{class_name}" not found',
                COMPONENT,
            )
            continue
        selected = (meta.get("annotations") or {}).get("volume.kubernetes.io/selected-node")
        if sc.get("volumeBindingMode") == "WaitForFirstConsumer" and not selected:
            events.emit(
                store,
                pvc,
                "Normal",
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
                COMPONENT,
            )
            continue
        pv = _provision(store, pvc, sc)
        _bind(store, pvc, pv)
    claims = {p["metadata"]["uid"] for p in store.objects(("", "persistentvolumeclaims"))}
    for pv in store.objects(("", "persistentvolumes")):
        meta, spec = pv["metadata"], pv.get("spec") or {}
        ref = spec.get("claimRef") or {}
        if meta.get("deletionTimestamp"):
            if not ref or ref.get("uid") not in claims:
                _drop_finalizer(store, ("", "persistentvolumes"), "", meta["name"], "kubernetes.io/pv-protection")
            continue
        if ref and ref.get("uid") not in claims and (pv.get("status") or {}).get("phase") == "Bound":
            if spec.get("persistentVolumeReclaimPolicy", "Delete") == "Delete":
                store.delete_as(("", "persistentvolumes"), "", meta["name"])
            else:

                def release(obj: dict[str, Any]) -> None:
                    obj.setdefault("status", {})["phase"] = "Released"

                store.mutate(("", "persistentvolumes"), "", meta["name"], release, manager=COMPONENT)


def _provision(store: Store, pvc: Mapping[str, Any], sc: Mapping[str, Any]) -> dict[str, Any]:
    meta, spec = pvc["metadata"], pvc.get("spec") or {}
    name = f"pvc-{meta['uid']}"
    existing = store.get(("", "persistentvolumes"), "", name)
    if existing is not None:
        return existing
    provisioner = sc.get("provisioner", "")
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": provisioner}},
        "spec": {
            "capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")},
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy", "Delete"),
            "storageClassName": sc["metadata"]["name"],
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "claimRef": {
                "kind": "PersistentVolumeClaim",
                "apiVersion": "v1",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "csi": {"driver": provisioner, "volumeHandle": f"vol-{meta['uid']}"},
        },
    }
    created = store.system_create(pv, manager=provisioner or COMPONENT)
    events.emit(
        store,
        pvc,
        "Normal",
        "ProvisioningSucceeded",
        f"Successfully provisioned volume {name}",
        provisioner or COMPONENT,
    )
    return created


def _bind(store: Store, pvc: Mapping[str, Any], pv: Mapping[str, Any]) -> None:
    pv_name = pv["metadata"]["name"]
    spec = pvc.get("spec") or {}

    def bind_pv(obj: dict[str, Any]) -> None:
        obj.setdefault("status", {})["phase"] = "Bound"

    def bind_claim(obj: dict[str, Any]) -> None:
        obj["spec"]["volumeName"] = pv_name
        obj["metadata"].setdefault("annotations", {}).update(
            {"pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"}
        )
        status = obj.setdefault("status", {})
        status["phase"] = "Bound"
        status["accessModes"] = list((pv.get("spec") or {}).get("accessModes") or spec.get("accessModes") or [])
        status["capacity"] = dict((pv.get("spec") or {}).get("capacity") or {})

    store.mutate(("", "persistentvolumes"), "", pv_name, bind_pv, manager=COMPONENT)
    store.mutate(
        ("", "persistentvolumeclaims"),
        pvc["metadata"]["namespace"],
        pvc["metadata"]["name"],
        bind_claim,
        manager=COMPONENT,
    )
