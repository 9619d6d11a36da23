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
from vllm_fleet.targets.kubernetes.manifests.platform import image_cache_selector
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


# The GKE disk image builder (github.com/ai-on-gke/tools, gke-disk-image-builder): pulls the images onto a
# disk and images it. The disk must hold the unpacked image; the vLLM CUDA image is ~10 GB unpacked.
DISK_IMAGE_BUILDER = "https://github.com/ai-on-gke/tools.git"
IMAGE_DISK_GB = 50


def bake_images(plan: Plan) -> Bake:
    """`bake --images` (issue 16): the commands that preload the spec's image on a secondary boot disk."""
    k8s, res = plan.spec.kubernetes, plan.spec.resources
    if not k8s.image_cache_disk:
        raise SpecError(
            "bake --images builds the disk image named by kubernetes.image_cache_disk, which this spec does not set",
            fix="set kubernetes.image_cache_disk: projects/PROJECT/global/images/NAME (and kubernetes.platform: gke)",
        )
    if k8s.platform != "gke":
        raise SpecError(
            f"secondary boot disks are a GKE feature, this spec's kubernetes.platform is {k8s.platform!r}",
            fix="set kubernetes.platform: gke, or drop kubernetes.image_cache_disk",
        )
    project, name = k8s.image_cache_disk.split("/")[1], k8s.image_cache_disk.rsplit("/", 1)[-1]
    zone = plan.spec.storage.zones[0] if plan.spec.storage.zones else "ZONE"
    q = shlex.quote
    pool = [
        "gcloud container node-pools create", q(f"{plan.name}-images"), "--cluster=CLUSTER", "--location=LOCATION",
        "--machine-type=MACHINE_TYPE", "--image-type=COS_CONTAINERD", "--enable-image-streaming",
    ]  # fmt: skip
    if res.gpus:
        accelerator = f"type={res.gpu_type or 'GPU_TYPE'},count={res.gpus},gpu-driver-version=latest"
        pool.append(f"--accelerator={q(accelerator)}")
    pool.append(f"--secondary-boot-disk=disk-image={q(k8s.image_cache_disk)},mode=CONTAINER_IMAGE_CACHE")
    ((key, value),) = image_cache_selector(plan).items()
    commands = [
        f"git clone {DISK_IMAGE_BUILDER} && cd tools/gke-disk-image-builder",
        f"go run ./cli --project-name={q(project)} --image-name={q(name)} --zone={q(zone)} "
        f"--gcs-path=gs://LOG_BUCKET --disk-size-gb={IMAGE_DISK_GB} --container-image={q(k8s.image)}",
        " ".join(pool),
        f"# the Deployment's nodeSelector (rendered, since kubernetes.image_cache_disk is set): {key}: {value}",
        f"# Autopilot or node auto-provisioning: allow the image with a GCPResourceAllowlist (node.gke.io/v1) "
        f"listing projects/{project}/global/images/{name}",
        "# a new kubernetes.image needs a new disk image and node pool: GKE does not update it on existing nodes",
    ]
    return Bake(objects=[], commands=commands)
