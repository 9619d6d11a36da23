"""The kubelet, one pass per bound pod: run its containers as scripted and report pod status.

Without a script a container starts and is ready at once (a pod with restartPolicy Never or
OnFailure runs one pass, then exits 0). What the real kubelet decides by itself is decided here
the same way, whatever the script: a container whose env names a missing Secret or ConfigMap
(or key) does not start, ``CreateContainerConfigError`` with the kubelet's message
(``pkg/kubelet/kubelet_pods.go`` makeEnvironmentVariables: ``secret "x" not found``,
``couldn't find key K in Secret NS/x``); a pod whose volume names a missing Secret or ConfigMap
stays ``ContainerCreating`` with a ``FailedMount`` event (``MountVolume.SetUp failed for volume
"v" : secret "x" not found``). Scripted behaviours play what the fake cannot know:

- ``CrashLoop``: the container exits each pass; ``state.waiting`` CrashLoopBackOff with
  ``back-off 10s restarting failed container=C pod=P_NS(UID)`` (doubling to 5m0s),
  ``lastState.terminated`` with the exit code and reason, ``restartCount`` rising, and a
  ``BackOff`` event ``Back-off restarting failed container C in pod P_NS(UID)``
  (``pkg/kubelet/kuberuntime/kuberuntime_manager.go`` doBackOff).
- ``ImagePullError``: ``ErrImagePull`` then ``ImagePullBackOff``, events ``Failed``
  ``Failed to pull image "I": <error>`` and ``Error: ErrImagePull``, then ``BackOff``
  ``Back-off pulling image "I"`` (``pkg/kubelet/images/image_manager.go``); the default error is
  containerd's text for a missing image.
- ``ConfigError``: ``CreateContainerConfigError`` with a message (event ``Failed`` ``Error: <message>``).
- ``NotReady``: running but not ready, an ``Unhealthy`` event ``Readiness probe failed: <message>``.
- ``Starting``: ``ContainerCreating`` for some passes first. ``Exit``: terminates with a code.

Pod termination (https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-termination):
the kubelet sees the deletionTimestamp, emits ``Killing`` ``Stopping container C``, runs the
preStop hook and sends SIGTERM; the pod is removed (the kubelet's final delete) once its
containers have exited, or when the grace period ends and they are killed. How long a container
takes to exit is scripted, ``Run(stop_s=S)`` (its preStop drain and SIGTERM handling): the pod goes
``min(S, deletionGracePeriodSeconds)`` after the kubelet first saw it deleting; without one it goes
on the next pass. Meanwhile its status stays as it was (readiness is still reported, so its
EndpointSlice endpoint is ``serving`` and ``terminating``).

Pod IPs: from the node's ``spec.podCIDR`` when it has one (``add_node(pod_cidr=...)``), as the
host-local IPAM plugin hands them out (https://www.cni.dev/plugins/current/ipam/host-local/: from
the subnet's ``.2``, ``.1`` being the gateway, each next one after the last handed out, so a new
pod does not get the address a pod just gave back); without one from the fake's pool of 10.x
addresses. A test can give nodes loopback CIDRs (``127.0.1.0/24``: Linux routes all of 127/8 to
``lo``) and run a real server at a pod's IP.

HTTP readiness probes, when ``http_probes`` is set: a running container's ``readinessProbe.httpGet``
is sent to ``podIP:port`` (a named port looked up in the container's ports) each pass, ready when it
answers 200-399 within ``timeoutSeconds`` (``pkg/probe/http/http.go``; default 1 s), so a pod is
ready once the real server behind its IP answers. Off by default (the 10.x pod IPs lead nowhere);
a script other than ``Run`` still decides. The probe runs inside the pass, under the store lock: a
server that accepts and never answers stalls the fake for ``timeoutSeconds``.

Not modelled: probes' timing (each pass, not ``periodSeconds``; no failure or success thresholds),
startup and liveness probes, image pulls' time (a start that works emits no
``Pulling``/``Pulled``/``Created``/``Started`` events), resource limits (no OOM unless scripted with
``CrashLoop(exit_code=137, reason="OOMKilled")``), the ``minimumGracePeriodInSeconds`` of 2 s and
the preStop hook's own share of the grace period.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import events
from .errors import KubeError, bad_request
from .store import Store, now

COMPONENT = "kubelet"


@dataclass(frozen=True)
class Run:
    """Start and be ready (the default); once the pod is deleted, take ``stop_s`` to exit (preStop, SIGTERM)."""

    logs: str = ""
    stop_s: float = 0.0


@dataclass(frozen=True)
class Starting:
    """Stay ``ContainerCreating`` for ``passes`` kubelet passes, then behave as ``then``."""

    passes: int = 1
    then: Behaviour = field(default_factory=Run)


@dataclass(frozen=True)
class NotReady:
    """Run, but fail the readiness probe."""

    message: str = "HTTP probe failed with statuscode: 503"
    logs: str = ""


@dataclass(frozen=True)
class CrashLoop:
    """Exit with ``exit_code`` every pass (``reason`` Error, or OOMKilled with 137); ``logs`` is its output."""

    exit_code: int = 1
    reason: str = "Error"
    logs: str = ""


@dataclass(frozen=True)
class ImagePullError:
    """The image cannot be pulled; ``error`` is the runtime's message (default: containerd's not found)."""

    error: str | None = None


@dataclass(frozen=True)
class ConfigError:
    """``CreateContainerConfigError`` with ``message`` (the constructors give the kubelet's texts)."""

    message: str

    @classmethod
    def missing_secret(cls, name: str) -> ConfigError:
        """``secret "name" not found``."""
        return cls(f'secret "{name}" not found')

    @classmethod
    def missing_secret_key(cls, namespace: str, name: str, key: str) -> ConfigError:
        """``couldn't find key KEY in Secret NS/NAME``."""
        return cls(f"couldn't find key {key} in Secret {namespace}/{name}")

    @classmethod
    def missing_configmap(cls, name: str) -> ConfigError:
        """``configmap "name" not found``."""
        return cls(f'configmap "{name}" not found')


@dataclass(frozen=True)
class Exit:
    """Run ``after`` passes, then exit with ``code`` (with restartPolicy Always it then crash-loops)."""

    code: int = 0
    after: int = 1
    logs: str = ""


Behaviour = Run | Starting | NotReady | CrashLoop | ImagePullError | ConfigError | Exit


@dataclass(frozen=True)
class Script:
    """Which containers get a behaviour: by name, namespace, pod labels, pod name prefix (None: any)."""

    behaviour: Behaviour
    container: str | None = None
    namespace: str | None = None
    labels: Mapping[str, str] | None = None
    pod_prefix: str | None = None

    def matches(self, pod: Mapping[str, Any], container: str) -> bool:
        """Whether this script is for ``container`` of ``pod``."""
        meta = pod["metadata"]
        pod_labels = meta.get("labels") or {}
        return (
            (self.container is None or self.container == container)
            and (self.namespace is None or self.namespace == meta.get("namespace"))
            and (self.labels is None or all(pod_labels.get(k) == v for k, v in self.labels.items()))
            and (self.pod_prefix is None or meta["name"].startswith(self.pod_prefix))
        )


@dataclass
class _Runtime:
    """What a kubelet remembers of one container."""

    passes: int = 0
    restarts: int = 0
    started_at: str = ""
    last: dict[str, Any] | None = None
    done: dict[str, Any] | None = None  # terminated for good (restartPolicy Never, or OnFailure and exit 0)
    logs: str = ""
    previous_logs: str = ""
    ran: bool = False


def behaviour_for(scripts: Sequence[Script], pod: Mapping[str, Any], container: str) -> Behaviour | None:
    """The last script registered for this container wins."""
    for script in reversed(scripts):
        if script.matches(pod, container):
            return script.behaviour
    return None


def pod_format(pod: Mapping[str, Any]) -> str:
    """``format.Pod``: NAME_NAMESPACE(UID)."""
    meta = pod["metadata"]
    return f"{meta['name']}_{meta['namespace']}({meta['uid']})"


def _backoff(restarts: int) -> str:
    """The CrashLoopBackOff delay as Go prints a Duration: 10s doubling, capped at 5m0s."""
    seconds = min(10 * 2 ** max(restarts - 1, 0), 300)
    return f"{seconds // 60}m{seconds % 60}s" if seconds >= 60 else f"{seconds}s"


def normalized_image(image: str) -> str:
    """The reference containerd resolves: docker.io/library/name:latest for a bare ``name``."""
    ref = image
    first = ref.split("/", 1)[0]
    if "/" not in ref:
        ref = "docker.io/library/" + ref
    elif "." not in first and ":" not in first and first != "localhost":
        ref = "docker.io/" + ref
    if "@" not in ref and ":" not in ref.rsplit("/", 1)[-1]:
        ref += ":latest"
    return ref


def _pull_error(image: str) -> str:
    ref = normalized_image(image)
    return (
        f'rpc error: code = NotFound desc = failed to pull and unpack image "{ref}": '
        f'failed to resolve reference "{ref}": {ref}: not found'
    )


def _env_problem(store: Store, namespace: str, container: Mapping[str, Any]) -> str | None:
    """The kubelet's own CreateContainerConfigError message for missing env sources, if any."""
    for source in container.get("envFrom") or ():
        for kind, plural in (("secretRef", "secrets"), ("configMapRef", "configmaps")):
            ref = source.get(kind)
            if ref and not ref.get("optional") and store.get(("", plural), namespace, ref.get("name", "")) is None:
                return f'{"secret" if plural == "secrets" else "configmap"} "{ref.get("name")}" not found'
    for env in container.get("env") or ():
        value_from = env.get("valueFrom") or {}
        for kind, plural, word in (
            ("secretKeyRef", "secrets", "Secret"),
            ("configMapKeyRef", "configmaps", "ConfigMap"),
        ):
            ref = value_from.get(kind)
            if not ref or ref.get("optional"):
                continue
            obj = store.get(("", plural), namespace, ref.get("name", ""))
            if obj is None:
                return f'{"secret" if plural == "secrets" else "configmap"} "{ref.get("name")}" not found'
            if ref.get("key") not in {**(obj.get("data") or {}), **(obj.get("binaryData") or {})}:
                return f"couldn't find key {ref.get('key')} in {word} {namespace}/{ref.get('name')}"
    return None


def _volume_problems(store: Store, pod: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(volume, error) for Secret and ConfigMap volumes whose object is missing."""
    namespace = pod["metadata"]["namespace"]
    out = []
    for vol in (pod.get("spec") or {}).get("volumes") or ():
        secret, cm = vol.get("secret"), vol.get("configMap")
        if (
            secret
            and not secret.get("optional")
            and store.get(("", "secrets"), namespace, secret.get("secretName", "")) is None
        ):
            out.append((vol["name"], f'secret "{secret.get("secretName")}" not found'))
        if cm and not cm.get("optional") and store.get(("", "configmaps"), namespace, cm.get("name", "")) is None:
            out.append((vol["name"], f'configmap "{cm.get("name")}" not found'))
    return out


def _image_id(image: str) -> str:
    digest = hashlib.sha256(image.encode()).hexdigest()
    return f"{normalized_image(image).rsplit(':', 1)[0]}@sha256:{digest}"


def _container_id(pod_uid: str, name: str, restarts: int) -> str:
    return "containerd://" + hashlib.sha256(f"{pod_uid}/{name}/{restarts}".encode()).hexdigest()


class Kubelet:
    """Every node's kubelet at once; scripts say what the containers do."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.scripts: list[Script] = []
        self.http_probes = False  # send readinessProbe.httpGet to podIP:port (a real server must be there)

    def _runtime(self, pod_uid: str, name: str) -> _Runtime:
        pods = self.store.memo.setdefault("kubelet", {})
        return pods.setdefault(pod_uid, {}).setdefault(name, _Runtime())

    def sync(self) -> None:
        """One pass over the pods bound to an existing node."""
        nodes = {n["metadata"]["name"]: n for n in self.store.objects(("", "nodes"))}
        for pod in self.store.objects(("", "pods")):
            node = nodes.get((pod.get("spec") or {}).get("nodeName") or "")
            if node is None:
                continue
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                self._stop(pod, node)
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            self._sync_pod(pod, node)

    def _event(
        self,
        pod: Mapping[str, Any],
        node: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        field_path: str | None = None,
    ) -> None:
        events.emit(
            self.store, pod, type_, reason, message, COMPONENT, host=node["metadata"]["name"], field_path=field_path
        )

    def _stop(self, pod: Mapping[str, Any], node: Mapping[str, Any]) -> None:
        """Stop the containers (``Killing``), then, once they have exited, make the final delete (grace 0)."""
        meta = pod["metadata"]
        stopping: dict[str, float] = self.store.memo.setdefault("kubelet-stopping", {})
        if meta["uid"] not in stopping:
            for status in (pod.get("status") or {}).get("containerStatuses") or ():
                if "running" in (status.get("state") or {}):
                    self._event(
                        pod,
                        node,
                        "Normal",
                        "Killing",
                        f"Stopping container {status['name']}",
                        f"spec.containers{{{status['name']}}}",
                    )
            takes = max(
                (
                    b.stop_s
                    for c in (pod.get("spec") or {}).get("containers") or ()
                    if isinstance(b := behaviour_for(self.scripts, pod, c["name"]), Run)
                ),
                default=0.0,
            )
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            stopping[meta["uid"]] = time.monotonic() + min(takes, grace)
        if time.monotonic() < stopping[meta["uid"]]:
            return  # still in its preStop hook or handling SIGTERM: it goes once its containers exit
        stopping.pop(meta["uid"], None)
        if self.store.end_grace(("", "pods"), meta["namespace"], meta["name"]) is None:
            self.store.memo.get("kubelet", {}).pop(meta["uid"], None)
            self.store.memo.get("kubelet-ips", {}).pop(meta["uid"], None)

    def _advance(
        self, pod: Mapping[str, Any], node: Mapping[str, Any], c: Mapping[str, Any], path: str, policy: str
    ) -> dict[str, Any]:
        """One pass of one container; its containerStatus."""
        meta, name, image = pod["metadata"], c["name"], c.get("image", "")
        rt = self._runtime(meta["uid"], name)
        status: dict[str, Any] = {
            "name": name,
            "image": image,
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": rt.restarts,
            "state": {},
            "lastState": {},
        }
        problem = _env_problem(self.store, meta["namespace"], c)
        behaviour: Behaviour | None = ConfigError(problem) if problem else behaviour_for(self.scripts, pod, name)
        if behaviour is None:
            init = path == "spec.initContainers" and c.get("restartPolicy") != "Always"
            behaviour = Exit(after=0) if init else Run() if policy == "Always" else Exit()
        k = rt.passes
        rt.passes += 1
        while isinstance(behaviour, Starting):
            if k < behaviour.passes:
                status["state"] = {"waiting": {"reason": "ContainerCreating"}}
                return self._with_last(status, rt)
            k, behaviour = k - behaviour.passes, behaviour.then
        if rt.done is not None:
            status["state"] = {"terminated": rt.done}
            status["imageID"], status["containerID"] = _image_id(image), rt.done.get("containerID", "")
            return self._with_last(status, rt)
        if isinstance(behaviour, ConfigError):
            status["state"] = {"waiting": {"reason": "CreateContainerConfigError", "message": behaviour.message}}
            self._event(pod, node, "Warning", "Failed", f"Error: {behaviour.message}", f"{path}{{{name}}}")
            return self._with_last(status, rt)
        if isinstance(behaviour, ImagePullError):
            error = behaviour.error or _pull_error(image)
            if k == 0:
                status["state"] = {"waiting": {"reason": "ErrImagePull", "message": error}}
                self._event(pod, node, "Normal", "Pulling", f'Pulling image "{image}"', f"{path}{{{name}}}")
                self._event(
                    pod, node, "Warning", "Failed", f'Failed to pull image "{image}": {error}', f"{path}{{{name}}}"
                )
                self._event(pod, node, "Warning", "Failed", "Error: ErrImagePull", f"{path}{{{name}}}")
            else:
                message = f'Back-off pulling image "{image}"'  # later kubelets append the last pull error
                status["state"] = {"waiting": {"reason": "ImagePullBackOff", "message": message}}
                self._event(pod, node, "Normal", "BackOff", f'Back-off pulling image "{image}"', f"{path}{{{name}}}")
                self._event(pod, node, "Warning", "Failed", "Error: ImagePullBackOff", f"{path}{{{name}}}")
            return self._with_last(status, rt)
        status["imageID"] = _image_id(image)
        if (
            isinstance(behaviour, Exit)
            and k >= behaviour.after
            and (policy == "Never" or (policy == "OnFailure" and behaviour.code == 0))
        ):
            rt.done = {
                "exitCode": behaviour.code,
                "reason": "Completed" if behaviour.code == 0 else "Error",
                "startedAt": rt.started_at or now(),
                "finishedAt": now(),
                "containerID": _container_id(meta["uid"], name, rt.restarts),
            }
            rt.logs, rt.ran = behaviour.logs, True
            status["state"], status["containerID"] = {"terminated": rt.done}, rt.done["containerID"]
            return self._with_last(status, rt)
        if isinstance(behaviour, Exit) and k >= behaviour.after:
            behaviour = CrashLoop(
                exit_code=behaviour.code, reason="Completed" if behaviour.code == 0 else "Error", logs=behaviour.logs
            )
        if isinstance(behaviour, CrashLoop):
            started = rt.started_at or now()
            rt.last = {
                "terminated": {
                    "exitCode": behaviour.exit_code,
                    "reason": behaviour.reason,
                    "startedAt": started,
                    "finishedAt": now(),
                    "containerID": _container_id(meta["uid"], name, rt.restarts),
                }
            }
            rt.previous_logs, rt.logs, rt.ran = behaviour.logs, behaviour.logs, True
            if policy == "Never":
                rt.done = rt.last["terminated"]
                status["state"], status["containerID"] = {"terminated": rt.done}, rt.done["containerID"]
                return self._with_last(status, rt)
            rt.restarts += 1
            rt.started_at = ""
            message = f"back-off {_backoff(rt.restarts)} restarting failed container={name} pod={pod_format(pod)}"
            status["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
            status["restartCount"] = rt.restarts
            status["containerID"] = rt.last["terminated"]["containerID"]
            text = f"Back-off restarting failed container {name} in pod {pod_format(pod)}"
            self._event(pod, node, "Warning", "BackOff", text, f"{path}{{{name}}}")
            return self._with_last(status, rt)
        # Run, NotReady, or an Exit still running
        rt.started_at = rt.started_at or now()
        rt.ran = True
        rt.logs = getattr(behaviour, "logs", "")
        status["state"] = {"running": {"startedAt": rt.started_at}}
        status["started"] = True
        status["containerID"] = _container_id(meta["uid"], name, rt.restarts)
        failed = self._probe(pod, node, c) if isinstance(behaviour, Run) and self.http_probes else None
        if isinstance(behaviour, NotReady) or failed:
            why = behaviour.message if isinstance(behaviour, NotReady) else failed
            self._event(pod, node, "Warning", "Unhealthy", f"Readiness probe failed: {why}", f"{path}{{{name}}}")
        else:
            status["ready"] = True
        return self._with_last(status, rt)

    def _probe(self, pod: Mapping[str, Any], node: Mapping[str, Any], c: Mapping[str, Any]) -> str | None:
        """The readinessProbe's httpGet against podIP:port: None when it passes (or there is none), else why."""
        get = (c.get("readinessProbe") or {}).get("httpGet")
        if not get:
            return None
        port = get.get("port")
        if isinstance(port, str) and not port.isdigit():
            port = next((p["containerPort"] for p in c.get("ports") or () if p.get("name") == port), None)
            if port is None:
                return f"unknown port {get.get('port')!r}"
        timeout = float((c.get("readinessProbe") or {}).get("timeoutSeconds", 1))
        conn = http.client.HTTPConnection(self._pod_ip(pod, node), int(port), timeout=timeout)
        try:
            conn.request("GET", get.get("path", "/"), headers={"User-Agent": "kube-probe/1.30"})
            code = conn.getresponse().status
        except OSError as exc:  # the kubelet's words for a refused or timed-out probe
            return f'Get "http://{self._pod_ip(pod, node)}:{port}{get.get("path", "/")}": {exc}'
        finally:
            conn.close()
        return None if 200 <= code < 400 else f"HTTP probe failed with statuscode: {code}"

    def _pod_ip(self, pod: Mapping[str, Any], node: Mapping[str, Any]) -> str:
        """The pod's IP: the one it has, or the next from the node's podCIDR (host-local), or the fake's pool."""
        have = (pod.get("status") or {}).get("podIP")
        if have:
            return str(have)
        ips: dict[str, str] = self.store.memo.setdefault("kubelet-ips", {})
        uid = pod["metadata"]["uid"]
        if uid not in ips:
            cidr = (node.get("spec") or {}).get("podCIDR")
            if cidr:
                net = ipaddress.ip_network(cidr)
                last: dict[str, int] = self.store.memo.setdefault("kubelet-last-ip", {})
                offset = last.get(cidr, 1) + 1  # .1 is the gateway; after the last one handed out
                if offset >= net.num_addresses - 1:
                    offset = 2  # host-local wraps round to the range start
                last[cidr] = offset
                ips[uid] = str(net[offset])
            else:
                ips[uid] = self.store.next_ip()
        return ips[uid]

    @staticmethod
    def _with_last(status: dict[str, Any], rt: _Runtime) -> dict[str, Any]:
        if rt.last is not None:
            status["lastState"] = rt.last
        return status

    def _sync_pod(self, pod: dict[str, Any], node: Mapping[str, Any]) -> None:
        spec = pod.get("spec") or {}
        policy = spec.get("restartPolicy", "Always")
        init_statuses: list[dict[str, Any]] = []
        app_statuses: list[dict[str, Any]] = []
        mount_problems = _volume_problems(self.store, pod)
        for vol, error in mount_problems:
            self._event(pod, node, "Warning", "FailedMount", f'MountVolume.SetUp failed for volume "{vol}" : {error}')
        initialized = not mount_problems
        if mount_problems:
            for c in spec.get("initContainers") or ():
                init_statuses.append(self._waiting(c, "PodInitializing" if init_statuses else "ContainerCreating"))
        else:
            for c in spec.get("initContainers") or ():
                if not initialized:
                    init_statuses.append(self._waiting(c, "PodInitializing"))
                    continue
                # a sidecar restarts always; a plain init container as OnFailure (Never under a Never pod)
                own = "Always" if c.get("restartPolicy") == "Always" else "Never" if policy == "Never" else "OnFailure"
                status = self._advance(pod, node, c, "spec.initContainers", own)
                init_statuses.append(status)
                sidecar = c.get("restartPolicy") == "Always"
                finished = (status["state"].get("terminated") or {}).get("exitCode") == 0
                if not (finished or (sidecar and status["started"])):
                    initialized = False
        for c in spec.get("containers") or ():
            if initialized:
                app_statuses.append(self._advance(pod, node, c, "spec.containers", policy))
            else:
                app_statuses.append(self._waiting(c, "ContainerCreating" if mount_problems else "PodInitializing"))
        self._report(pod, node, init_statuses, app_statuses, initialized, sandbox=not mount_problems)

    @staticmethod
    def _waiting(c: Mapping[str, Any], reason: str) -> dict[str, Any]:
        return {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {"waiting": {"reason": reason}},
            "lastState": {},
        }

    def _report(
        self,
        pod: Mapping[str, Any],
        node: Mapping[str, Any],
        init_statuses: list[dict[str, Any]],
        app_statuses: list[dict[str, Any]],
        initialized: bool,
        sandbox: bool,
    ) -> None:
        """Write phase, conditions and container statuses (``pkg/kubelet/status/generate.go``)."""
        meta, spec = pod["metadata"], pod.get("spec") or {}
        sidecars = [
            s
            for s, c in zip(init_statuses, spec.get("initContainers") or (), strict=False)
            if c.get("restartPolicy") == "Always"
        ]
        watched = app_statuses + sidecars
        unready = [s["name"] for s in watched if not s["ready"]]
        incomplete = [
            s["name"]
            for s, c in zip(init_statuses, spec.get("initContainers") or (), strict=False)
            if c.get("restartPolicy") != "Always" and (s["state"].get("terminated") or {}).get("exitCode") != 0
        ]
        terminated = [s["state"]["terminated"] for s in app_statuses if "terminated" in s["state"]]
        policy = spec.get("restartPolicy", "Always")
        if app_statuses and len(terminated) == len(app_statuses) and policy != "Always":
            phase = "Succeeded" if all(t.get("exitCode") == 0 for t in terminated) else "Failed"
            if policy == "OnFailure" and phase == "Failed":
                phase = "Running"
        elif initialized and any(s["started"] or s["restartCount"] > 0 for s in app_statuses):
            phase = "Running"
        else:
            phase = "Pending"
        stamp = now()
        addresses = (node.get("status") or {}).get("addresses") or [{"address": ""}]

        def report(p: dict[str, Any]) -> None:
            status = p.setdefault("status", {})
            status["phase"] = phase
            status["hostIP"] = addresses[0]["address"]
            status["hostIPs"] = [{"ip": addresses[0]["address"]}]
            if not status.get("podIP"):
                status["podIP"] = self._pod_ip(p, node)
                status["podIPs"] = [{"ip": status["podIP"]}]
            status.setdefault("startTime", stamp)
            if init_statuses:
                status["initContainerStatuses"] = init_statuses
            status["containerStatuses"] = app_statuses
            conds = {c["type"]: c for c in status.get("conditions") or []}
            wanted = {
                "PodReadyToStartContainers": ("True" if sandbox else "False", None, None),
                "Initialized": ("True", None, None)
                if not incomplete
                else (
                    "False",
                    "ContainersNotInitialized",
                    f"containers with incomplete status: [{' '.join(incomplete)}]",
                ),
                "Ready": ("True", None, None)
                if not unready and phase == "Running"
                else (
                    "False",
                    "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady",
                    None
                    if phase in ("Succeeded", "Failed")
                    else f"containers with unready status: [{' '.join(unready)}]",
                ),
            }
            wanted["ContainersReady"] = wanted["Ready"]
            for ctype, (cstatus, reason, message) in wanted.items():
                cond = conds.get(ctype, {"type": ctype, "lastProbeTime": None})
                if cond.get("status") != cstatus:
                    cond["lastTransitionTime"] = stamp
                cond["status"] = cstatus
                cond.pop("reason", None)
                cond.pop("message", None)
                if reason:
                    cond["reason"] = reason
                if message:
                    cond["message"] = message
                conds[ctype] = cond
            order = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
            status["conditions"] = [conds[t] for t in order if t in conds] + [
                c for t, c in conds.items() if t not in order
            ]

        self.store.mutate(("", "pods"), meta["namespace"], meta["name"], report, manager=COMPONENT)

    def logs(self, pod: Mapping[str, Any], container: str | None, previous: bool, tail: int | None) -> str:
        """GET pods/NAME/log as the kubelet answers it (``validateContainerLogStatus`` in kubelet_pods.go)."""
        meta, spec = pod["metadata"], pod.get("spec") or {}
        names = [c["name"] for c in spec.get("containers") or ()]
        init_names = [c["name"] for c in spec.get("initContainers") or ()]
        if container is None:
            if len(names) != 1:
                message = (
                    f"a container name must be specified for pod {meta['name']}, choose one of: [{' '.join(names)}]"
                )
                if init_names:
                    message += f" or one of the init containers: [{' '.join(init_names)}]"
                raise bad_request(message)
            container = names[0]
        if container not in names + init_names:
            raise bad_request(f"container {container} is not valid for pod {meta['name']}")
        if not spec.get("nodeName"):
            return ""
        statuses = [
            *((pod.get("status") or {}).get("containerStatuses") or ()),
            *((pod.get("status") or {}).get("initContainerStatuses") or ()),
        ]
        status = next((s for s in statuses if s["name"] == container), None)
        rt = self._runtime(meta["uid"], container)
        last = (status or {}).get("lastState") or {}
        state = (status or {}).get("state") or {}
        if previous:
            if "terminated" not in last:
                raise bad_request(f'previous terminated container "{container}" in pod "{meta["name"]}" not found')
            text = rt.previous_logs
        elif "running" in state or "terminated" in state or "terminated" in last:
            text = rt.logs
        else:
            reason = (state.get("waiting") or {}).get("reason", "ContainerCreating")
            why = {"ErrImagePull": "image can't be pulled", "ImagePullBackOff": "trying and failing to pull image"}
            message = f'container "{container}" in pod "{meta["name"]}" is waiting to start: {why.get(reason, reason)}'
            raise KubeError(400, "BadRequest", message)
        if tail is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-tail:]) if tail > 0 else ""
        return text
