"""`vllm-fleet bake`: fill a disk with the model once, then image it into read-only disks per zone.

The pd-preloaded profile then mounts those disks ReadOnlyMany: no download at pod start.
The Job writes the same layout the pods read (``plan.derived['pod_model_dir']``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from vllm_fleet.errors import SpecError
from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.manifests.network import deny_ingress, service_account
from vllm_fleet.targets.kubernetes.manifests.objects import Obj
from vllm_fleet.targets.kubernetes.manifests.storage import claim, download_job


@dataclass(frozen=True)
class Bake:
    """The objects that fill the disk, and the commands that turn it into per-zone read-only disks."""

    objects: list[Obj]
    commands: list[str]


def bake(plan: Plan) -> Bake:
    """The bake Job and its PVC, then the gcloud commands for the image and the disks."""
    st, k8s = plan.spec.storage, plan.spec.kubernetes
    if st.profile != "pd-preloaded":
        raise SpecError(
            f"bake makes disks for storage.profile pd-preloaded, this spec uses {st.profile!r}",
            fix="set storage.profile: pd-preloaded (and storage.volume_handle for the disk it will create)",
        )
    name = f"{plan.name}-bake"
    pvc = claim(plan, name, "ReadWriteOnce")
    job = download_job(plan, name, {"name": "weights", "persistentVolumeClaim": {"claimName": name}})
    ns, image = shlex.quote(k8s.namespace), f"{plan.name}-weights"
    q = shlex.quote
    commands = [
        "kubectl apply -f bake.yaml",
        f"kubectl -n {ns} wait --for=condition=complete job/{name} --timeout=6h",
        f"PD=$(kubectl get pv \"$(kubectl -n {ns} get pvc {name} -o jsonpath='{{.spec.volumeName}}')\" "
        "-o jsonpath='{.spec.csi.volumeHandle}')",
        f"kubectl -n {ns} delete job/{name}  # detach the disk before imaging it",
        # volumeHandle is projects/P/zones/Z/disks/D: gcloud wants the disk name and its zone apart.
        f'gcloud compute images create {q(image)} --source-disk="${{PD##*/}}" '
        '--source-disk-zone="$(echo "$PD" | cut -d/ -f4)"',
    ]
    for zone in st.zones:
        disk = f"{image}-{zone}"
        commands.append(
            f"gcloud compute disks create {q(disk)} --zone={q(zone)} --image={q(image)} --type=pd-balanced "
            f"--size={st.size.removesuffix('Gi')}GB"
        )
        commands.append(f"# {zone}: storage.volume_handle: projects/PROJECT/zones/{zone}/disks/{disk}")
    commands.append(f"kubectl -n {ns} delete pvc/{name}")
    return Bake(objects=[service_account(plan), pvc, job, deny_ingress(plan, "stage")], commands=commands)
