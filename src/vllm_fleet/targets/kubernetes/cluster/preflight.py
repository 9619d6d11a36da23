"""Preflight: every check that can fail before anything is written, each one line with the fix.

Read-only throughout (GET, LIST, SelfSubjectAccessReview, and a server-side dry run that the
API server admits and validates but does not persist). Secrets are read for their key names
only; a value is never printed, logged or put in an error.
"""

from __future__ import annotations

from vllm_fleet.plan import Plan
from vllm_fleet.targets.base import Finding, Severity
from vllm_fleet.targets.kubernetes.cluster import rules
from vllm_fleet.targets.kubernetes.cluster.client import Cluster, ClusterError, errors
from vllm_fleet.targets.kubernetes.cluster.objects import (
    CLUSTER_SCOPED,
    Obj,
    Ref,
    crd_name,
    resource_class,
    to_resource,
    with_inventory,
)
from vllm_fleet.targets.kubernetes.manifests.objects import selector as engine_selector
from vllm_fleet.targets.kubernetes.manifests.platform import gpu_node_selector, gpu_tolerations

GPU = "nvidia.com/gpu"
NATIVE_SIDECARS = (1, 29)  # initContainers with restartPolicy: Always (KEP-753, beta and on by default in 1.29)
# Where cluster-autoscaler reports itself (its FAQ: "kubectl get configmap cluster-autoscaler-status -n kube-system").
AUTOSCALER_STATUS = ("kube-system", "cluster-autoscaler-status")
# The secret keys the pods read (manifests/objects.py secret_env).
SECRET_KEYS = {"hf_token": ("HF_TOKEN",), "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
# Verbs the lifecycle uses per resource: apply (get, patch), prune and down (delete), wait and status (list, watch).
_APPLIED_VERBS = ("get", "patch", "delete")
_READ_VERBS = ("get", "list", "watch")


async def preflight(cluster: Cluster, plan: Plan, objects: list[Obj], *, force: bool = False) -> list[Finding]:
    """Every check, in order; a failed connection stops the rest (nothing else can be checked).

    ``force``: the dry run takes fields other managers own, as `up --force-conflicts` will.
    """
    findings = [await _version(cluster, objects)]
    if findings[0].severity == "fail":
        return findings
    namespace = await _namespace(cluster, plan)
    findings += [namespace, await _permissions(cluster, plan, objects)]
    findings += await _crds(cluster, objects)
    findings.append(await _gpus(cluster, plan))
    findings += await _quota(cluster, plan)
    findings += await _storage(cluster, plan, objects)
    findings += await _secrets(cluster, plan)
    if not any(f.severity == "fail" and f.check == "crd" for f in findings):
        # The server refuses even a dry run into a namespace that does not exist yet (up creates it first).
        exists = namespace.severity == "pass"
        checked = [o for o in objects if exists or o["kind"] in CLUSTER_SCOPED]
        findings.append(await _dry_run(cluster, plan, checked, force))
    return findings


async def _namespace(cluster: Cluster, plan: Plan) -> Finding:
    from lightkube.resources.core_v1 import Namespace

    ns = plan.spec.kubernetes.namespace
    if await cluster.get_or_none(Namespace, ns) is None:
        return Finding("namespace", "warn", f"namespace {ns} does not exist: up creates it (and down leaves it)")
    return Finding("namespace", "pass", f"namespace {ns} exists")


async def _version(cluster: Cluster, objects: list[Obj]) -> Finding:
    try:
        major, minor, git = await cluster.version()
    except ClusterError as exc:
        return Finding("api", "fail", exc.message, exc.fix)
    if _uses_native_sidecars(objects) and (major, minor) < NATIVE_SIDECARS:
        return Finding(
            "api",
            "fail",
            f"{cluster.server} runs Kubernetes {git}; the prefetch sidecar is a native sidecar, which needs 1.29+",
            "upgrade the cluster to 1.29 or later, or set storage.prefetch: false",
        )
    return Finding("api", "pass", f"{cluster.server} (context {cluster.context}) runs Kubernetes {git}")


def _uses_native_sidecars(objects: list[Obj]) -> bool:
    return any(
        c.get("restartPolicy") == "Always"
        for o in objects
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"].get("initContainers", [])
    )


def _needed_access(plan: Plan, objects: list[Obj]) -> list[tuple[str, str, str, str | None]]:
    """(verb, group, plural, namespace) for every call up, status and down make."""
    ns = plan.spec.kubernetes.namespace
    needed = []
    kinds = {(Ref.of(o).group, o["kind"]) for o in objects} | {("", "ConfigMap")}  # the inventory
    for group, kind in sorted(kinds):
        plural = _plural(group, kind)
        scope = None if kind in CLUSTER_SCOPED else ns
        needed += [(verb, group, plural, scope) for verb in _APPLIED_VERBS]
    for group, plural in (("", "pods"), ("", "events"), ("apps", "deployments"), ("batch", "jobs")):
        needed += [(verb, group, plural, ns) for verb in _READ_VERBS]
    needed.append(("get", "", "pods/log", ns))
    needed += [(verb, "batch", "jobs", ns) for verb in ("patch", "delete")]  # the in-cluster verify Job
    needed.append(("create", "", "pods/portforward", ns))  # verify and bench reach the pods from here
    return needed


def _plural(group: str, kind: str) -> str:
    cls = resource_class(Ref(f"{group}/v1" if group else "v1", kind, "x"))
    return str(cls._api_info.plural)


async def _permissions(cluster: Cluster, plan: Plan, objects: list[Obj]) -> Finding:
    from lightkube.models.authorization_v1 import ResourceAttributes, SelfSubjectAccessReviewSpec
    from lightkube.resources.authorization_v1 import SelfSubjectAccessReview

    denied = []
    for verb, group, plural, namespace in _needed_access(plan, objects):
        resource, _, sub = plural.partition("/")
        review = SelfSubjectAccessReview(
            spec=SelfSubjectAccessReviewSpec(
                resourceAttributes=ResourceAttributes(
                    verb=verb, group=group, resource=resource, subresource=sub or None, namespace=namespace
                )
            )
        )
        try:
            with errors(cluster.server):
                answer = await cluster.client.create(review)
        except ClusterError as exc:
            return Finding("permissions", "fail", f"cannot ask the API server what we may do: {exc.message}", exc.fix)
        if not (answer.status and answer.status.allowed):
            denied.append(f"{verb} {plural}{'.' + group if group else ''}" + (f" in {namespace}" if namespace else ""))
    if denied:
        return Finding(
            "permissions",
            "fail",
            f"{len(denied)} permission(s) missing: {', '.join(denied[:6])}" + (" ..." if len(denied) > 6 else ""),
            "ask the cluster admin for a Role (or ClusterRole) granting them to your user",
        )
    return Finding("permissions", "pass", "every verb up, status and down use is allowed")


async def _crds(cluster: Cluster, objects: list[Obj]) -> list[Finding]:
    from lightkube.resources.apiextensions_v1 import CustomResourceDefinition

    findings = []
    for group, kind in sorted({(Ref.of(o).group, o["kind"]) for o in objects}):
        name = crd_name(group, kind)
        if name is None:
            continue
        if await cluster.get_or_none(CustomResourceDefinition, name) is None:
            findings.append(
                Finding(
                    "crd",
                    "fail",
                    f"{kind} is rendered but its CRD {name} is not installed",
                    f"install the CRD, or switch the feature off in the spec ({_feature_key(kind)})",
                )
            )
            continue
        findings.append(Finding("crd", "pass", f"{name} installed"))
    return findings


def _feature_key(kind: str) -> str:
    return {
        "PodMonitoring": "monitoring.scraper",
        "ServiceMonitor": "monitoring.scraper",
        "PrometheusRule": "monitoring.alerts",
        "Rules": "monitoring.alerts",
        "LeaderWorkerSet": "resources.nodes",
        "ScaledObject": "scaling.mode",
        "Gateway": "gateway.enabled",
        "HTTPRoute": "gateway.enabled",
        "HealthCheckPolicy": "gateway.enabled",
        "InferencePool": "gateway.mode",
    }.get(kind, "the key that renders it")


async def _gpus(cluster: Cluster, plan: Plan) -> Finding:
    from lightkube.resources.core_v1 import ConfigMap, Node, Pod

    res = plan.spec.resources
    if res.gpus == 0:
        return Finding("gpus", "pass", "the replicas ask for no GPU")
    nodes = await cluster.list_dicts(Node)
    ns, ours = plan.spec.kubernetes.namespace, engine_selector(plan)
    # This deployment's own pods are replaced (maxSurge 0), not added to: their GPUs count as free.
    pods = [p for p in await cluster.list_dicts(Pod, namespace="*") if not _is_ours(p, ns, ours)]
    selector, tolerations = gpu_node_selector(plan), gpu_tolerations(plan)
    fitting = [n for n in nodes if rules.node_fits(n, selector, tolerations)]
    free = rules.gpu_free(fitting, pods, GPU)
    slots = sum(count // res.gpus for count in free.values())
    want = plan.spec.replicas
    where = ", ".join(f"{k}={v}" for k, v in selector.items()) or "any node"
    if slots >= want:
        return Finding("gpus", "pass", f"{want} replica(s) x {res.gpus} GPU fit on {len(fitting)} node(s) ({where})")
    missing = (want - slots) * res.gpus
    short = (
        f"{missing} {res.gpu_type or 'GPU'} GPU(s) short: {slots} of {want} replica(s) fit "
        f"({where}; free per node: {free})"
    )
    if await cluster.get_or_none(ConfigMap, AUTOSCALER_STATUS[1], namespace=AUTOSCALER_STATUS[0]) is None:
        return Finding(
            "gpus", "fail", short, "add GPU nodes of that type (a node pool), or lower replicas / resources.gpus"
        )
    return Finding("gpus", "warn", f"{short}; cluster-autoscaler is present: up will wait for a scale-up", None)


def _is_ours(pod: Obj, namespace: str, labels: dict[str, str]) -> bool:
    meta = pod.get("metadata") or {}
    have = meta.get("labels") or {}
    return meta.get("namespace") == namespace and all(have.get(k) == v for k, v in labels.items())


async def _quota(cluster: Cluster, plan: Plan) -> list[Finding]:
    """ResourceQuota room for what the replicas request (GPUs, CPU, memory; the engine container's requests)."""
    from lightkube.resources.core_v1 import ResourceQuota

    ns, res, n = plan.spec.kubernetes.namespace, plan.spec.resources, plan.spec.replicas
    need = {  # quota key -> (what the replicas request, the spec key that sets it)
        f"requests.{GPU}": (rules.quantity(res.gpus) * n, "resources.gpus"),
        "requests.cpu": (rules.quantity(res.cpu) * n, "resources.cpu"),
        "requests.memory": (rules.quantity(res.memory) * n, "resources.memory"),
    }
    findings = []
    for quota in await cluster.list_dicts(ResourceQuota, namespace=ns):
        status, name = quota.get("status") or {}, quota["metadata"]["name"]
        for key, (amount, spec_key) in need.items():
            hard = (status.get("hard") or {}).get(key)
            if hard is None or not amount:
                continue
            room = rules.quantity(hard) - rules.quantity((status.get("used") or {}).get(key, "0"))
            if room < amount:
                detail = f"ResourceQuota {name}: {key} has room for {room:f}, the replicas request {amount:f}"
                fix = f"raise the quota in namespace {ns}, or lower replicas or {spec_key}"
                findings.append(Finding("quota", "fail", detail, fix))
            else:
                findings.append(Finding("quota", "pass", f"ResourceQuota {name}: {key} {room:f} free, need {amount:f}"))
    return findings


async def _storage(cluster: Cluster, plan: Plan, objects: list[Obj]) -> list[Finding]:
    from lightkube.resources.core_v1 import PersistentVolumeClaim
    from lightkube.resources.storage_v1 import StorageClass

    findings = []
    rendered = {o["metadata"]["name"] for o in objects if o["kind"] == "StorageClass"}
    for claim in (o for o in objects if o["kind"] == "PersistentVolumeClaim"):
        name = claim["metadata"]["name"]
        cls_name = claim["spec"].get("storageClassName")
        if cls_name and cls_name not in rendered:
            found = await cluster.get_or_none(StorageClass, cls_name)
            if found is None:
                findings.append(
                    Finding(
                        "storage",
                        "fail",
                        f"StorageClass {cls_name} (for claim {name}) does not exist",
                        "set storage.storage_class to one `kubectl get storageclass` lists",
                    )
                )
                continue
            mode = found.get("volumeBindingMode", "Immediate")
            findings.append(Finding("storage", "pass", f"StorageClass {cls_name} exists (binding {mode})"))
        existing = await cluster.get_or_none(PersistentVolumeClaim, name, namespace=claim["metadata"]["namespace"])
        if existing is None:
            continue  # up creates it
        phase = (existing.get("status") or {}).get("phase")
        severity: Severity = "pass" if phase == "Bound" else "warn"
        findings.append(
            Finding(
                "storage",
                severity,
                f"claim {name} exists ({phase})",
                None
                if phase == "Bound"
                else "a claim that stays Pending keeps the pods from starting: kubectl describe pvc",
            )
        )
    return findings


async def _secrets(cluster: Cluster, plan: Plan) -> list[Finding]:
    from lightkube.resources.core_v1 import Secret

    refs = plan.spec.kubernetes.secrets
    findings = []
    for field, keys in SECRET_KEYS.items():
        name = getattr(refs, field)
        if not name:
            continue
        secret = await cluster.get_or_none(Secret, name, namespace=plan.spec.kubernetes.namespace)
        if secret is None:
            findings.append(
                Finding(
                    "secrets",
                    "fail",
                    f"Secret {name} (kubernetes.secrets.{field}) does not exist",
                    f"kubectl -n {plan.spec.kubernetes.namespace} create secret generic {name} "
                    + " ".join(f"--from-literal={k}=..." for k in keys),
                )
            )
            continue
        present = set(secret.get("data") or {}) | set(secret.get("stringData") or {})  # key names; values never leave
        del secret
        if missing := [k for k in keys if k not in present]:
            findings.append(
                Finding(
                    "secrets",
                    "fail",
                    f"Secret {name} lacks key(s) {', '.join(missing)}",
                    f"add them: kubectl -n {plan.spec.kubernetes.namespace} edit secret {name}",
                )
            )
        else:
            findings.append(Finding("secrets", "pass", f"Secret {name} has {', '.join(keys)}"))
    return findings


async def _dry_run(cluster: Cluster, plan: Plan, objects: list[Obj], force: bool) -> Finding:
    """Server-side apply with dryRun=All: schema errors and admission webhooks answer, nothing is stored."""
    for obj in objects:
        try:
            with errors(cluster.server):
                await cluster.client.apply(to_resource(with_inventory(plan, obj)), force=force, dry_run=True)
        except ClusterError as exc:
            return Finding("dry-run", "fail", f"{Ref.of(obj)}: {exc.message}", exc.fix)
    return Finding("dry-run", "pass", f"{len(objects)} object(s) accepted by a server-side dry run")
