"""A Kubernetes rolling update drops no request: the router follows the EndpointSlices to real backends (issue 15).

The engine Deployment and its Service are the ones ``render`` writes (maxSurge 0, maxUnavailable 1,
the drain's grace period); the fake API server rolls the Deployment as kube-controller-manager
does (tests/servers/fake_kube/workloads.py) when its pod template changes (an image upgrade). Each
node hands its pods IPs from a loopback range (127.0.1.0/24, 127.0.2.0/24: Linux routes all of
127/8 to ``lo``), and a real fake engine listens at each pod's IP and port, started when the pod
gets its IP; the kubelet's HTTP readiness probe makes the pod ready once it answers, and a deleted
pod's containers take ``STOP_S`` to exit (its preStop drain), after which its engine is killed. The
router runs in-process with ``discover`` set as the rendered router Deployment sets it, and
reaches the pods straight at the addresses the EndpointSlices list.

What it asserts: no failed request and no router retry before or during the rollout; requests
reached every new backend; none reached an old backend later than ``PROPAGATION_S`` after its pod
was marked terminating (the measured delay is printed); the requests an old pod held when it was
marked terminating finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.kubernetes import scenario
from tests.servers.fake_engine import argv, free_port
from tests.servers.fake_kube import FakeKube, Run
from vllm_fleet.plan import Plan
from vllm_fleet.router.backends import PoolSettings
from vllm_fleet.router.config import RouterConfig
from vllm_fleet.router.proxy import BACKEND_HEADER
from vllm_fleet.router.server import Router
from vllm_fleet.targets.kubernetes.manifests.render import render
from vllm_fleet.targets.kubernetes.manifests.router import discover_target

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NS = scenario.NS
OLD, NEW = "registry.example/vllm-fleet:1.0", "registry.example/vllm-fleet:1.1"
CLIENTS = 4
DELAY_MS = 100  # each answer takes this long: an old pod always holds requests when it is marked terminating
STOP_S = 2.5  # a deleted pod's containers take this long to exit (its preStop drain, then SIGTERM)
PROPAGATION_S = 1.0  # terminating -> the router sends it nothing new: the allowance asserted (2 busy cores)
BEFORE_S = 3.0
ENGINE_COMPONENT = {"app.kubernetes.io/component": "engine"}


def _plan(image: str, port: int) -> Plan:
    spec = scenario.SPEC.replace(OLD, image) + "availability: {drain_timeout_s: 5}\n"
    return scenario.plan_of(replicas=2, extra=f", port: {port}", spec=spec)


def _rendered(plan: Plan) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in render(plan)}


def _cluster(kube: FakeKube) -> None:
    """A CPU node and two GPU nodes (as scenario.ready_cluster) whose pods get loopback IPs."""
    kube.add_node("cpu-0")
    for i in range(2):
        kube.add_node(
            f"gpu-{i}", labels=scenario.GKE_L4, gpus=1, taints=scenario.GPU_TAINT, pod_cidr=f"127.0.{i + 1}.0/24"
        )
    kube.add_storage_class("fast-ssd", binding_mode="WaitForFirstConsumer")
    kube.kubelet.http_probes = True  # ready once the real engine at the pod's IP answers /health
    kube.script(Run(stop_s=STOP_S), container="vllm")


@dataclass
class Pod:
    """One engine pod as the test follows it: its backend process and when things happened to it."""

    name: str
    url: str
    image: str
    proc: subprocess.Popen
    terminating_at: float | None = None  # its deletionTimestamp seen
    dropped_at: float | None = None  # its URL gone from the router's pool
    gone_at: float | None = None  # the pod deleted for good; its engine killed then


@dataclass
class Pods:
    """Starts a real engine at each engine pod's IP, kills it when the pod is gone, and times both."""

    kube: FakeKube
    port: int
    router: Router | None = None
    pods: dict[str, Pod] = field(default_factory=dict)  # by uid
    most: int = 0  # the most engine pods not terminating at once (maxSurge 0: never above replicas)

    def poll(self) -> None:
        now = time.monotonic()
        seen = {
            p["metadata"]["uid"]: p
            for p in self.kube.objects("v1", "Pod", NS)
            if all(p["metadata"].get("labels", {}).get(k) == v for k, v in ENGINE_COMPONENT.items())
        }
        self.most = max(self.most, sum(1 for p in seen.values() if not p["metadata"].get("deletionTimestamp")))
        for uid, p in seen.items():
            ip = (p.get("status") or {}).get("podIP")
            if ip and uid not in self.pods:
                flags = ("--host", ip, "--delay-ms", str(DELAY_MS), "--models", "qwen")
                proc = subprocess.Popen(
                    argv(self.port, *flags), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
                )
                image = next(c["image"] for c in p["spec"]["containers"] if c["name"] == "vllm")
                self.pods[uid] = Pod(p["metadata"]["name"], f"http://{ip}:{self.port}", image, proc)
            pod = self.pods.get(uid)
            if pod is not None and pod.terminating_at is None and p["metadata"].get("deletionTimestamp"):
                pod.terminating_at = now
        for uid, pod in self.pods.items():
            router = self.router
            if pod.terminating_at is not None and pod.dropped_at is None and router is not None:
                pod.dropped_at = None if pod.url in router.pool.backends else now
            if uid not in seen and pod.gone_at is None:
                pod.gone_at = now
                self.kill(pod)

    @staticmethod
    def kill(pod: Pod) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pod.proc.pid, signal.SIGKILL)
        pod.proc.wait(timeout=10)

    async def follow(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(0.01)

    def of(self, image: str) -> list[Pod]:
        return [p for p in self.pods.values() if p.image == image]


@dataclass(frozen=True)
class Result:
    started: float
    ended: float
    ok: bool
    backend: str
    error: str = ""


async def _client(session: aiohttp.ClientSession, url: str, stop: asyncio.Event, out: list[Result]) -> None:
    while not stop.is_set():
        # a prompt of its own each: the router's default prefix affinity would send one repeated prompt to one pod
        content = f"{os.urandom(8).hex()} hi"
        body = json.dumps({"model": "qwen", "messages": [{"role": "user", "content": content}], "max_tokens": 4})
        started = time.monotonic()
        try:
            async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
                raw = await resp.read()
                ok = resp.status == 200 and bool(json.loads(raw)["choices"])
                error = "" if ok else f"{resp.status} {raw[:200]!r}"
                out.append(Result(started, time.monotonic(), ok, resp.headers.get(BACKEND_HEADER, ""), error))
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as exc:
            out.append(Result(started, time.monotonic(), False, "", f"{type(exc).__name__}: {exc}"))


def _figures(results: list[Result]) -> str:
    ok = [r.ended - r.started for r in results if r.ok]
    failed = len(results) - len(ok)
    if len(ok) < 2:
        return f"completed {len(ok)}, failed {failed}"
    p50, p95 = statistics.median(ok), statistics.quantiles(ok, n=20)[-1]
    return f"completed {len(ok)}, failed {failed}, latency p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"


async def _until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


def test_a_rolling_update_fails_no_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # free on 127.0.0.1 now, so no wildcard listener holds it on the 127.0.x.y pod IPs
    old_plan, new_plan = _plan(OLD, port), _plan(NEW, port)
    objects = _rendered(old_plan)
    deployment = objects[("Deployment", "qwen")]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > STOP_S  # the pods leave when their drain ends, not when the kubelet kills them

    with FakeKube(namespaces=[NS]) as kube:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path / "kubeconfig", namespace=NS)))
        _cluster(kube)
        for key in (
            ("ServiceAccount", "qwen"),
            ("PersistentVolumeClaim", "qwen-cache"),
            ("Deployment", "qwen"),
            ("Service", "qwen-engine"),
        ):
            kube.create(objects[key], manager="kubectl")
        pods = Pods(kube, port)

        async def body() -> None:
            follower = asyncio.create_task(pods.follow())
            pool = PoolSettings(health_interval_s=0.5, health_timeout_s=1.0, scrape_interval_s=60.0, eject_after=3)
            config = RouterConfig(
                discover=discover_target(old_plan), port=0, pool=pool, shutdown_timeout_s=2.0, access_log=False
            )
            router = Router(config)
            pods.router = router
            results: list[Result] = []
            stop = asyncio.Event()
            try:
                with kube.run_controllers(0.05):
                    await router.start()

                    def serving(image: str) -> bool:
                        urls = {p.url for p in pods.of(image) if p.terminating_at is None}
                        backends = router.pool.backends
                        return len(urls) == 2 and set(backends) == urls and all(b.healthy for b in backends.values())

                    await _until(lambda: serving(OLD), 30, "two old pods ready and healthy in the router")
                    timeout = aiohttp.ClientTimeout(total=30)
                    async with aiohttp.ClientSession(timeout=timeout) as session:
                        url = f"{router.url}/v1/chat/completions"
                        clients = [asyncio.create_task(_client(session, url, stop, results)) for _ in range(CLIENTS)]
                        await asyncio.sleep(BEFORE_S)
                        t_update = time.monotonic()
                        template = _rendered(new_plan)[("Deployment", "qwen")]["spec"]["template"]
                        kube.update_as(
                            "kubectl", "apps/v1", "Deployment", "qwen",
                            lambda d: d["spec"].update(template=template), namespace=NS,
                        )  # fmt: skip

                        def rolled() -> bool:
                            old = pods.of(OLD)
                            return serving(NEW) and len(old) == 2 and all(p.gone_at for p in old)

                        await _until(rolled, 60, "the rollout to finish and the old pods to go")
                        t_done = time.monotonic()
                        await asyncio.sleep(1.0)  # the last new pod gets its share too
                        stop.set()
                        await asyncio.gather(*clients)

                    def complete() -> bool:  # what `kubectl rollout status` waits for
                        status = (kube.get("apps/v1", "Deployment", "qwen", NS) or {}).get("status") or {}
                        counts = [status.get(k) for k in ("replicas", "updatedReplicas", "availableReplicas")]
                        progressing = [c for c in status.get("conditions") or () if c["type"] == "Progressing"]
                        return counts == [2, 2, 2] and progressing[0]["reason"] == "NewReplicaSetAvailable"

                    kube.wait_for(complete, timeout_s=5)
                    retries = sum(
                        s.value
                        for metric in router.metrics.retries.collect()
                        for s in metric.samples
                        if s.name.endswith("_total")
                    )
            finally:
                stop.set()
                await router.stop()
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
                for pod in pods.pods.values():
                    if pod.gone_at is None:
                        pods.kill(pod)

            before = [r for r in results if r.started < t_update]
            during = [r for r in results if t_update <= r.started < t_done]
            print(f"\nbefore the update ({BEFORE_S:.0f} s, 2 old pods, {CLIENTS} clients): {_figures(before)}")
            print(f"during the rolling update ({t_done - t_update:.1f} s): {_figures(during)}")
            after = [r for r in results if r.started >= t_done]
            print(f"after it (the last 1 s, 2 new pods): {_figures(after)}")
            print(f"router retries: {retries:g}")
            held_in_all = 0
            for pod in pods.of(OLD):
                assert pod.terminating_at is not None and pod.dropped_at is not None and pod.gone_at is not None
                delay = pod.dropped_at - pod.terminating_at
                held = [r for r in results if r.backend == pod.url and r.started < pod.terminating_at < r.ended]
                late = [r for r in results if r.backend == pod.url and r.started > pod.terminating_at + PROPAGATION_S]
                served = sum(1 for r in results if r.backend == pod.url and r.ok)
                print(
                    f"old {pod.name} ({pod.url}): served {served}; terminating -> dropped by the router "
                    f"{delay * 1000:.0f} ms, -> gone {pod.gone_at - pod.terminating_at:.2f} s; {len(held)} in flight "
                    f"then, all finished; {len(late)} sent later than {PROPAGATION_S} s after"
                )
                assert delay < PROPAGATION_S and not late, (delay, late)
                assert all(r.ok for r in held), held
                held_in_all += len(held)
            assert held_in_all > 0  # the drain was tested: terminating pods had requests to finish
            for pod in pods.of(NEW):
                served = sum(1 for r in results if r.backend == pod.url and r.ok)
                print(f"new {pod.name} ({pod.url}): served {served}")
                assert served > 0, pod
            # the rollout as rolling.go steps it with maxSurge 0, maxUnavailable 1: one old pod goes first
            old_rs, new_rs = (f"qwen-{pods.of(image)[0].name.split('-')[1]}" for image in (OLD, NEW))
            scaling = sorted(
                (e for e in kube.events_for("qwen", NS) if e["reason"] == "ScalingReplicaSet"),
                key=lambda e: int(e["metadata"]["resourceVersion"]),
            )
            assert [e["message"] for e in scaling] == [
                f"Scaled up replica set {old_rs} from 0 to 2",
                f"Scaled down replica set {old_rs} from 2 to 1",
                f"Scaled up replica set {new_rs} from 0 to 1",
                f"Scaled down replica set {old_rs} from 1 to 0",
                f"Scaled up replica set {new_rs} from 1 to 2",
            ]
            assert pods.most == 2, pods.most
            failures = [r.error for r in results if not r.ok]
            assert not failures, failures[:5]
            assert retries == 0, retries

        asyncio.run(body())
