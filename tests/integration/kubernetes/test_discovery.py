"""The router's EndpointSlice discovery against the fake API server, through the real lightkube AsyncClient.

The fake's EndpointSlice controller (tests/servers/fake_kube/endpointslices.py) derives the slices
of a Service from its pods as kube-controller-manager does; the router follows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient, KubeConfig

from tests.servers.fake_kube import FakeKube, NotReady
from vllm_fleet.router.discovery import follow_endpointslices

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PORT = 8000


def _setup(kube: FakeKube, replicas: int = 2) -> None:
    kube.add_node("n1")
    kube.create({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "engine", "namespace": "default", "labels": {"app": "engine"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "engine"}},
            "template": {"metadata": {"labels": {"app": "engine"}}, "spec": {"containers": [{
                "name": "vllm", "image": "vllm/vllm-openai:v0.6.0",
                "ports": [{"name": "http", "containerPort": PORT}],
            }]}},
        },
    }, manager="kubectl")  # fmt: skip
    kube.create({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "engine", "namespace": "default", "labels": {"app": "engine"}},
        "spec": {"selector": {"app": "engine"}, "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]},
    }, manager="kubectl")  # fmt: skip


def _pods(kube: FakeKube) -> list[dict[str, Any]]:
    return [p for p in kube.objects("v1", "Pod", "default") if p["metadata"]["labels"].get("app") == "engine"]


def _url(pod: dict[str, Any]) -> str:
    return f"http://{pod['status']['podIP']}:{PORT}"


class Seen:
    """What ``on_change`` was called with, and a way to wait for a call that satisfies a predicate."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, urls: list[str]) -> None:
        self.calls.append(urls)

    async def until(self, predicate: Callable[[list[str]], bool], timeout_s: float = 10.0) -> list[str]:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not (self.calls and predicate(self.calls[-1])):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"discovery never saw it; calls: {self.calls}")
            await asyncio.sleep(0.02)
        return self.calls[-1]


@contextlib.asynccontextmanager
async def following(kubeconfig: Path, seen: Seen) -> AsyncIterator[None]:
    client = AsyncClient(config=KubeConfig.from_file(kubeconfig).get())
    task = asyncio.create_task(follow_endpointslices("default", "engine", PORT, seen, client=client))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


def _ready_urls(kube: FakeKube) -> list[str]:
    ready = [
        p
        for p in _pods(kube)
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", ()))
    ]
    return sorted(_url(p) for p in ready)


def test_two_ready_pods_then_not_ready_terminating_and_new_pods(tmp_path: Path) -> None:
    with FakeKube() as kube:
        kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
        _setup(kube)
        seen = Seen()

        async def body() -> None:
            with kube.run_controllers(0.02):
                kube.wait_for(lambda: len(_ready_urls(kube)) == 2)
                async with following(kubeconfig, seen):
                    first = await seen.until(lambda urls: len(urls) == 2)
                    assert first == _ready_urls(kube) and all(u.startswith("http://10.") for u in first)
                    one, two = sorted(_pods(kube), key=_url)

                    # failing readiness: no new requests
                    script = kube.script(NotReady(), pod_prefix=one["metadata"]["name"])
                    assert await seen.until(lambda urls: len(urls) == 1) == [_url(two)]
                    kube.unscript(script)
                    await seen.until(lambda urls: len(urls) == 2)

                    # terminating (held by a finalizer, as while its preStop drain runs): dropped at once,
                    # though still listed in the slice with ready false and terminating true
                    kube.update_as(
                        "test", "v1", "Pod", two["metadata"]["name"],
                        lambda p: p["metadata"].setdefault("finalizers", []).append("example.com/hold"),
                        namespace="default",
                    )  # fmt: skip
                    kube.delete("v1", "Pod", two["metadata"]["name"], "default")
                    assert _url(two) not in await seen.until(lambda urls: _url(two) not in urls)
                    (piece,) = kube.objects("discovery.k8s.io/v1", "EndpointSlice", "default")
                    held = next(e for e in piece["endpoints"] if e["targetRef"]["name"] == two["metadata"]["name"])
                    assert held["conditions"] == {"ready": False, "serving": True, "terminating": True}

                    # the ReplicaSet's replacement appears once it is ready
                    now = await seen.until(lambda urls: len(urls) == 2)
                    assert _url(one) in now and _url(two) not in now
                    kube.update_as(
                        "test", "v1", "Pod", two["metadata"]["name"],
                        lambda p: p["metadata"].update(finalizers=[]), namespace="default",
                    )  # fmt: skip
            assert all(a != b for a, b in zip(seen.calls, seen.calls[1:], strict=False))  # only changes are told

        asyncio.run(body())


def test_the_union_over_several_slices(tmp_path: Path) -> None:
    with FakeKube() as kube:
        kube.endpointslices.max_endpoints_per_slice = 1
        kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
        _setup(kube, replicas=3)
        seen = Seen()

        async def body() -> None:
            with kube.run_controllers(0.02):
                kube.wait_for(lambda: len(_ready_urls(kube)) == 3)
                async with following(kubeconfig, seen):
                    assert await seen.until(lambda urls: len(urls) == 3) == _ready_urls(kube)
                    assert len(kube.objects("discovery.k8s.io/v1", "EndpointSlice", "default")) == 3
                    kube.update_as(
                        "kubectl", "apps/v1", "Deployment", "engine",
                        lambda d: d["spec"].update(replicas=1), namespace="default",
                    )  # fmt: skip
                    await seen.until(lambda urls: len(urls) == 1)
                    kube.wait_for(lambda: len(kube.objects("discovery.k8s.io/v1", "EndpointSlice", "default")) == 1)

        asyncio.run(body())


def test_the_watch_ending_or_expiring_is_reestablished(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with FakeKube(watch_timeout_s=0.3) as kube:  # every watch ends after 0.3 s, as after --min-request-timeout
        kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
        _setup(kube, replicas=1)
        seen = Seen()

        def requests(watch: bool) -> int:
            return sum(
                1
                for m, p, q in kube.requests
                if m == "GET" and p.endswith("/endpointslices") and bool(q.get("watch")) == watch
            )

        async def body() -> None:
            with kube.run_controllers(0.02):
                kube.wait_for(lambda: len(_ready_urls(kube)) == 1)
                async with following(kubeconfig, seen):
                    await seen.until(lambda urls: len(urls) == 1)
                    await asyncio.sleep(1.0)
                    assert requests(watch=True) >= 3 and requests(watch=False) == 1  # resumed, no re-list
                    # history compacted while between watches: the resume answers 410, discovery lists again
                    kube.create(
                        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "default"}}
                    )
                    kube.compact()
                    await asyncio.sleep(0.8)
                    assert requests(watch=False) >= 2
                    kube.update_as(
                        "kubectl", "apps/v1", "Deployment", "engine",
                        lambda d: d["spec"].update(replicas=2), namespace="default",
                    )  # fmt: skip
                    assert await seen.until(lambda urls: len(urls) == 2) == _ready_urls(kube)

        with caplog.at_level(logging.WARNING, logger="vllm_fleet.router.discovery"):
            asyncio.run(body())
        assert not caplog.records  # neither an ended watch nor a 410 is an error


def test_an_unreachable_api_is_retried_with_one_line_a_try(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with FakeKube() as kube:
        kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
        _setup(kube, replicas=1)
        kube.deny("list", "discovery.k8s.io", "endpointslices")
        seen = Seen()

        async def body() -> None:
            with kube.run_controllers(0.02):
                kube.wait_for(lambda: len(_ready_urls(kube)) == 1)
                async with following(kubeconfig, seen):
                    await asyncio.sleep(0.8)
                    assert seen.calls == []
                    kube.denied.clear()
                    assert await seen.until(lambda urls: len(urls) == 1, timeout_s=5) == _ready_urls(kube)

        with caplog.at_level(logging.WARNING, logger="vllm_fleet.router.discovery"):
            asyncio.run(body())
        lines = [r.getMessage() for r in caplog.records]
        assert lines and all("default/engine" in line and "403" in line and "\n" not in line for line in lines)
