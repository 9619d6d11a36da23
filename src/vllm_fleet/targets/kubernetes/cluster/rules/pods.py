"""pod_problem: a pod that waiting will not fix fails the wait at once; one that waiting may fix says so."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from vllm_fleet.targets.kubernetes.cluster.rules.base import (
    _MESSAGE_LIMIT,
    Obj,
    PodProblem,
    _aware,
    _conditions,
    _container_statuses,
    _get,
    _int,
    _list,
    _one_line,
    _parse_time,
    _terminated_summary,
    _waiting_reason,
)

# ---------------------------------------------------------------------------------------------
# pod_problem: containers


def _container_spec(pod: Obj, name: str) -> Obj:
    for container in _list(pod, "spec.initContainers") + _list(pod, "spec.containers"):
        if container.get("name") == name:
            return container
    return {}


def pod_problem(
    pod: Obj, events: list[Obj], *, now: datetime, unschedulable_grace_s: float = 60.0
) -> PodProblem | None:
    """What keeps ``pod`` from coming up, or None while it is on its way.

    ``events`` may be the namespace's (core v1 or events.k8s.io/v1); those about other objects
    are ignored. An unschedulable pod is a problem only ``unschedulable_grace_s`` after the
    scheduler said so, which gives the autoscaler time to react and leave its event.
    """
    if _get(pod, "metadata.deletionTimestamp") or _get(pod, "status.phase") == "Succeeded":
        return None  # going away (a rollout, a scale-down) or done: neither is a failure
    if _get(pod, "status.phase") == "Failed":
        return _failed_pod(pod)
    mine, now = _events_about(pod, events), _aware(now)
    return (
        _container_problem(pod, mine)
        or _volume_problem(pod, mine, now, unschedulable_grace_s)
        or _scheduling_problem(pod, mine, now, unschedulable_grace_s)
    )


def _container_problem(pod: Obj, events: list[_Event]) -> PodProblem | None:
    for status in _container_statuses(pod):
        reason = _waiting_reason(status)
        if reason == "CrashLoopBackOff":
            return _crash_loop(pod, status, events)
        if reason in ("ErrImagePull", "ImagePullBackOff"):
            return _pull_error(pod, status, events)
        if reason == "InvalidImageName":
            image = status.get("image") or _container_spec(pod, status.get("name", "")).get("image", "")
            message = _get(status, "state.waiting.message") or f"{image!r} is not a valid image reference"
            return _problem(pod, status, reason, message, False, "kubernetes.image: write a valid image reference")
        if reason == "CreateContainerConfigError":
            return _config_error(pod, status)
        if reason in ("CreateContainerError", "RunContainerError"):
            return _start_error(pod, status, reason)
    return None


def _problem(pod: Obj, status: Obj, reason: str, message: str, retryable: bool, fix: str) -> PodProblem:
    return PodProblem(
        pod=str(_get(pod, "metadata.name", "")),
        container=status.get("name"),
        reason=reason,
        message=_one_line(message),
        retryable=retryable,
        fix=_one_line(fix),
    )


# Exit codes above 128 are 128 + the signal that ended the process.
_SIGNALS = {134: "SIGABRT", 137: "SIGKILL", 139: "SIGSEGV", 143: "SIGTERM"}


def _crash_loop(pod: Obj, status: Obj, events: list[_Event]) -> PodProblem:
    """The kubelet backs off restarting a container that keeps exiting (pkg/kubelet/kuberuntime:
    "back-off 5m0s restarting failed container=vllm pod=..."); the last termination says why."""
    name = str(status.get("name", ""))
    term = _get(status, "lastState.terminated", {})
    code, why = term.get("exitCode"), term.get("reason") or "Error"
    signal = f", {_SIGNALS[code]}" if code in _SIGNALS else ""
    restarts = _int(status, "restartCount")
    message = f"container {name} keeps crashing ({restarts} restarts): last exit code {code} ({why}{signal})"
    last_words = _last_line(term.get("message", ""))
    if last_words:
        message += f": {last_words}"
    if why == "OOMKilled":
        return _problem(pod, status, "OOMKilled", message, False, _oom_fix(pod))
    probe = _probe_kill(events, name)
    if probe:
        message += f"; the kubelet killed it: {probe}"
        fix = (
            "the engine did not answer /health in time: raise kubernetes.startup_timeout_s (large models load slowly)"
            if "startup" in probe
            else f"the engine stopped answering /health: kubectl logs {_pod_ref(pod)} -c {name} --previous"
        )
        return _problem(pod, status, "CrashLoopBackOff", message, False, fix)
    if why in ("StartError", "ContainerCannotRun") or code == 128:
        return _problem(
            pod, status, "CrashLoopBackOff", message, False, "kubernetes.image: the command cannot start in this image"
        )
    settings = "router.* or kubernetes.*" if _is_router(pod) else "engine.* or model.*"
    fix = f"read why: kubectl logs {_pod_ref(pod)} -c {name} --previous; then fix the {settings} it names"
    return _problem(pod, status, "CrashLoopBackOff", message, False, fix)


def _is_router(pod: Obj) -> bool:
    """A router pod (the same rules judge it; only the settings a fix names differ)."""
    return (_get(pod, "metadata.labels") or {}).get("app.kubernetes.io/component") == "router"


def _oom_fix(pod: Obj) -> str:
    if _is_router(pod):
        # its limit is fixed by the manifest (manifests/router.py), not the spec: spread the load instead
        return "the router ran out of its memory limit: raise router.replicas to spread the connections"
    return "it ran out of memory: raise resources.memory, or lower engine.max_num_seqs or engine.max_model_len"


def _last_line(text: str) -> str:
    """The last non-empty line of a termination message (with FallbackToLogsOnError, the log's tail)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return _one_line(lines[-1], 200) if lines else ""


def _probe_kill(events: list[_Event], container: str) -> str:
    """The kubelet's "Container vllm failed startup probe, will be restarted" (reason Killing), if any."""
    for event in reversed(events):
        if event.reason == "Killing" and event.about_container(container) and "probe" in event.message:
            return event.message
    return ""


def _pod_ref(pod: Obj) -> str:
    return f"{_get(pod, 'metadata.name', '')} -n {_get(pod, 'metadata.namespace', 'default')}"


# What registries answer for an image or tag that does not exist: containerd "…: not found" /
# "code = NotFound", the distribution API "manifest unknown" / "name unknown", Docker Hub
# "repository does not exist or may require 'docker login'".
_IMAGE_MISSING = ("not found", "code = notfound", "manifest unknown", "name unknown", "repository does not exist")
_PULL_DENIED = ("unauthorized", "authentication required", "403 forbidden", "access denied", "denied:")
_RATE_LIMITED = ("toomanyrequests", "429 too many requests", "rate limit")


def _pull_error(pod: Obj, status: Obj, events: list[_Event]) -> PodProblem:
    """ErrImagePull / ImagePullBackOff, judged on the registry's words (pkg/kubelet/images/image_manager.go:
    event "Failed to pull image %q: %v", reason Failed; "Back-off pulling image %q", reason BackOff)."""
    name = str(status.get("name", ""))
    image = status.get("image") or _container_spec(pod, name).get("image", "")
    reason = _waiting_reason(status)
    detail = _pull_detail(status, events, name)
    text = detail.lower()
    message = f"cannot pull {image}: {detail}"
    if any(marker in text for marker in _IMAGE_MISSING):
        fix = f"kubernetes.image: {image} does not exist (check the repository and tag), or the nodes may not read it"
        return _problem(pod, status, reason, message, False, fix)
    if any(marker in text for marker in _PULL_DENIED):
        fix = "the registry refused the nodes: make the image public or give the service account an imagePullSecret"
        return _problem(pod, status, reason, message, False, f"{fix} (kubernetes.image names it)")
    if any(marker in text for marker in _RATE_LIMITED):
        fix = "the registry is rate-limiting pulls: it is retried; authenticate pulls or mirror kubernetes.image"
        return _problem(pod, status, reason, message, True, fix)
    fix = "a transient pull failure (network, registry): it is retried; if it persists check the nodes' egress"
    return _problem(pod, status, reason, message, True, fix)


def _pull_detail(status: Obj, events: list[_Event], container: str) -> str:
    """The most telling text: the newest "Failed to pull image" event, else the waiting message."""
    for event in reversed(events):
        # Skip the kubelet's "Error: ErrImagePull" (reason Failed too): it repeats the reason only.
        about = event.reason == "Failed" and event.about_container(container) and "pull" in event.message.lower()
        if about and not event.message.startswith("Error: "):
            return event.message
    return str(_get(status, "state.waiting.message", "")) or "the kubelet gave no detail"


_SECRET_MISSING = re.compile(r'secrets? "(?P<name>[^"]+)" not found')
_SECRET_KEY_MISSING = re.compile(r"couldn't find key (?P<key>\S+) in Secret (?P<ns>[^/\s]+)/(?P<name>\S+)", re.I)
_CONFIGMAP_MISSING = re.compile(r'configmaps? "(?P<name>[^"]+)" not found', re.I)
_CONFIGMAP_KEY_MISSING = re.compile(r"couldn't find key (?P<key>\S+) in ConfigMap (?P<ns>[^/\s]+)/(?P<name>\S+)", re.I)
# Environment variables our manifests read from each spec'd Secret (manifests/objects.py).
_SECRET_KEYS = {"HF_TOKEN": "kubernetes.secrets.hf_token", "AWS_ACCESS_KEY_ID": "kubernetes.secrets.s3"}
_SECRET_KEYS["AWS_SECRET_ACCESS_KEY"] = "kubernetes.secrets.s3"


def _config_error(pod: Obj, status: Obj) -> PodProblem:
    """CreateContainerConfigError: the kubelet cannot build the container's environment
    (pkg/kubelet/kubelet_pods.go makeEnvironmentVariables: `secret "x" not found`,
    "couldn't find key K in Secret ns/x"). Waiting does not create a Secret."""
    message = str(_get(status, "state.waiting.message", "")) or "the kubelet could not build the container's config"
    fix = _missing_reference_fix(pod, message) or (
        "kubernetes.run_as_user: give a numeric non-root uid"
        if "runAsNonRoot" in message
        else f"kubectl describe pod {_pod_ref(pod)}"
    )
    return _problem(pod, status, "CreateContainerConfigError", message, False, fix)


def _missing_reference_fix(pod: Obj, message: str) -> str | None:
    """The fix for a Secret or ConfigMap (or one of its keys) that the pod names but the namespace lacks."""
    namespace = _get(pod, "metadata.namespace", "default")
    if match := _SECRET_KEY_MISSING.search(message):
        name, key = match["name"], match["key"]
        where = f"{match['ns']}/{name}"
        return f"add key {key} to Secret {where}, or point {_secret_spec_key(pod, name)} at a Secret that has it"
    if match := _SECRET_MISSING.search(message):
        name = match["name"]
        keys = _secret_keys_used(pod, name) or ["KEY"]
        literals = " ".join(f"--from-literal={key}=..." for key in keys)
        create = f"kubectl create secret generic {name} -n {namespace} {literals}"
        return f"create Secret {name} ({create}), or point {_secret_spec_key(pod, name)} at an existing Secret"
    if match := _CONFIGMAP_KEY_MISSING.search(message):
        return f"add key {match['key']} to ConfigMap {match['ns']}/{match['name']} (re-run up: it renders it)"
    if match := _CONFIGMAP_MISSING.search(message):
        return f"ConfigMap {match['name']} is missing in {namespace}: re-run up (it renders it)"
    return None


def _env_refs(pod: Obj) -> Iterator[tuple[str, str]]:
    """(environment variable, Secret name) for every secretKeyRef in the pod's containers."""
    for container in _list(pod, "spec.initContainers") + _list(pod, "spec.containers"):
        for env in container.get("env") or []:
            ref = _get(env, "valueFrom.secretKeyRef")
            if isinstance(ref, dict) and ref.get("name"):
                yield str(ref.get("key") or env.get("name")), str(ref["name"])


def _secret_keys_used(pod: Obj, secret: str) -> list[str]:
    return sorted({key for key, name in _env_refs(pod) if name == secret})


def _secret_spec_key(pod: Obj, secret: str) -> str:
    """The spec key that names this Secret, from the variables the pod reads out of it."""
    for key in _secret_keys_used(pod, secret):
        if key in _SECRET_KEYS:
            return _SECRET_KEYS[key]
    return "kubernetes.secrets"


def _start_error(pod: Obj, status: Obj, reason: str) -> PodProblem:
    """CreateContainerError / RunContainerError: a command missing from the image never starts;
    other runtime errors (a timeout) pass."""
    message = str(_get(status, "state.waiting.message", "")) or reason
    missing = any(marker in message for marker in ("executable file not found", "no such file or directory"))
    fix = (
        "kubernetes.image: the command is not in this image"
        if missing
        else "the container runtime failed: it is retried"
    )
    return _problem(pod, status, reason, message, not missing, fix)


def _failed_pod(pod: Obj) -> PodProblem:
    """A Failed pod (evicted, or every container ended in error): its controller makes another, so it is
    retryable, unless it ran out of memory, which the next pod will too."""
    for status in _container_statuses(pod):
        term = _get(status, "state.terminated", {})
        if term.get("reason") == "OOMKilled":
            fix = _oom_fix(pod)
            message = f"container {status.get('name')} was OOMKilled (exit code {term.get('exitCode')})"
            return _problem(pod, status, "OOMKilled", message, False, fix)
    reason = str(_get(pod, "status.reason", "")) or "Failed"
    message = _get(pod, "status.message") or _terminated_summary(pod) or "the pod failed"
    fix = (
        "the node ran short of a resource; a new pod is scheduled"
        if reason == "Evicted"
        else f"kubectl describe pod {_pod_ref(pod)}"
    )
    return _problem(pod, {}, reason, message, True, fix)


# ---------------------------------------------------------------------------------------------
# pod_problem: events


@dataclass(frozen=True)
class _Event:
    """The fields we read, from either event API: core v1 (involvedObject, message, lastTimestamp,
    source.component) or events.k8s.io/v1 (regarding, note, eventTime/series, reportingController)."""

    reason: str
    message: str
    field_path: str
    source: str
    first: datetime | None
    last: datetime | None

    def about_container(self, container: str) -> bool:
        """Container events carry ``spec.containers{name}`` (or initContainers); others concern the pod."""
        return not self.field_path or self.field_path.endswith(f"{{{container}}}")


def _event(raw: Obj) -> _Event:
    ref = raw.get("involvedObject") or raw.get("regarding") or {}
    last = (
        _parse_time(_get(raw, "series.lastObservedTime"))
        or _parse_time(raw.get("lastTimestamp"))
        or _parse_time(raw.get("deprecatedLastTimestamp"))
        or _parse_time(raw.get("eventTime"))
        or _parse_time(_get(raw, "metadata.creationTimestamp"))
    )
    first = (
        _parse_time(raw.get("firstTimestamp"))
        or _parse_time(raw.get("deprecatedFirstTimestamp"))
        or _parse_time(raw.get("eventTime"))
        or last
    )
    return _Event(
        reason=str(raw.get("reason") or ""),
        message=" ".join(str(raw.get("message") or raw.get("note") or "").split()),
        field_path=str(ref.get("fieldPath") or ""),
        source=str(_get(raw, "source.component") or raw.get("reportingController") or ""),
        first=first,
        last=last,
    )


def _events_about(pod: Obj, events: list[Obj]) -> list[_Event]:
    """The pod's own events, oldest first (a stable sort keeps the given order among equal times)."""
    name, uid = _get(pod, "metadata.name"), _get(pod, "metadata.uid")
    mine = []
    for raw in events:
        ref = raw.get("involvedObject") or raw.get("regarding") or {}
        if ref.get("kind", "Pod") != "Pod" or ref.get("name", name) != name:
            continue
        if uid and ref.get("uid") and ref["uid"] != uid:
            continue  # an earlier pod of the same name
        mine.append(_event(raw))
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(mine, key=lambda e: e.last or epoch)


# ---------------------------------------------------------------------------------------------
# pod_problem: volumes


# Mount failures waiting does not fix, as the CSI drivers and mount helpers word them (kubelet FailedMount
# events carry their text): GCS FUSE CSI driver (GoogleCloudPlatform/gcs-fuse-csi-driver, its
# troubleshooting doc), the kubelet's CSI plugin registry (pkg/volume/csi), mount.nfs(8).
_MOUNT_FAILURES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (
        re.compile(r"driver name gcsfuse\.csi\.storage\.gke\.io not found in the list of registered CSI drivers", re.I),
        "GcsFuseDriverMissing",
        "enable the Cloud Storage FUSE CSI driver: gcloud container clusters update CLUSTER --update-addons "
        "GcsFuseCsiDriver=ENABLED (or use another storage.profile)",
    ),
    (
        re.compile(r"failed to find the sidecar container in Pod spec", re.I),
        "GcsFuseSidecarMissing",
        'the pod lacks the gke-gcsfuse/volumes: "true" annotation that injects the FUSE sidecar (vllm-fleet '
        "renders it: check that no webhook or policy strips pod annotations)",
    ),
    (
        re.compile(
            r"(?=.*(gcsfuse|GCS bucket))(?=.*(PermissionDenied|Error 403|does not have storage\.objects))", re.I
        ),
        "GcsFuseForbidden",
        "the pod's identity may not read the bucket: grant roles/storage.objectViewer on it to the Kubernetes service "
        "account (Workload Identity principal) or to kubernetes.gcp_service_account",
    ),
    (
        re.compile(r"(?=.*(gcsfuse|GCS bucket))(?=.*(bucket does not exist|bucket doesn't exist|Error 404))", re.I),
        "GcsFuseBucketNotFound",
        "the bucket in model.source does not exist (or is in another project): check model.source",
    ),
    (
        re.compile(r"mount\.nfs: (access denied by server|No such file or directory|an incorrect mount option)", re.I),
        "NfsMountFailed",
        "the NFS export refused the mount: check storage.nfs_server and storage.nfs_path and the server's exports "
        "(the nodes' addresses must be allowed)",
    ),
)


def _volume_problem(pod: Obj, events: list[_Event], now: datetime, grace_s: float) -> PodProblem | None:
    """A volume the kubelet cannot mount: a missing Secret or ConfigMap at once; an attach or mount
    that has not succeeded within the grace after it began (the kubelet's own wait is 2 minutes)."""
    if _get(pod, "status.phase") != "Pending":
        return None  # the volumes mounted since: an old FailedMount event is history, not a cause
    for event in reversed(events):
        if event.reason not in ("FailedMount", "FailedAttachVolume"):
            continue
        fix = _missing_reference_fix(pod, event.message)
        if fix:
            return _problem(pod, {}, event.reason, event.message, False, fix)
        for pattern, reason, known_fix in _MOUNT_FAILURES:
            if pattern.search(event.message):
                return _problem(pod, {}, reason, event.message, False, known_fix)
        if not _past_grace(event.first, now, grace_s):
            return None
        if "Multi-Attach error" in event.message:
            # pkg/controller/volume/attachdetach/reconciler: a ReadWriteOnce disk is attached to one node.
            fix = (
                "a ReadWriteOnce volume cannot follow replicas onto other nodes: set storage.access_mode "
                "ReadOnlyMany or ReadWriteMany, or use storage.profile pd-preloaded or nfs"
            )
            return _problem(pod, {}, "Multi-Attach", event.message, False, fix)
        return _problem(
            pod, {}, event.reason, event.message, True, "the volume is slow to attach or mount: it is retried"
        )
    return None


def _past_grace(since: datetime | None, now: datetime, grace_s: float) -> bool:
    """True once ``grace_s`` has passed since ``since``; with no time recorded, true (the caller's deadline rules)."""
    return since is None or (now - since).total_seconds() >= grace_s


# ---------------------------------------------------------------------------------------------
# pod_problem: scheduling


def _scheduling_problem(pod: Obj, events: list[_Event], now: datetime, grace_s: float) -> PodProblem | None:
    """PodScheduled False/Unschedulable past the grace, judged with the autoscaler's events.

    Retryable while a node may still come: cluster-autoscaler's TriggeredScaleUp, Karpenter's
    Nominated, a FailedScaleUp for lack of capacity (a stockout) or a node group in backoff after
    one. Not retryable when nothing is adding a node, or the reason is one no new node fixes.
    """
    condition = _conditions(pod).get("PodScheduled", {})
    if condition.get("status") != "False" or condition.get("reason") != "Unschedulable":
        return None
    since = _parse_time(condition.get("lastTransitionTime")) or _parse_time(_get(pod, "metadata.creationTimestamp"))
    if not _past_grace(since, now, grace_s):
        return None  # the autoscaler runs every 10 s; give it time to answer
    scheduler = _scheduler_message(condition, events)
    autoscaler = _latest_autoscaler_event(events)
    waited = f" for {int((now - since).total_seconds())}s" if since else ""
    message = f"unschedulable{waited}: {scheduler}"
    if autoscaler is not None:
        message += f"; {autoscaler.reason}: {autoscaler.message}"
    retryable, fix = _scheduling_verdict(scheduler, autoscaler)
    return PodProblem(
        pod=str(_get(pod, "metadata.name", "")),
        container=None,
        reason="Unschedulable",
        message=_one_line(message, 2 * _MESSAGE_LIMIT),
        retryable=retryable,
        fix=_one_line(fix),
    )


def _scheduler_message(condition: Obj, events: list[_Event]) -> str:
    """The scheduler's newest word: its last FailedScheduling event, else the condition's message."""
    for event in reversed(events):
        if event.reason == "FailedScheduling":
            return event.message
    return " ".join(str(condition.get("message") or "no node fits the pod").split())


_AUTOSCALER_REASONS = ("TriggeredScaleUp", "NotTriggerScaleUp", "FailedScaleUp", "Nominated")


def _latest_autoscaler_event(events: list[_Event]) -> _Event | None:
    """The newest event from cluster-autoscaler (processors/status/eventing_scale_up_processor.go,
    GKE's FailedScaleUp) or Karpenter ("Nominated": "Pod should schedule on: nodeclaim/..."): the
    last one says what the autoscaler is doing now."""
    for event in reversed(events):
        if event.reason in _AUTOSCALER_REASONS:
            return event
    return None


# Reasons no new node can fix, whatever the autoscaler does (VolumeBinding PreFilter errors).
_NO_NODE_HELPS = (
    re.compile(r'persistentvolumeclaims? "[^"]+" not found', re.I),
    re.compile(r'storageclass\S* "[^"]+" not found', re.I),
)
# Stockouts: GKE "GCE out of resources" / ZONE_RESOURCE_POOL_EXHAUSTED, AWS InsufficientInstanceCapacity,
# a reservation used up. Capacity comes back; the autoscaler keeps trying other zones and later.
_STOCKOUT = (
    "out of resources",
    "resource_pool_exhausted",
    "does not have enough resources",
    "stockout",
    "insufficientinstancecapacity",
    "insufficient capacity",
)
_STOCKOUT_RE = re.compile(r"reservation.*exceeded", re.I)
_QUOTA_RE = re.compile(r"quota(_exceeded|.*exceeded)", re.I)
# cluster-autoscaler core/scaleup/orchestrator/skippedreasons.go: a group that may scale later.
_AUTOSCALER_WAITING = ("in backoff after failed scale-up", "not ready for scale-up")


def _scheduling_verdict(scheduler: str, autoscaler: _Event | None) -> tuple[bool, str]:
    """(retryable, fix) from the scheduler's text and the autoscaler's latest event."""
    if any(pattern.search(scheduler) for pattern in _NO_NODE_HELPS) or autoscaler is None:
        prefix = "" if autoscaler else "no autoscaler is adding a node: "
        return False, prefix + _scheduling_fix(scheduler)
    lower = autoscaler.message.lower()
    if autoscaler.reason in ("TriggeredScaleUp", "Nominated"):
        return True, "a node is being added (GPU nodes take minutes): keep waiting"
    if autoscaler.reason == "FailedScaleUp":
        if _QUOTA_RE.search(lower):
            return False, _scheduling_fix(autoscaler.message)
        if any(marker in lower for marker in ("ip space exhausted", "service account was deleted")):
            return False, "the cluster cannot add nodes: fix what the autoscaler names, then re-run up"
        if any(marker in lower for marker in _STOCKOUT) or _STOCKOUT_RE.search(lower):
            return True, (
                "the zone has no capacity for this node type right now and the autoscaler retries; "
                "to widen the search, allow the node pool more zones or choose another resources.gpu_type"
            )
        return True, "the scale-up failed and the autoscaler retries"
    if any(marker in lower for marker in _AUTOSCALER_WAITING):
        # The cause of the failed scale-up is not on the pod; the autoscaler's status ConfigMap has it.
        return True, (
            "the autoscaler is backing off after a failed scale-up and retries "
            "(why: kubectl describe configmap cluster-autoscaler-status -n kube-system)"
        )
    # NotTriggerScaleUp: the autoscaler's reason (no node group fits) says more than the scheduler's
    # (no current node fits), so it is read first.
    return False, _scheduling_fix(autoscaler.message, scheduler)


# First match wins, most telling first: a GPU shortage matters more than a control-plane taint
# in the same "0/3 nodes are available: ..." text (pkg/scheduler/framework/plugins/*).
_SCHEDULING_FIXES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r'persistentvolumeclaims? "([^"]+)" not found', re.I),
        "the PersistentVolumeClaim {0} does not exist: re-run up (it renders it from storage.*)",
    ),
    (
        re.compile(r'storageclass\S* "([^"]+)" not found', re.I),
        "StorageClass {0} does not exist: set storage.create_storage_class or name an existing storage.storage_class",
    ),
    (
        _QUOTA_RE,
        "the cloud quota for these nodes is used up: request more (e.g. GPUS_ALL_REGIONS, the GPU family's quota) "
        "or choose another resources.gpu_type",
    ),
    (
        re.compile(r"max node group size reached", re.I),
        "the node pool is at its maximum size: raise its maximum, or lower replicas / scaling.max_replicas",
    ),
    (
        re.compile(r"max cluster \S+ limit reached", re.I),
        "the autoscaler's cluster-wide resource limit is reached: raise it, or lower replicas",
    ),
    (
        re.compile(r"Insufficient nvidia\.com/gpu", re.I),
        "no node has the free GPUs a replica asks for: add GPU nodes (or autoscaling) for resources.gpu_type, "
        "or lower resources.gpus",
    ),
    (
        re.compile(r"didn't match (Pod's )?node (affinity|selector)", re.I),
        "no node has the labels the pod selects: check resources.gpu_type and kubernetes.gpu_node_selector "
        "against `kubectl get nodes --show-labels`",
    ),
    (
        re.compile(r"untolerated taint|that the pod didn't tolerate", re.I),
        "the nodes carry a taint the pod does not tolerate (kubernetes.platform sets the GPU toleration): "
        "see `kubectl describe nodes`",
    ),
    (
        re.compile(r"Insufficient cpu", re.I),
        "no node has the free CPU a replica asks for: lower resources.cpu or add nodes",
    ),
    (
        re.compile(r"Insufficient memory", re.I),
        "no node has the free memory a replica asks for: lower resources.memory or add nodes",
    ),
    (
        re.compile(r"volume node affinity conflict", re.I),
        "the volume lives in a zone without a fitting node: align storage.zones with the node pool's zones",
    ),
    (re.compile(r"were unschedulable", re.I), "the fitting nodes are cordoned: `kubectl uncordon` them"),
)


def _scheduling_fix(*texts: str) -> str:
    """The fix for the first of ``texts`` that names a known cause."""
    for text in texts:
        for pattern, fix in _SCHEDULING_FIXES:
            if match := pattern.search(text):
                return fix.format(*match.groups())
    return "see `kubectl describe pod` for the scheduler's reasons"
