"""Storage profiles: how the weights reach the pod.

    pvc-init      a PVC (ReadWriteOnce by default) filled by an init container running `vllm-fleet stage`
    pd-preloaded  a pre-baked disk (`vllm-fleet bake`): static PV + PVC bound by volumeName, ReadOnlyMany
    nfs           NFS PV + PVC (ReadWriteMany) filled once by a Job; pods wait for its completion marker
    gcsfuse       the model's GCS prefix mounted by the GCS FUSE CSI driver (inline ephemeral volume)
    local-nvme    a node-local directory (hostPath) on NVMe nodes, filled by an init container

Each profile returns a :class:`StorageParts`; the workload builder puts them in
the pod. Paths come from the Plan (``pod_model_dir``), never re-derived here.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from vllm_fleet.errors import SpecError
from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.manifests.network import deny_ingress
from vllm_fleet.targets.kubernetes.manifests.objects import Obj, meta, pod_security, secret_env, tool_container
from vllm_fleet.weights.cache import MARKER, META_DIR

VOLUME = "weights"
# CSI drivers for disks, per platform (generic clusters name theirs in storage.csi_driver).
DISK_CSI = {"gke": "pd.csi.storage.gke.io", "digitalocean": "dobs.csi.digitalocean.com"}
# GKE labels nodes that have local NVMe SSDs as ephemeral storage or raw block devices.
GKE_LOCAL_NVME_LABEL = {"cloud.google.com/gke-local-nvme-ssd": "true"}


@dataclass
class StorageParts:
    """What a storage profile adds to the pod and to the manifests."""

    volumes: list[Obj]
    init_containers: list[Obj] = field(default_factory=list)
    objects: list[Obj] = field(default_factory=list)
    pod_annotations: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)


def storage_parts(plan: Plan) -> StorageParts:
    """The weights volume, its filler and its objects for the spec's storage profile."""
    profile = plan.spec.storage.profile
    return {
        "pvc-init": _pvc_init,
        "pd-preloaded": _pd_preloaded,
        "nfs": _nfs,
        "gcsfuse": _gcsfuse,
        "local-nvme": _local_nvme,
    }[profile](plan)


def model_dir(plan: Plan) -> str:
    """The model directory inside the pod."""
    return str(plan.derived["pod_model_dir"].value)


def weights_mount(plan: Plan, *, read_only: bool) -> Obj:
    return {"name": VOLUME, "mountPath": plan.spec.storage.mount_path, "readOnly": read_only}


def stage_container(plan: Plan) -> Obj:
    """`vllm-fleet stage SOURCE DIR`: resumable, verified, marker last; a no-op when the model is complete."""
    if plan.source.startswith("file://"):
        raise SpecError(
            f"model.source {plan.source} is a local path: a pod cannot read it",
            fix="use a gs://, s3://, hf:// or http(s):// source for the Kubernetes target",
        )
    command = ["vllm-fleet", "stage", plan.source, model_dir(plan)]
    if plan.spec.model.revision:
        command += ["--revision", plan.spec.model.revision]
    return tool_container(plan, "stage", command, [weights_mount(plan, read_only=False)], secret_env(plan))


def claim(plan: Plan, name: str, access_mode: str, *, volume_name: str | None = None) -> Obj:
    """A PersistentVolumeClaim: dynamic (storage_class or the default) or bound to a static PV."""
    spec: Obj = {"accessModes": [access_mode], "resources": {"requests": {"storage": plan.spec.storage.size}}}
    if volume_name is not None:
        spec["storageClassName"] = ""
        spec["volumeName"] = volume_name
    elif plan.spec.storage.storage_class:
        spec["storageClassName"] = plan.spec.storage.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(plan, name, "cache"), "spec": spec}


def _claim_volume(name: str) -> Obj:
    return {"name": VOLUME, "persistentVolumeClaim": {"claimName": name}}


def _access_mode(plan: Plan) -> str:
    return str(plan.derived["access_mode"].value)


def _pvc_init(plan: Plan) -> StorageParts:
    name = f"{plan.name}-cache"
    objects = [claim(plan, name, _access_mode(plan))]
    if plan.spec.storage.create_storage_class:
        objects.insert(0, _storage_class(plan))
    return StorageParts(volumes=[_claim_volume(name)], init_containers=[stage_container(plan)], objects=objects)


def _storage_class(plan: Plan) -> Obj:
    """GKE has no pd-ssd class by default (`standard-rwo` is pd-balanced): render the one the spec names."""
    st, platform = plan.spec.storage, plan.spec.kubernetes.platform
    driver = st.csi_driver or DISK_CSI.get(platform)
    if driver is None:
        raise SpecError("storage.create_storage_class on a generic cluster needs storage.csi_driver")
    parameters = {"type": st.disk_type} if driver == DISK_CSI["gke"] else {}
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": meta(plan, str(st.storage_class), "cache", namespaced=False),
        "provisioner": driver,
        "parameters": parameters,
        "reclaimPolicy": "Delete",
        "allowVolumeExpansion": True,
        "volumeBindingMode": "WaitForFirstConsumer",
    }


def _pd_preloaded(plan: Plan) -> StorageParts:
    st = plan.spec.storage
    name = f"{plan.name}-weights"
    driver = st.csi_driver or DISK_CSI.get(plan.spec.kubernetes.platform, DISK_CSI["gke"])
    pv_spec: Obj = {
        "capacity": {"storage": st.size},
        "accessModes": ["ReadOnlyMany"],
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": "",
        # Cloud disks default to read_ahead_kb=128; vLLM's mmap page faults then read in tiny pieces (issue 6).
        "mountOptions": [f"read_ahead_kb={st.read_ahead_kb}"],
        "csi": {"driver": driver, "volumeHandle": st.volume_handle, "fsType": "ext4", "readOnly": True},
    }
    zone = _zone_of(str(st.volume_handle))
    if zone:
        term = {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]}]}
        pv_spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [term]}}
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": meta(plan, name, "cache", namespaced=False),
        "spec": pv_spec,
    }
    return StorageParts(
        volumes=[_claim_volume(name)], objects=[pv, claim(plan, name, "ReadOnlyMany", volume_name=name)]
    )


def _zone_of(volume_handle: str) -> str | None:
    parts = volume_handle.split("/")
    return parts[parts.index("zones") + 1] if "zones" in parts[:-1] else None


def _nfs(plan: Plan) -> StorageParts:
    st = plan.spec.storage
    name = f"{plan.name}-nfs"
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": meta(plan, name, "cache", namespaced=False),
        "spec": {
            "capacity": {"storage": st.size},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "mountOptions": ["nfsvers=4.1", "hard"],
            "nfs": {"server": st.nfs_server, "path": st.nfs_path},
        },
    }
    job = download_job(plan, f"{plan.name}-download", _claim_volume(name))
    marker = f"{model_dir(plan)}/{META_DIR}/{MARKER}"
    # Wait for the marker the Job writes last; never race the Job by staging from every pod.
    wait = tool_container(
        plan,
        "wait-for-model",
        ["sh", "-c", f"until [ -f {shlex.quote(marker)} ]; do echo waiting for {shlex.quote(marker)}; sleep 5; done"],
        [weights_mount(plan, read_only=True)],
    )
    return StorageParts(
        volumes=[_claim_volume(name)],
        init_containers=[wait],
        objects=[pv, claim(plan, name, "ReadWriteMany", volume_name=name), job, deny_ingress(plan, "stage")],
    )


def download_job(plan: Plan, name: str, volume: Obj) -> Obj:
    """A Job that stages the model into ``volume`` once (used by nfs and by `vllm-fleet bake`)."""
    pod = {
        "serviceAccountName": plan.spec.kubernetes.service_account or plan.name,
        "automountServiceAccountToken": False,
        "restartPolicy": "OnFailure",
        "securityContext": pod_security(plan),
        "containers": [stage_container(plan)],
        "volumes": [volume, {"name": "tmp", "emptyDir": {}}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(plan, name, "stage"),
        "spec": {"backoffLimit": 6, "template": {"metadata": {"labels": meta(plan, name, "stage")["labels"]},
                                                 "spec": pod}},
    }  # fmt: skip


def _gcsfuse(plan: Plan) -> StorageParts:
    st = plan.spec.storage
    bucket, _, prefix = plan.source.removeprefix("gs://").partition("/")
    options = ["implicit-dirs", "metadata-cache:ttl-secs:-1", "metadata-cache:stat-cache-max-size-mb:-1"]
    if prefix.strip("/"):
        options.insert(0, f"only-dir={prefix.strip('/')}")
    attributes = {"bucketName": bucket, "mountOptions": ",".join(options)}
    volumes: list[Obj] = []
    if st.file_cache_gib:
        # Parallel downloads fill the file cache with many concurrent range reads per file: the fast path.
        attributes["mountOptions"] += (
            ",file-cache:enable-parallel-downloads:true,file-cache:cache-file-for-range-read:true"
        )
        attributes["fileCacheCapacity"] = f"{st.file_cache_gib}Gi"
        volumes.append({"name": "gke-gcsfuse-cache", "emptyDir": {"sizeLimit": f"{st.file_cache_gib}Gi"}})
    volumes.insert(0, {"name": VOLUME, "csi": {"driver": "gcsfuse.csi.storage.gke.io", "readOnly": True,
                                               "volumeAttributes": attributes}})  # fmt: skip
    annotations = {
        "gke-gcsfuse/volumes": "true",
        # 0 = no limit on the injected sidecar: a limited one throttles the download.
        "gke-gcsfuse/cpu-limit": "0",
        "gke-gcsfuse/memory-limit": "0",
        "gke-gcsfuse/ephemeral-storage-limit": "0",
    }
    return StorageParts(volumes=volumes, pod_annotations=annotations)


def _local_nvme(plan: Plan) -> StorageParts:
    st = plan.spec.storage
    nodes = dict(st.node_labels) or (GKE_LOCAL_NVME_LABEL if plan.spec.kubernetes.platform == "gke" else {})
    if not nodes:
        raise SpecError(
            "storage.profile local-nvme needs to know which nodes have NVMe",
            fix="set storage.node_labels (e.g. {node.kubernetes.io/instance-type: ...}) to labels of those nodes",
        )
    # The directory must be writable by kubernetes.run_as_user (fsGroup does not apply to hostPath).
    volume = {"name": VOLUME, "hostPath": {"path": st.host_path, "type": "DirectoryOrCreate"}}
    return StorageParts(volumes=[volume], init_containers=[stage_container(plan)], node_selector=nodes)
