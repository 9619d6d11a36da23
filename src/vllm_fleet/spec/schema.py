"""The spec's schema: what a person may write, each field with its meaning and bounds.

Models are strict (unknown keys are errors) and frozen. Cross-field rules that a
person can fix in the spec live here as validators; what needs the model's files
or the machine lives in the Plan.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vllm_fleet.versions import DEFAULT_IMAGE, EPP_IMAGE
from vllm_fleet.weights.sources import SCHEMES

# The one list of schemes is the sources registry (the spec must accept exactly what stage can open).
SOURCE_SCHEMES = tuple(SCHEMES)
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelShape(_Strict):
    """Attention shape for the KV cache estimate (read from config.json when the source is local)."""

    layers: int = Field(gt=0, description="num_hidden_layers")
    kv_heads: int = Field(gt=0, description="num_key_value_heads")
    head_dim: int = Field(gt=0, description="hidden_size / num_attention_heads")


class ModelSpec(_Strict):
    """Which weights to serve and under what name."""

    source: str = Field(description="URI of the weights: file:// (or a path), s3://, gs://, hf://, http(s)://")
    served_name: str | None = Field(None, description="name clients pass as `model` (default: spec name)")
    revision: str | None = Field(None, description="source revision (hf:// branch/commit)")
    size_gb: float | None = Field(None, gt=0, description="weights size when it cannot be measured yet")
    parameters_b: float | None = Field(None, gt=0, description="parameter count in billions, for the GPU fit")
    shape: ModelShape | None = Field(None, description="for the KV cache estimate when config.json is not local")

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else "file"
        if scheme not in SOURCE_SCHEMES:
            raise ValueError(
                f"unknown source scheme {scheme!r}; use one of {', '.join(s + '://' for s in SOURCE_SCHEMES)}"
            )
        if "://" in value and not value.split("://", 1)[1]:
            raise ValueError("source has a scheme but no location")
        return value


class EngineSpec(_Strict):
    """vLLM engine settings; they map one-to-one onto vLLM flags."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: int = Field(2048, gt=0)
    max_num_seqs: int = Field(16, gt=0)
    tensor_parallel_size: int = Field(1, gt=0)
    pipeline_parallel_size: int = Field(1, gt=0, description="pipeline stages (across nodes with resources.nodes)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enforce_eager: bool = True
    enable_prefix_caching: bool | None = None
    kv_cache_space_gib: int = Field(1, gt=0, description="CPU build only: VLLM_CPU_KVCACHE_SPACE")
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


class ResourcesSpec(_Strict):
    """What one replica needs from its node."""

    gpus: int = Field(0, ge=0, description="GPUs per node (per pod)")
    nodes: int = Field(
        1, gt=0, description="nodes one replica spans: > 1 renders a LeaderWorkerSet (vLLM on Ray), gpus per node"
    )
    gpu_type: str | None = Field(None, description="e.g. nvidia-l4, nvidia-h100-80gb")
    cpu: str = "4"
    memory: str = "16Gi"


class LocalSpec(_Strict):
    """Local target: vLLM processes on this machine."""

    host: str = "127.0.0.1"
    base_port: int = Field(8000, gt=0, lt=65536)
    start_timeout_s: float = Field(600, gt=0)
    prefetch: bool = True
    supervise: bool = Field(True, description="a background supervisor restarts a crashed replica, with backoff")
    surge: Literal["auto", 0, 1] = Field(
        "auto",
        description="extra replicas a rolling restart runs: 1 starts each replacement before its old replica is "
        "drained; 0 drains and stops the old one first (the Kubernetes Deployment's maxSurge 0, for a machine "
        "with room for only `replicas` engines); auto: 1 when free memory holds one more replica, else 0",
    )


class SLOSpec(_Strict):
    """The promise verify checks: p95 latency of a chat completion, unloaded or at a request rate."""

    p95_latency_s: float = Field(3.0, gt=0)
    requests: int = Field(20, gt=0)
    max_tokens: int = Field(32, gt=0)
    rate: float | None = Field(
        None,
        gt=0,
        description="requests/s the promise holds at: verify loads at this rate (open loop); unset: "
        "one request after another on an idle server",
    )


class CacheSpec(_Strict):
    """Where staged weights live (the local target's cache root)."""

    dir: str = ".cache/vllm-fleet"


class AvailabilitySpec(_Strict):
    """How a replica leaves without dropping requests."""

    drain_timeout_s: int = Field(120, gt=0)
    shutdown_timeout_s: int = Field(
        30,
        ge=0,
        description="vLLM's own graceful shutdown (--shutdown-timeout) after the preStop drain: in-flight "
        "requests that arrived during the drain may finish; 0 aborts them",
    )
    pod_disruption_budget: bool = Field(True, description="Kubernetes: a PDB (maxUnavailable 1) when replicas > 1")


STORAGE_PROFILES = ("pvc-init", "pd-preloaded", "nfs", "gcsfuse", "local-nvme")
GPU_PLATFORMS = ("gke", "digitalocean", "generic")


class StorageSpec(_Strict):
    """Kubernetes: how the weights reach the pod (one of the reference storage profiles)."""

    profile: Literal["pvc-init", "pd-preloaded", "nfs", "gcsfuse", "local-nvme"] = "pvc-init"
    mount_path: str = Field("/cache", pattern=r"^/[^\s:]*$", description="where the weights volume is mounted")
    size: str = Field("100Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$", description="volume size (PVC / PV)")
    storage_class: str | None = Field(None, description="existing StorageClass for the PVC (default: the cluster's)")
    create_storage_class: bool = Field(False, description="pvc-init: render a StorageClass named storage_class")
    disk_type: str = Field("pd-ssd", description="type parameter of a rendered StorageClass (GKE: pd-ssd, pd-balanced)")
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"] | None = None
    read_bandwidth_mb_s: float | None = Field(None, gt=0, description="measured read MB/s (probe-storage)")
    read_ahead_kb: int = Field(4096, gt=0, description="pd-preloaded: read_ahead_kb mount option")
    volume_handle: str | None = Field(None, description="pd-preloaded: CSI volumeHandle projects/P/zones/Z/disks/D")
    csi_driver: str | None = Field(None, description="CSI driver of disks (default: the platform's)")
    zones: list[str] = Field(default_factory=list, description="pd-preloaded: zones that get a read-only disk")
    nfs_server: str | None = Field(None, description="nfs: server address")
    nfs_path: str = Field("/", description="nfs: exported path")
    host_path: str = Field("/mnt/disks/ssd0/vllm-fleet", description="local-nvme: cache directory on the node")
    node_labels: dict[str, str] = Field(default_factory=dict, description="local-nvme: labels of nodes with NVMe")
    file_cache_gib: int = Field(0, ge=0, description="gcsfuse: file cache size (0: no file cache)")
    prefetch: bool = Field(True, description="run `vllm-fleet prefetch` as a native sidecar")

    @model_validator(mode="after")
    def _profile_needs(self) -> StorageSpec:
        needs = {"pd-preloaded": ("volume_handle",), "nfs": ("nfs_server",)}.get(self.profile, ())
        for key in needs:
            if getattr(self, key) is None:
                raise ValueError(f"storage.profile {self.profile!r} needs storage.{key}; set it")
        if self.create_storage_class and not self.storage_class:
            raise ValueError("storage.create_storage_class needs storage.storage_class (the name to create)")
        return self


class SecretRefs(_Strict):
    """Names of Kubernetes Secrets the pods read; values never appear in a spec or a manifest."""

    hf_token: str | None = Field(None, description="Secret with key HF_TOKEN")
    s3: str | None = Field(None, description="Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    registry: str | None = Field(None, description="Secret with key VLLM_FLEET_REGISTRY: the router's registry URL")


class KubernetesSpec(_Strict):
    """Kubernetes target: where and how the manifests run."""

    namespace: str = "default"
    image: str = Field(
        DEFAULT_IMAGE,
        description="image with vLLM and vllm-fleet (the Dockerfile): engine, stage, prefetch, drain; its vLLM "
        "should be vllm_fleet.versions.VLLM_VERSION",
    )
    platform: Literal["gke", "digitalocean", "generic"] = "generic"
    gpu_node_selector: dict[str, str] | None = Field(None, description="replaces the platform's GPU node labels")
    service_account: str | None = Field(None, description="render this ServiceAccount and run the pods as it")
    gcp_service_account: str | None = Field(None, description="GKE Workload Identity: the IAM service account")
    secrets: SecretRefs = SecretRefs()
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (DigitalOcean Spaces, MinIO)")
    image_cache_disk: str | None = Field(
        None,
        pattern=r"^projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/global/images/[a-z]([-a-z0-9]{0,37}[a-z0-9])?$",
        description="GKE: a secondary boot disk image preloaded with kubernetes.image, as "
        "projects/PROJECT/global/images/NAME, NAME at most 39 characters (it ends a node label's 63-character "
        "name); `vllm-fleet bake SPEC --images` builds it; the pods then run on node pools that carry it",
    )
    run_as_user: int = Field(10001, gt=0, description="non-root uid of every container")
    startup_timeout_s: int | None = Field(None, gt=0, description="override the derived startup probe budget")
    port: int = Field(8000, gt=0, lt=65536)
    allowed_namespaces: list[str] = Field(default_factory=list, description="NetworkPolicy: namespaces let in")
    allowed_cidrs: list[str] = Field(default_factory=list, description="NetworkPolicy: CIDRs let in (LB proxies)")

    @field_validator("namespace", "service_account")
    @classmethod
    def _dns_label(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 63 or not _K8S_NAME.match(value)):
            raise ValueError(f"{value!r} is not a valid Kubernetes name (lowercase letters, digits, '-')")
        return value


SCALING_METRICS = ("waiting", "running", "gpu-utilization")


class ScalingSpec(_Strict):
    """Autoscaling on vLLM's queue depth (vllm:num_requests_waiting), batch size or GPU utilisation."""

    mode: Literal["none", "hpa", "keda", "gke"] = "none"
    metric: Literal["waiting", "running", "gpu-utilization"] = Field(
        "waiting",
        description="waiting: vllm:num_requests_waiting (queue depth); running: vllm:num_requests_running "
        "(batch size); gpu-utilization: DCGM_FI_DEV_GPU_UTIL (gke: the accelerator duty cycle)",
    )
    min_replicas: int = Field(1, gt=0)
    max_replicas: int = Field(1, gt=0)
    target_waiting: float = Field(5, gt=0, description="average waiting requests per replica to aim for")
    target: float | None = Field(
        None,
        gt=0,
        description="per-replica target of scaling.metric (default: target_waiting; running: 3/4 of "
        "engine.max_num_seqs; gpu-utilization: 80 % per GPU)",
    )
    scale_up_window_s: int = Field(0, ge=0, le=3600)
    scale_down_window_s: int = Field(300, ge=0, le=3600)
    prometheus_url: str = Field(
        "http://prometheus-operated.monitoring.svc:9090", description="keda: the Prometheus to query"
    )

    @model_validator(mode="after")
    def _bounds(self) -> ScalingSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"scaling.max_replicas={self.max_replicas} is below min_replicas={self.min_replicas}; raise it"
            )
        return self


class GatewaySpec(_Strict):
    """Optional Gateway API Gateway + HTTPRoute in front of the Service, or of an InferencePool."""

    enabled: bool = False
    class_name: str = Field("gke-l7-regional-external-managed", description="GatewayClass to use")
    hostname: str | None = None
    port: int = Field(80, gt=0, lt=65536)
    mode: Literal["service", "inference-pool"] = Field(
        "service",
        description="service: the HTTPRoute sends to the Service (the router, or the engines); inference-pool: "
        "to an InferencePool of the engine pods whose endpoint picker chooses the replica (Gateway API Inference "
        "Extension: the gateway must implement it; needs router.enabled false)",
    )
    epp_image: str = Field(EPP_IMAGE, description="inference-pool: the endpoint picker's image")
    epp_failure_mode: Literal["FailOpen", "FailClose"] = Field(
        "FailOpen",
        description="inference-pool: when the endpoint picker does not answer, the gateway picks a pod itself "
        "(FailOpen) or rejects the request (FailClose)",
    )


ROUTER_POLICIES = ("prefix", "least-load", "round-robin", "session")


class RouterSpec(_Strict):
    """The router: one OpenAI-compatible endpoint in front of every replica."""

    enabled: bool = Field(
        True,
        description="local: the router serves local.base_port, the replicas sit on the ports above it; "
        "kubernetes: a router Deployment behind the Service. false: replicas served directly",
    )
    policy: Literal["prefix", "least-load", "round-robin", "session"] = Field(
        "prefix", description="prefix: prefix affinity with bounded load (the default)"
    )
    replicas: int = Field(2, gt=0, description="kubernetes: router pods")
    retries: int = Field(2, ge=0, le=10, description="other backends tried before the first response byte")
    registry: str | None = Field(
        None,
        description="sqlite:///PATH or postgresql://USER@HOST/DB (default: sqlite under cache.dir); a password "
        "comes from the environment (VLLM_FLEET_REGISTRY) or kubernetes.secrets.registry, never the spec",
    )

    @field_validator("registry")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        if value and urlsplit(value).password:
            raise ValueError(
                "router.registry carries a password, which would end up in manifests and logs; put the whole URL "
                "in VLLM_FLEET_REGISTRY (local) or a Secret named by kubernetes.secrets.registry (key "
                "VLLM_FLEET_REGISTRY), and drop router.registry"
            )
        return value


class MonitoringSpec(_Strict):
    """How Prometheus scrapes vLLM's /metrics, and the Grafana dashboard."""

    scraper: Literal["podmonitoring", "servicemonitor", "none"] = "podmonitoring"
    interval_s: int = Field(15, gt=0)
    dashboard: bool = True
    alerts: bool = Field(True, description="PrometheusRule (servicemonitor) or Rules (podmonitoring) beside it")


class FleetSpec(_Strict):
    """A whole deployment: one model, its engine, where it runs and what it promises."""

    name: str
    model: ModelSpec
    target: Literal["local", "kubernetes"] = "local"
    replicas: int = Field(1, gt=0)
    engine: EngineSpec = EngineSpec()
    resources: ResourcesSpec = ResourcesSpec()
    cache: CacheSpec = CacheSpec()
    local: LocalSpec = LocalSpec()
    slo: SLOSpec = SLOSpec()
    availability: AvailabilitySpec = AvailabilitySpec()
    storage: StorageSpec = StorageSpec()
    kubernetes: KubernetesSpec = KubernetesSpec()
    scaling: ScalingSpec = ScalingSpec()
    gateway: GatewaySpec = GatewaySpec()
    router: RouterSpec = RouterSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    environments: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @property
    def served_name(self) -> str:
        """What clients pass as ``model``."""
        return self.model.served_name or self.name

    @field_validator("name")
    @classmethod
    def _k8s_name(cls, value: str) -> str:
        if len(value) > 63 or not _K8S_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a valid Kubernetes name: use at most 63 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _parallel_fits_nodes(self) -> FleetSpec:
        """tensor x pipeline parallel = GPUs per node x nodes, evenly (issue 16)."""
        eng, res = self.engine, self.resources
        world, nodes = eng.tensor_parallel_size * eng.pipeline_parallel_size, res.nodes
        if nodes == 1:
            return self
        if self.target != "kubernetes":
            raise ValueError(f"resources.nodes={nodes} spans several nodes: only target kubernetes can; set it")
        if world % nodes:
            raise ValueError(
                f"engine.tensor_parallel_size x engine.pipeline_parallel_size = {world} GPUs do not divide evenly "
                f"over resources.nodes={nodes}; make the product a multiple of resources.nodes"
            )
        if res.gpus != world // nodes:
            raise ValueError(
                f"resources.gpus={res.gpus} per node but engine.tensor_parallel_size x "
                f"engine.pipeline_parallel_size / resources.nodes = {world} / {nodes} = {world // nodes}; "
                f"set resources.gpus: {world // nodes}"
            )
        return self

    @model_validator(mode="after")
    def _one_picker(self) -> FleetSpec:
        """The endpoint picker chooses the replica: a router behind it would choose again (issue 16)."""
        gw = self.gateway
        if gw.enabled and gw.mode == "inference-pool" and self.router.enabled:
            raise ValueError(
                "gateway.mode 'inference-pool' lets the endpoint picker choose the replica, but router.enabled is "
                "true (the router would choose again, and the gateway could not reach the engines); set "
                "router.enabled: false, or gateway.mode: service to keep the router"
            )
        return self

    @model_validator(mode="after")
    def _tp_fits_gpus(self) -> FleetSpec:
        tp, pp = self.engine.tensor_parallel_size, self.engine.pipeline_parallel_size
        if self.resources.nodes == 1 and tp * pp > 1 and tp * pp > self.resources.gpus:
            what = f"engine.tensor_parallel_size={tp}" + (f" x engine.pipeline_parallel_size={pp}" if pp > 1 else "")
            raise ValueError(
                f"{what} needs {tp * pp} GPUs but resources.gpus={self.resources.gpus}; "
                f"set resources.gpus to at least {tp * pp} (or resources.nodes to spread them over nodes)"
            )
        return self

    @model_validator(mode="after")
    def _gpu_metric_needs_gpus(self) -> FleetSpec:
        if self.scaling.metric == "gpu-utilization" and self.resources.gpus == 0:
            raise ValueError(
                "scaling.metric 'gpu-utilization' needs GPUs but resources.gpus=0; set resources.gpus or use "
                "scaling.metric waiting or running"
            )
        if self.scaling.metric == "gpu-utilization" and self.scaling.target and self.scaling.target > 100:
            raise ValueError(f"scaling.target={self.scaling.target:g} is a GPU utilisation in %: use 1..100")
        return self

    @model_validator(mode="after")
    def _storage_fits_source(self) -> FleetSpec:
        if self.storage.profile == "gcsfuse" and not self.model.source.startswith("gs://"):
            raise ValueError(
                f"storage.profile 'gcsfuse' mounts a GCS bucket but model.source is {self.model.source!r}; "
                "use a gs://BUCKET/PATH source or another storage.profile"
            )
        return self
