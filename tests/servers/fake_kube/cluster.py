"""The cluster behind the fake API server: its objects, and the components that act on them.

``Cluster`` holds the store and plays the parts of a real cluster's other components (kubelets,
the scheduler, kube-controller-manager, a provisioner, the cluster-autoscaler) and of other users
(``update_as("kubectl", ...)``). None of it decides what the client under test should do.
``FakeKube`` (fake.py) puts an HTTP server in front of it.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import events, volumes
from .endpointslices import EndpointSlices
from .kubelet import Behaviour, Kubelet, Script
from .resources import ResourceType
from .scheduler import schedule
from .store import Store, now
from .workloads import Controllers

CRD_DIR = Path(__file__).resolve().parents[2] / "data" / "crds"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
Taint = str | tuple[str, str, str] | Mapping[str, str]


def parse_taint(taint: Taint) -> dict[str, str]:
    """``key=value:Effect`` (kubectl taint's form), a (key, value, effect) tuple, or a dict."""
    if isinstance(taint, Mapping):
        return dict(taint)
    if isinstance(taint, tuple):
        key, value, effect = taint
    else:
        spec, _, effect = taint.rpartition(":")
        key, _, value = spec.partition("=")
    out = {"key": key, "effect": effect}
    if value:
        out["value"] = value
    return out


class ControllerLoop:
    """The controllers running in a background thread every ``interval`` seconds."""

    def __init__(self, kube: Cluster, interval: float) -> None:
        self.kube, self.interval = kube, interval
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-kube-controllers", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.kube.step()
            except BaseException as exc:  # surfaced by stop(): a broken fake must fail the test
                self.error = exc
                return

    def stop(self) -> None:
        """Stop the loop; raise what broke it, if anything did."""
        self._stop.set()
        self._thread.join(timeout=10)
        if self in self.kube._loops:
            self.kube._loops.remove(self)
        if self.error is not None:
            raise RuntimeError("a fake_kube controller pass failed") from self.error

    def __enter__(self) -> ControllerLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Cluster:
    """The objects and components of a fake cluster (Kubernetes ``version``), without the HTTP part."""

    def __init__(self, *, version: str = "1.30", namespaces: Iterable[str] = ()) -> None:
        self.version = version  # what /version reports: "1.30", "1.28.3", "1.30+"
        self.store = Store()
        self.kubelet = Kubelet(self.store)
        self.controllers = Controllers(self.store)
        self.endpointslices = EndpointSlices(self.store)
        self._later: list[tuple[int, str, dict[str, Any]]] = []
        self._timers: list[threading.Timer] = []
        self._loops: list[ControllerLoop] = []
        # port-forward targets, the last matching wins: (pod name prefix or None, host, container port -> port)
        self._forwards: list[tuple[str | None, str, dict[int, int]]] = []
        for ns in dict.fromkeys((*SYSTEM_NAMESPACES, *namespaces)):
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    def version_info(self) -> dict[str, str]:
        """The ``/version`` body (``version.Info``) for ``self.version``."""
        text = self.version.lstrip("v")
        numbers = text.split("-")[0].split("+")[0].split(".")
        major, minor = numbers[0], text.split(".")[1] if "." in text else "0"
        minor = minor.split("-")[0]
        patch = numbers[2] if len(numbers) > 2 else "0"
        return {
            "major": major,
            "minor": minor,
            "gitVersion": f"v{major}.{numbers[1] if len(numbers) > 1 else '0'}.{patch}",
            "gitCommit": "0" * 40,
            "gitTreeState": "clean",
            "buildDate": "2024-01-01T00:00:00Z",
            "goVersion": "go1.22.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    # -- objects -------------------------------------------------------------------------------

    def _type(self, api_version: str, kind: str) -> ResourceType:
        rt = self.store.table.by_kind(api_version, kind)
        if rt is None:
            raise KeyError(f"the fake serves no {kind} in {api_version}")
        return rt

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The stored object, or None."""
        rt = self._type(api_version, kind)
        return self.store.get(rt.key, (namespace or "") if rt.namespaced else "", name)

    def objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The stored objects of a kind (one namespace or all)."""
        return self.store.objects(self._type(api_version, kind).key, namespace)

    def create(self, obj: Mapping[str, Any], *, manager: str = "fake-kube") -> dict[str, Any]:
        """Create an object as a cluster component (strategies and defaults apply, no authorization)."""
        return self.store.system_create(copy.deepcopy(dict(obj)), manager=manager)

    def update_as(
        self,
        manager: str,
        api_version: str,
        kind: str,
        name: str,
        change: Callable[[dict[str, Any]], None],
        *,
        namespace: str | None = None,
        subresource: str = "",
    ) -> dict[str, Any]:
        """Another user's Update (``kubectl edit``-like): ``change`` edits the object, ``manager`` owns the change."""
        rt = self._type(api_version, kind)
        ns = (namespace or "") if rt.namespaced else ""
        with self.store.lock:
            obj = self.store.get(rt.key, ns, name)
            if obj is None:
                raise KeyError(f"no {kind} {ns}/{name}")
            change(obj)
            return self.store.update(
                rt, ns, name, obj, manager=manager, api_version=api_version, subresource=subresource
            )

    def delete(
        self, api_version: str, kind: str, name: str, namespace: str | None = None, *, propagation: str | None = None
    ) -> None:
        """Delete as a user would (finalizers and propagation apply)."""
        rt = self._type(api_version, kind)
        self.store.delete(
            rt, (namespace or "") if rt.namespaced else "", name, propagation=propagation, api_version=api_version
        )

    def install_crd(self, crd: str | Path | Mapping[str, Any]) -> dict[str, Any]:
        """Create a CustomResourceDefinition: an object, a YAML file, or ``plural.group`` of tests/data/crds."""
        if isinstance(crd, Mapping):
            obj = copy.deepcopy(dict(crd))
        else:
            path = Path(crd)
            if not path.exists():
                plural, _, group = str(crd).partition(".")
                path = CRD_DIR / f"{group}_{plural}.yaml"
            obj = next(d for d in yaml.safe_load_all(path.read_text()) if d)
        return self.create(obj, manager="kubectl")

    def crd(
        self,
        group: str,
        kind: str,
        *,
        plural: str | None = None,
        versions: Sequence[str] = ("v1",),
        scope: str = "Namespaced",
        status: bool = False,
    ) -> dict[str, Any]:
        """Install a minimal CRD (a schema that keeps any field) for ``kind`` in ``group``."""
        plural = plural or kind.lower() + "s"
        schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
        spec_versions = [
            {
                "name": v,
                "served": True,
                "storage": i == 0,
                "schema": schema,
                **({"subresources": {"status": {}}} if status else {}),
            }
            for i, v in enumerate(versions)
        ]
        return self.install_crd(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.{group}"},
                "spec": {
                    "group": group,
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": kind + "List"},
                    "scope": scope,
                    "versions": spec_versions,
                },
            }
        )

    def compact(self) -> None:
        """Drop the watch history: a watch from an older resourceVersion gets 410 Expired."""
        self.store.compact()

    # -- nodes, storage ------------------------------------------------------------------------

    def add_node(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        gpus: int = 0,
        taints: Iterable[Taint] = (),
        cpu: str = "32",
        memory: str = "256Gi",
        pods: int = 110,
        ready: bool = True,
        unschedulable: bool = False,
        gpu_resource: str = "nvidia.com/gpu",
        extended: Mapping[str, str | int] | None = None,
        pod_cidr: str | None = None,
    ) -> dict[str, Any]:
        """Register a node as its kubelet does; ``cpu``/``memory``/``gpus`` are its allocatable (= capacity).

        A node that is not ready gets the ``node.kubernetes.io/not-ready:NoSchedule`` taint, as the
        node lifecycle controller's TaintNodesByCondition adds it. ``pod_cidr`` is the range its pods'
        IPs come from (``spec.podCIDR``/``podCIDRs``, as the node IPAM controller assigns them; see
        kubelet.py).
        """
        resources: dict[str, str] = {
            "cpu": str(cpu),
            "memory": str(memory),
            "pods": str(pods),
            "ephemeral-storage": "100Gi",
            "hugepages-2Mi": "0",
        }
        if gpus:
            resources[gpu_resource] = str(gpus)
        resources.update({k: str(v) for k, v in (extended or {}).items()})
        taint_list = [parse_taint(t) for t in taints]
        if not ready:
            taint_list.append({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"})
        stamp = now()
        ready_cond = (
            {"status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}
            if ready
            else {
                "status": "False",
                "reason": "KubeletNotReady",
                "message": "container runtime network not ready: NetworkReady=false",
            }
        )
        index = len(self.store.objects(("", "nodes"))) + 1
        minor = self.version_info()["minor"].rstrip("+")
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": "amd64",
                    **(labels or {}),
                },
            },
            "spec": {
                **({"taints": taint_list} if taint_list else {}),
                **({"unschedulable": True} if unschedulable else {}),
                **({"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]} if pod_cidr else {}),
            },
            "status": {
                "capacity": dict(resources),
                "allocatable": dict(resources),
                "conditions": [
                    {
                        "type": t,
                        "status": "False",
                        "reason": r,
                        "message": m,
                        "lastHeartbeatTime": stamp,
                        "lastTransitionTime": stamp,
                    }
                    for t, r, m in (
                        ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                        ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                        ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                    )
                ]
                + [{"type": "Ready", **ready_cond, "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}],
                "addresses": [
                    {"type": "InternalIP", "address": f"10.128.{index // 256}.{index % 256}"},
                    {"type": "Hostname", "address": name},
                ],
                "nodeInfo": {
                    "kubeletVersion": f"v1.{minor}.0",
                    "kubeProxyVersion": f"v1.{minor}.0",
                    "containerRuntimeVersion": "containerd://1.7.13",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "osImage": "Container-Optimized OS",
                    "kernelVersion": "6.1.0",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
            },
        }
        return self.create(node, manager="kubelet")

    def remove_node(self, name: str) -> None:
        """The node goes away (its pods are then deleted by pod GC on the next step)."""
        self.store.remove(("", "nodes"), "", name)

    def add_node_later(self, name: str, *, after_s: float | None = None, steps: int = 1, **node: Any) -> None:
        """A node that appears mid-wait: after ``after_s`` seconds, or at the start of the ``steps``-th step."""
        if after_s is not None:
            timer = threading.Timer(after_s, lambda: self.add_node(name, **node))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        else:
            self._later.append((steps, name, node))

    def add_storage_class(
        self,
        name: str,
        *,
        binding_mode: str = "WaitForFirstConsumer",
        default: bool = False,
        provisioner: str = "pd.csi.storage.gke.io",
        reclaim_policy: str = "Delete",
        parameters: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """A StorageClass (``default`` marks it with ``storageclass.kubernetes.io/is-default-class``)."""
        meta: dict[str, Any] = {"name": name}
        if default:
            meta["annotations"] = {"storageclass.kubernetes.io/is-default-class": "true"}
        sc = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": meta,
            "provisioner": provisioner,
            "reclaimPolicy": reclaim_policy,
            "volumeBindingMode": binding_mode,
            **({"parameters": dict(parameters)} if parameters else {}),
        }
        return self.create(sc)

    # -- kubelet, deployments, events --------------------------------------------------------

    def script(
        self,
        behaviour: Behaviour,
        *,
        container: str | None = None,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        pod_prefix: str | None = None,
    ) -> Script:
        """Make matching containers behave so (the last matching script wins); returns it for ``unscript``."""
        script = Script(behaviour, container, namespace, labels, pod_prefix)
        self.kubelet.scripts.append(script)
        return script

    def unscript(self, script: Script) -> None:
        """Remove a script: the containers it matched behave normally from the next pass."""
        self.kubelet.scripts.remove(script)

    def forward_pods(
        self, host: str, port_map: Mapping[int, int] | None = None, *, pod_prefix: str | None = None
    ) -> None:
        """Pods (those whose name starts with ``pod_prefix``) serve container port P at ``host``:``port_map.get(P, P)``.

        What the ``pods/NAME/portforward`` WebSocket (server.py) connects to, as the kubelet connects
        to the port inside the pod's network namespace; the last matching call wins. A pod without
        one refuses every port (an error on the error channel).
        """
        self._forwards.append((pod_prefix, host, dict(port_map or {})))

    def forward_target(self, pod: Mapping[str, Any], port: int) -> tuple[str, int] | None:
        """Where the pod's container port ``port`` is served (``forward_pods``), or None."""
        name = pod["metadata"]["name"]
        for prefix, host, port_map in reversed(self._forwards):
            if prefix is None or name.startswith(prefix):
                return host, port_map.get(port, port)
        return None

    def exceed_progress_deadline(self, namespace: str, name: str) -> None:
        """The Deployment's rollout times out (Progressing=False, ProgressDeadlineExceeded) on the next step."""
        self.controllers.exceed_progress_deadline(namespace, name)

    def emit(
        self,
        involved: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        component: str,
        *,
        host: str | None = None,
        field_path: str | None = None,
        action: str | None = None,
    ) -> dict[str, Any]:
        """Record an Event about ``involved`` from ``component`` (readable by list and watch, in both APIs).

        Without ``action`` as the legacy recorder writes it (``source``, ``count``); with one as the
        events.k8s.io recorder does (``eventTime``, ``reportingController``, ``series``).
        """
        return events.emit(
            self.store, involved, type_, reason, message, component, host=host, field_path=field_path, action=action
        )

    def events_for(self, name: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The stored events whose involvedObject is named ``name``."""
        return [e for e in self.store.objects(("", "events"), namespace) if e["involvedObject"].get("name") == name]

    # -- cluster-autoscaler (https://github.com/kubernetes/autoscaler/blob/master/cluster-autoscaler/FAQ.md) --

    def _status_configmap(self) -> dict[str, Any]:
        found = self.get("v1", "ConfigMap", "cluster-autoscaler-status", "kube-system")
        return found if found is not None else self.set_autoscaler_status()

    def set_autoscaler_status(self, text: str | None = None, *, scale_up: str = "NoActivity") -> dict[str, Any]:
        """Write kube-system/cluster-autoscaler-status; ``text`` verbatim, or a minimal status in CA's YAML form."""
        stamp = now()
        if text is None:
            nodes = len(self.store.objects(("", "nodes")))
            text = (
                f"time: {stamp}\nautoscalerStatus: Running\nclusterWide:\n  health:\n    status: Healthy\n"
                f"    nodeCounts:\n      registered:\n        total: {nodes}\n        ready: {nodes}\n"
                f'        notStarted: 0\n    lastProbeTime: "{stamp}"\n    lastTransitionTime: "{stamp}"\n'
                f'  scaleUp:\n    status: {scale_up}\n    lastProbeTime: "{stamp}"\n'
                f'    lastTransitionTime: "{stamp}"\n  scaleDown:\n    status: NoCandidates\n'
                f'    lastProbeTime: "{stamp}"\n    lastTransitionTime: "{stamp}"\n'
            )
        annotations = {"cluster-autoscaler.kubernetes.io/last-updated": stamp}
        existing = self.get("v1", "ConfigMap", "cluster-autoscaler-status", "kube-system")
        if existing is None:
            return self.create(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": "cluster-autoscaler-status",
                        "namespace": "kube-system",
                        "annotations": annotations,
                    },
                    "data": {"status": text},
                },
                manager="cluster-autoscaler",
            )

        def write(cm: dict[str, Any]) -> None:
            cm["data"] = {"status": text}
            cm["metadata"].setdefault("annotations", {}).update(annotations)

        out = self.store.mutate(
            ("", "configmaps"), "kube-system", "cluster-autoscaler-status", write, manager="cluster-autoscaler"
        )
        assert out is not None
        return out

    def unschedulable_pods(self) -> list[dict[str, Any]]:
        """Pods the scheduler marked PodScheduled=False/Unschedulable (what the autoscaler looks at)."""
        return [
            p
            for p in self.store.objects(("", "pods"))
            if any(
                c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
                for c in (p.get("status") or {}).get("conditions") or ()
            )
        ]

    def autoscaler_scale_up(
        self,
        group: str,
        node: str,
        *,
        current: int = 0,
        max_size: int = 10,
        after_s: float | None = None,
        steps: int = 1,
        **node_spec: Any,
    ) -> None:
        """CA scales ``group`` up for the unschedulable pods; ``node`` appears later (see ``add_node_later``).

        Events: ``TriggeredScaleUp`` ``pod triggered scale-up: [{GROUP 0->1 (max: 10)}]`` on each pod,
        ``ScaledUpGroup`` ``Scale-up: setting group GROUP size to 1 instead of 0 (max: 10)`` on the
        status ConfigMap (cluster-autoscaler/core/scaleup/orchestrator/executor.go).
        """
        new = current + 1
        for pod in self.unschedulable_pods():
            message = f"pod triggered scale-up: [{{{group} {current}->{new} (max: {max_size})}}]"
            self.emit(pod, "Normal", "TriggeredScaleUp", message, "cluster-autoscaler")
        self.set_autoscaler_status(scale_up="InProgress")
        message = f"Scale-up: setting group {group} size to {new} instead of {current} (max: {max_size})"
        self.emit(self._status_configmap(), "Normal", "ScaledUpGroup", message, "cluster-autoscaler")
        self.add_node_later(node, after_s=after_s, steps=steps, **node_spec)

    def autoscaler_no_scale_up(self, reasons: str = "1 max node group size reached") -> None:
        """CA finds no group to help: ``NotTriggerScaleUp`` ``pod didn't trigger scale-up: <reasons>`` on each pod."""
        for pod in self.unschedulable_pods():
            self.emit(
                pod, "Normal", "NotTriggerScaleUp", f"pod didn't trigger scale-up: {reasons}", "cluster-autoscaler"
            )

    def autoscaler_failed_scale_up(self, zones: str, error: str = "GCE out of resources") -> None:
        """A scale-up the cloud refused, in GKE's words: ``FailedScaleUp`` ``Node scale up in zones Z associated
        with this pod failed: GCE out of resources. Pod is at risk of not being scheduled.``"""
        message = f"Node scale up in zones {zones} associated with this pod failed: {error}. "
        message += "Pod is at risk of not being scheduled."
        for pod in self.unschedulable_pods():
            self.emit(pod, "Warning", "FailedScaleUp", message, "cluster-autoscaler")

    # -- running the controllers ---------------------------------------------------------------

    def step(self) -> None:
        """One pass of every component, in an order that lets a Deployment come up over a few steps."""
        with self.store.lock:
            due = [item for item in self._later if item[0] <= 1]
            self._later = [(n - 1, name, spec) for n, name, spec in self._later if n > 1]
            for _, name, spec in due:
                self.add_node(name, **spec)
            self.controllers.garbage_collector()
            self.controllers.namespaces()
            self.controllers.pod_gc()
            self.controllers.deployments()
            self.controllers.replicasets()
            self.controllers.jobs()
            volumes.sync_volumes(self.store)
            schedule(self.store)
            self.kubelet.sync()
            self.endpointslices.sync()  # after the kubelet: a readiness change shows in the same step

    def settle(self, max_steps: int = 30) -> int:
        """Step until a step changes nothing (or ``max_steps``); the number of steps taken."""
        for n in range(1, max_steps + 1):
            before = self.store.resource_version
            self.step()
            if self.store.resource_version == before and not self._later:
                return n
        return max_steps

    def run_controllers(self, interval: float = 0.05) -> ControllerLoop:
        """Run ``step`` in a background thread every ``interval`` s until the returned loop is stopped.

        Use it as a context manager, or let ``stop()`` end it.
        """
        loop = ControllerLoop(self, interval)
        self._loops.append(loop)
        return loop

    def wait_for(self, predicate: Callable[[], object], timeout_s: float = 5.0) -> None:
        """Poll ``predicate`` (under the store lock) until true; AssertionError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.store.lock:
                if predicate():
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"fake_kube: condition not met within {timeout_s} s")
            time.sleep(0.01)

    def stop_background(self) -> None:
        """Stop the controller loops and node timers; raise what broke a loop, if anything did."""
        for timer in self._timers:
            timer.cancel()
        problems: list[RuntimeError] = []
        for loop_ in list(self._loops):
            try:
                loop_.stop()
            except RuntimeError as exc:
                problems.append(exc)
        if problems:
            raise problems[0]
