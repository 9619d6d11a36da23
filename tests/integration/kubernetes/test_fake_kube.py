"""The fake Kubernetes API server, spoken to by the real lightkube AsyncClient over HTTP on 127.0.0.1.

Each test starts its own FakeKube (the ``fake_kube`` fixture) and a client from the kubeconfig it
writes. Raw ``httpx`` is used where lightkube has no call for the request (``/version``,
``previous=true`` logs) or to see a response byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import httpx
import httpx2
import pytest
from lightkube import ApiError, AsyncClient, KubeConfig, operators
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.core_v1 import Container
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment, ReplicaSet
from lightkube.resources.authorization_v1 import SelfSubjectAccessReview
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import (
    ConfigMap,
    Event,
    Namespace,
    PersistentVolumeClaim,
    Pod,
    Secret,
    ServiceAccount,
)
from lightkube.resources.events_v1 import Event as EventV1
from lightkube.types import CascadeType

from tests.servers.fake_kube import CrashLoop, Exit, FakeKube, ImagePullError, Starting, fixture
from tests.servers.fake_kube.scheduler import pod_requests, quantity

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

fake_kube = fixture.fake_kube
fake_kubeconfig = fixture.fake_kubeconfig
T = TypeVar("T")
ServiceMonitor = create_namespaced_resource("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors")


def run(kubeconfig: Path, body: Callable[[AsyncClient], Awaitable[T]]) -> T:
    """Run ``body`` with a lightkube AsyncClient configured from ``kubeconfig``."""

    async def main() -> T:
        client = AsyncClient(config=KubeConfig.from_file(kubeconfig).get())
        try:
            return await body(client)
        finally:
            await client.close()

    return asyncio.run(main())


def deployment(name: str = "web", *, replicas: int = 1, image: str = "vllm/vllm-openai:v0.6.0", **pod: Any) -> Any:
    """A Deployment with one container ``vllm`` (extra pod-spec fields from ``pod``)."""
    return Deployment.from_dict(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "vllm", "image": image}], **pod},
                },
            },
        }
    )


def gpu_pod(name: str, gpus: int = 1, **spec: Any) -> Any:
    """A bare pod asking for ``gpus`` nvidia.com/gpu."""
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return Pod.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "vllm", "image": "vllm:1", "resources": resources}], **spec},
        }
    )


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound, never listening) while the context is open."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- the wire: version, authentication ------------------------------------------------------------


def test_version_is_settable_and_served_as_version_info(fake_kube: FakeKube) -> None:
    fake_kube.version = "1.28"
    headers = {"Authorization": f"Bearer {fake_kube.token}"}
    info = httpx.get(f"{fake_kube.url}/version", headers=headers).json()
    assert (info["major"], info["minor"], info["gitVersion"]) == ("1", "28", "v1.28.0")


def test_requests_without_the_token_get_401_status(fake_kube: FakeKube, tmp_path: Path) -> None:
    response = httpx.get(f"{fake_kube.url}/api/v1/namespaces")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
    fake_kube.token = "rotated"
    stale = fake_kube.kubeconfig(tmp_path / "stale")
    fake_kube.token = "fake-token"
    with pytest.raises(ApiError) as err:
        run(stale, lambda c: c.get(ConfigMap, "x", namespace="default"))
    assert (err.value.status.code, err.value.status.reason) == (401, "Unauthorized")


def test_anonymous_requests_may_read_version_only(tmp_path: Path) -> None:
    with FakeKube(anonymous_auth=True) as kube:
        assert httpx.get(f"{kube.url}/version").json()["minor"] == "30"
        forbidden = httpx.get(f"{kube.url}/api/v1/pods")
        assert forbidden.status_code == 403 and forbidden.json()["reason"] == "Forbidden"
        assert httpx.get(f"{kube.url}/version", headers={"Authorization": "Bearer wrong"}).status_code == 401


# -- create, get, list, selectors -----------------------------------------------------------------


def test_create_get_and_list_with_label_and_field_selectors(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    async def body(c: AsyncClient) -> None:
        for name, tier in (("a", "web"), ("b", "db"), ("c", None)):
            labels = {"app": "shop", **({"tier": tier} if tier else {})}
            created = await c.create(ConfigMap(metadata=ObjectMeta(name=name, namespace="default", labels=labels)))
            assert created.metadata.uid and created.metadata.creationTimestamp
        got = await c.get(ConfigMap, "a", namespace="default")
        assert got.metadata.labels == {"app": "shop", "tier": "web"}

        async def names(**selectors: Any) -> list[str]:
            return [cm.metadata.name async for cm in c.list(ConfigMap, namespace="default", **selectors)]

        assert await names(labels={"tier": "web"}) == ["a"]
        assert await names(labels={"tier": operators.not_equal("web")}) == ["b", "c"]  # != matches absent keys
        assert await names(labels={"tier": operators.in_(["web", "db"])}) == ["a", "b"]
        assert await names(labels={"tier": operators.not_in(["web"])}) == ["b", "c"]
        assert await names(labels={"tier": operators.exists()}) == ["a", "b"]
        assert await names(labels={"tier": operators.not_exists()}) == ["c"]
        assert await names(fields={"metadata.name": "b"}) == ["b"]
        listing = c.list(ConfigMap, namespace="default", chunk_size=2)
        assert [cm.metadata.name async for cm in listing] == ["a", "b", "c"]
        assert int(listing.resourceVersion) >= int(got.metadata.resourceVersion)

        with pytest.raises(ApiError) as err:
            await c.get(ConfigMap, "nope", namespace="default")
        assert err.value.status.code == 404 and err.value.status.reason == "NotFound"
        assert err.value.status.message == 'configmaps "nope" not found'
        with pytest.raises(ApiError) as err:
            await c.create(ConfigMap(metadata=ObjectMeta(name="a", namespace="default")))
        assert (err.value.status.code, err.value.status.reason) == (409, "AlreadyExists")
        with pytest.raises(ApiError) as err:
            await c.create(ConfigMap(metadata=ObjectMeta(namespace="default")))
        assert err.value.status.code == 422
        assert err.value.status.message == (
            'ConfigMap "" is invalid: metadata.name: Required value: name or generateName is required'
        )
        with pytest.raises(ApiError) as err:
            await c.create(ConfigMap(metadata=ObjectMeta(name="x", namespace="missing")))
        assert err.value.status.message == 'namespaces "missing" not found'
        with pytest.raises(ApiError) as err:
            await names(fields={"spec.nodeName": "n1"})
        assert (err.value.status.code, err.value.status.message) == (400, "field label not supported: spec.nodeName")

    run(fake_kubeconfig, body)


def test_list_items_and_pods_across_namespaces(fake_kube: FakeKube) -> None:
    fake_kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    for ns in ("default", "other"):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p-{ns}", "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }
        fake_kube.create(pod)
    headers = {"Authorization": f"Bearer {fake_kube.token}"}
    listing = httpx.get(f"{fake_kube.url}/api/v1/pods", headers=headers).json()
    assert listing["kind"] == "PodList" and listing["metadata"]["resourceVersion"]
    assert [p["metadata"]["namespace"] for p in listing["items"]] == ["default", "other"]
    assert "kind" not in listing["items"][0]  # typed lists carry no kind on their items
    assert listing["items"][0]["status"] == {"phase": "Pending", "qosClass": "BestEffort"}


# -- server-side apply ----------------------------------------------------------------------------


def test_apply_creates_and_unchanged_reapply_keeps_the_resource_version(fake_kubeconfig: Path) -> None:
    async def body(c: AsyncClient) -> None:
        created = await c.apply(deployment(), field_manager="vllm-fleet")
        assert created.metadata.generation == 1
        assert [(m.manager, m.operation) for m in created.metadata.managedFields] == [("vllm-fleet", "Apply")]
        again = await c.apply(deployment(), field_manager="vllm-fleet")
        assert again.metadata.resourceVersion == created.metadata.resourceVersion
        scaled = await c.apply(deployment(replicas=3), field_manager="vllm-fleet")
        assert int(scaled.metadata.resourceVersion) > int(created.metadata.resourceVersion)
        assert (scaled.metadata.generation, scaled.spec.replicas) == (2, 3)
        # defaults the server fills are nobody's: a re-apply leaves them alone
        assert scaled.spec.strategy.type == "RollingUpdate" and scaled.spec.progressDeadlineSeconds == 600

    run(fake_kubeconfig, body)


def test_apply_conflict_is_409_in_the_servers_words_and_force_takes_the_field(
    fake_kube: FakeKube, fake_kubeconfig: Path
) -> None:
    async def body(c: AsyncClient) -> None:
        await c.apply(deployment(replicas=2), field_manager="vllm-fleet")

        def scale(d: dict[str, Any]) -> None:
            d["spec"]["replicas"] = 5

        fake_kube.update_as("kubectl", "apps/v1", "Deployment", "web", scale, namespace="default")
        with pytest.raises(ApiError) as err:
            await c.apply(deployment(replicas=2), field_manager="vllm-fleet")
        status = err.value.status
        assert (status.code, status.reason) == (409, "Conflict")
        assert status.message == 'Apply failed with 1 conflict: conflict with "kubectl" using apps/v1: .spec.replicas'
        assert status.details.causes[0].field == ".spec.replicas"

        def retag(d: dict[str, Any]) -> None:
            d["spec"]["template"]["spec"]["containers"][0]["image"] = "vllm/vllm-openai:v0.5.0"

        fake_kube.update_as("kubectl", "apps/v1", "Deployment", "web", retag, namespace="default")
        with pytest.raises(ApiError) as err:
            await c.apply(deployment(replicas=2), field_manager="vllm-fleet")
        assert err.value.status.message == (
            'Apply failed with 2 conflicts: conflicts with "kubectl" using apps/v1:\n'
            "- .spec.replicas\n"
            '- .spec.template.spec.containers[name="vllm"].image'
        )
        # the same value as the other owner is shared ownership, not a conflict
        shared = await c.apply(deployment(replicas=5, image="vllm/vllm-openai:v0.5.0"), field_manager="vllm-fleet")
        assert shared.spec.replicas == 5
        forced = await c.apply(deployment(replicas=2), field_manager="vllm-fleet", force=True)
        assert forced.spec.replicas == 2
        # both fields moved to the applier; a manager left with no field drops out of managedFields
        assert [m.manager for m in forced.metadata.managedFields] == ["vllm-fleet"]
        assert "f:replicas" in forced.metadata.managedFields[0].fieldsV1["f:spec"]

    run(fake_kubeconfig, body)


def test_apply_removes_fields_its_manager_stopped_applying(fake_kubeconfig: Path) -> None:
    async def body(c: AsyncClient) -> None:
        cm = ConfigMap(
            metadata=ObjectMeta(name="cfg", namespace="default", labels={"a": "1", "b": "2"}), data={"k": "v"}
        )
        await c.apply(cm, field_manager="vllm-fleet")
        await c.apply(
            ConfigMap(metadata=ObjectMeta(name="cfg", namespace="default", labels={"a": "1"})), field_manager="other"
        )
        trimmed = ConfigMap(metadata=ObjectMeta(name="cfg", namespace="default"), data={"k": "v"})
        out = await c.apply(trimmed, field_manager="vllm-fleet")
        assert out.metadata.labels == {"a": "1"}  # b: only vllm-fleet had it; a: "other" still applies it
        assert out.data == {"k": "v"}
        two = deployment(replicas=1)
        two.spec.template.spec.containers.append(Container(name="prefetch", image="vllm-fleet:1"))
        await c.apply(two, field_manager="vllm-fleet")
        one = await c.apply(deployment(replicas=1), field_manager="vllm-fleet")
        assert [x.name for x in one.spec.template.spec.containers] == ["vllm"]

    run(fake_kubeconfig, body)


def test_apply_without_field_manager_is_invalid(fake_kube: FakeKube) -> None:
    response = httpx.patch(
        f"{fake_kube.url}/api/v1/namespaces/default/configmaps/x",
        content=b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        headers={"Authorization": f"Bearer {fake_kube.token}", "Content-Type": "application/apply-patch+yaml"},
    )
    assert response.status_code == 422
    assert response.json()["message"] == (
        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch'
    )


def test_dry_run_answers_as_if_and_stores_nothing(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    async def body(c: AsyncClient) -> None:
        before = fake_kube.store.resource_version
        out = await c.apply(deployment(), field_manager="vllm-fleet", dry_run=True)
        assert out.metadata.name == "web" and out.spec.replicas == 1
        created = await c.create(ConfigMap(metadata=ObjectMeta(name="x", namespace="default")), dry_run=True)
        assert created.metadata.uid
        assert fake_kube.store.resource_version == before
        assert fake_kube.get("apps/v1", "Deployment", "web", "default") is None
        await c.create(ConfigMap(metadata=ObjectMeta(name="y", namespace="default")))
        await c.delete(ConfigMap, "y", namespace="default", dry_run=True)
        assert (await c.get(ConfigMap, "y", namespace="default")).metadata.name == "y"

    run(fake_kubeconfig, body)


# -- watch ----------------------------------------------------------------------------------------


def test_watch_sees_added_then_modified_as_the_controllers_run(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    fake_kube.add_node("n1")

    async def body(c: AsyncClient) -> list[tuple[str, int]]:
        await c.apply(deployment(), field_manager="vllm-fleet")
        seen: list[tuple[str, int]] = []

        async def collect() -> None:
            async for op, d in c.watch(Deployment, namespace="default", fields={"metadata.name": "web"}):
                seen.append((op, (d.status.availableReplicas or 0) if d.status else 0))
                if seen[-1][1] == 1:
                    return

        task = asyncio.create_task(collect())
        while not fake_kube.store.watchers():
            await asyncio.sleep(0.01)
        with fake_kube.run_controllers(0.02):
            await asyncio.wait_for(task, 5)
        return seen

    seen = run(fake_kubeconfig, body)
    assert seen[0] == ("ADDED", 0)  # a watch without resourceVersion starts with the current object
    assert seen[-1] == ("MODIFIED", 1) and all(op == "MODIFIED" for op, _ in seen[1:])


def test_watch_from_a_resource_version_replays_and_an_expired_one_is_410(
    fake_kube: FakeKube, fake_kubeconfig: Path
) -> None:
    async def body(c: AsyncClient) -> None:
        await c.create(ConfigMap(metadata=ObjectMeta(name="a", namespace="default", labels={"w": "yes"})))
        listing = c.list(ConfigMap, namespace="default")
        _ = [x async for x in listing]
        start = listing.resourceVersion
        await c.patch(ConfigMap, "a", {"data": {"k": "v"}}, namespace="default")
        await c.patch(ConfigMap, "a", {"metadata": {"labels": {"w": "no"}}}, namespace="default")
        events = []
        async for op, cm in c.watch(ConfigMap, namespace="default", labels={"w": "yes"}, resource_version=start):
            events.append((op, cm.data))
            if op == "DELETED":
                break
        # a change that takes the object out of the selector reaches the watcher as DELETED
        assert events == [("MODIFIED", {"k": "v"}), ("DELETED", {"k": "v"})]
        fake_kube.compact()
        with pytest.raises(ApiError) as err:
            async for _ in c.watch(ConfigMap, namespace="default", resource_version=start):
                pass
        assert (err.value.status.code, err.value.status.reason) == (410, "Expired")
        assert err.value.status.message.startswith(f"too old resource version: {start} (")

    run(fake_kubeconfig, body)


# -- custom resources -----------------------------------------------------------------------------


def test_a_custom_resource_is_404_until_its_crd_exists(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    monitor = ServiceMonitor(metadata=ObjectMeta(name="m", namespace="default"), spec={"endpoints": [{"port": "http"}]})

    async def body(c: AsyncClient) -> None:
        with pytest.raises(httpx2.HTTPStatusError) as err:
            await c.apply(monitor, field_manager="vllm-fleet")
        # the real server's last handler is http.NotFound: plain text, so lightkube raises no ApiError
        assert not isinstance(err.value, ApiError)
        assert err.value.response.status_code == 404
        assert err.value.response.text == "404 page not found\n"
        fake_kube.install_crd("servicemonitors.monitoring.coreos.com")
        applied = await c.apply(monitor, field_manager="vllm-fleet")
        assert applied.metadata.generation == 1 and applied.spec == {"endpoints": [{"port": "http"}]}
        assert [m.metadata.name async for m in c.list(ServiceMonitor, namespace="default")] == ["m"]
        fake_kube.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", "servicemonitors.monitoring.coreos.com")
        with pytest.raises(httpx2.HTTPStatusError) as err:
            await c.get(ServiceMonitor, "m", namespace="default")
        assert err.value.response.status_code == 404

    run(fake_kubeconfig, body)


# -- scheduler ------------------------------------------------------------------------------------


def test_scheduler_writes_failed_scheduling_then_binds_when_a_node_fits(
    fake_kube: FakeKube, fake_kubeconfig: Path
) -> None:
    fake_kube.add_node("gpu-a", gpus=8, taints=["nvidia.com/gpu=present:NoSchedule"])
    fake_kube.add_node("cpu-a")
    fake_kube.add_node("cpu-b")

    async def body(c: AsyncClient) -> None:
        await c.create(gpu_pod("p"))
        fake_kube.step()
        pod = await c.get(Pod, "p", namespace="default")
        cond = next(x for x in pod.status.conditions if x.type == "PodScheduled")
        expected = (
            "0/3 nodes are available: 1 node(s) had untolerated taint {nvidia.com/gpu: present}, "
            "2 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: "
            "1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
        )
        assert (cond.status, cond.reason, cond.message) == ("False", "Unschedulable", expected)
        events = [e async for e in c.list(Event, namespace="default", fields={"involvedObject.name": "p"})]
        # kube-scheduler records through events.k8s.io: reportingComponent, eventTime, no source.component
        assert [(e.type, e.reason, e.message, e.reportingComponent, e.source.component) for e in events] == [
            ("Warning", "FailedScheduling", expected, "default-scheduler", None)
        ]
        v1 = [e async for e in c.list(EventV1, namespace="default", fields={"regarding.name": "p"})]
        assert (v1[0].note, v1[0].reportingController, v1[0].action) == (expected, "default-scheduler", "Scheduling")
        fake_kube.add_node("gpu-b", gpus=1)
        fake_kube.step()
        pod = await c.get(Pod, "p", namespace="default")
        assert pod.spec.nodeName == "gpu-b" and pod.status.phase == "Running"
        scheduled = [e.message async for e in c.list(Event, namespace="default", fields={"reason": "Scheduled"})]
        assert scheduled == ["Successfully assigned default/p to gpu-b"]

    run(fake_kubeconfig, body)


def test_pod_requests_count_init_containers_as_the_scheduler_does() -> None:
    pod = {
        "spec": {
            "initContainers": [
                {"name": "stage", "resources": {"requests": {"cpu": "4", "nvidia.com/gpu": "2"}}},
                {"name": "prefetch", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}},
            ],
            "containers": [{"name": "vllm", "resources": {"limits": {"cpu": "2", "nvidia.com/gpu": "1"}}}],
        }
    }
    # max(init 4 cpu, app 2 + sidecar 0.5) cpu; max(init 2, app 1) gpu
    assert pod_requests(pod) == {"cpu": quantity("4"), "nvidia.com/gpu": 2}
    assert quantity("16Gi") == 16 * 2**30 and quantity("250m") * 4 == 1 and quantity("1e3") == 1000


# -- deletion -------------------------------------------------------------------------------------


def test_delete_propagation_background_foreground_orphan(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    fake_kube.add_node("n1")

    async def body(c: AsyncClient) -> None:
        for name in ("bg", "fg", "orphan"):
            await c.apply(deployment(name, replicas=2), field_manager="vllm-fleet")
        fake_kube.settle()
        assert len(fake_kube.objects("v1", "Pod", "default")) == 6

        def owned(name: str) -> list[dict[str, Any]]:
            return [p for p in fake_kube.objects("v1", "Pod", "default") if p["metadata"]["labels"]["app"] == name]

        await c.delete(Deployment, "bg", namespace="default", cascade=CascadeType.BACKGROUND)
        with pytest.raises(ApiError):
            await c.get(Deployment, "bg", namespace="default")
        assert len(owned("bg")) == 2  # the garbage collector has not run yet
        await c.delete(Deployment, "fg", namespace="default", cascade=CascadeType.FOREGROUND)
        waiting = await c.get(Deployment, "fg", namespace="default")
        assert waiting.metadata.deletionTimestamp and waiting.metadata.finalizers == ["foregroundDeletion"]
        await c.delete(Deployment, "orphan", namespace="default", cascade=CascadeType.ORPHAN)
        fake_kube.settle()
        assert owned("bg") == [] and owned("fg") == []
        assert fake_kube.get("apps/v1", "Deployment", "fg", "default") is None
        rs = [r async for r in c.list(ReplicaSet, namespace="default")]
        assert [r.metadata.labels["app"] for r in rs] == ["orphan"] and rs[0].metadata.ownerReferences is None
        assert len(owned("orphan")) == 2
        with pytest.raises(ApiError) as err:
            await c.delete(Deployment, "bg", namespace="default")
        assert err.value.status.code == 404

    run(fake_kubeconfig, body)


def test_deleting_a_running_pod_is_graceful(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    fake_kube.add_node("n1")

    async def body(c: AsyncClient) -> None:
        await c.create(gpu_pod("p", gpus=0))
        fake_kube.step()
        await c.delete(Pod, "p", namespace="default")
        terminating = await c.get(Pod, "p", namespace="default")
        assert terminating.metadata.deletionTimestamp and terminating.metadata.deletionGracePeriodSeconds == 30
        fake_kube.step()  # the kubelet stops the containers and removes the pod
        assert fake_kube.get("v1", "Pod", "p", "default") is None

    run(fake_kubeconfig, body)


def test_deleting_a_namespace_empties_it_then_removes_it(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    fake_kube.add_node("n1")

    async def body(c: AsyncClient) -> None:
        await c.create(Namespace(metadata=ObjectMeta(name="fleet")))
        web = deployment()
        web.metadata.namespace = "fleet"
        await c.apply(web, field_manager="vllm-fleet")
        fake_kube.settle()
        await c.delete(Namespace, "fleet")
        ns = await c.get(Namespace, "fleet")
        assert ns.status.phase == "Terminating" and ns.metadata.deletionTimestamp
        with pytest.raises(ApiError) as err:
            await c.create(ConfigMap(metadata=ObjectMeta(name="late", namespace="fleet")))
        assert err.value.status.code == 403
        assert err.value.status.message.endswith(
            "unable to create new content in namespace fleet because it is being terminated"
        )
        fake_kube.settle()
        with pytest.raises(ApiError) as err:
            await c.get(Namespace, "fleet")
        assert err.value.status.code == 404
        assert fake_kube.objects("v1", "Pod", "fleet") == []

    run(fake_kubeconfig, body)


# -- authorization --------------------------------------------------------------------------------


def test_self_subject_access_review_answers_from_the_deny_set(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    fake_kube.deny("create", "monitoring.coreos.com", "servicemonitors", "default")

    async def body(c: AsyncClient) -> None:
        async def allowed(verb: str, group: str, resource: str) -> bool:
            review = SelfSubjectAccessReview.from_dict(
                {
                    "spec": {
                        "resourceAttributes": {
                            "verb": verb,
                            "group": group,
                            "resource": resource,
                            "namespace": "default",
                        }
                    }
                }
            )
            return bool((await c.create(review)).status.allowed)

        assert await allowed("create", "monitoring.coreos.com", "servicemonitors") is False
        assert await allowed("patch", "apps", "deployments") is True
        fake_kube.deny("patch", "apps", "deployments")
        with pytest.raises(ApiError) as err:
            await c.apply(deployment(), field_manager="vllm-fleet")
        assert err.value.status.code == 403
        assert err.value.status.message == (
            'deployments.apps "web" is forbidden: User "fake-user" cannot patch resource "deployments" '
            'in API group "apps" in the namespace "default"'
        )

    run(fake_kubeconfig, body)


# -- kubelet --------------------------------------------------------------------------------------


def test_crash_loop_status_event_and_previous_logs(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    fake_kube.add_node("n1")
    fake_kube.script(CrashLoop(exit_code=1, logs="RuntimeError: CUDA out of memory\n"), container="vllm")

    async def body(c: AsyncClient) -> None:
        await c.apply(deployment(), field_manager="vllm-fleet")
        fake_kube.step()  # Deployment -> ReplicaSet -> Pod -> bound -> its first run crashes
        (pod,) = [p async for p in c.list(Pod, namespace="default", labels={"app": "web"})]
        status = pod.status.containerStatuses[0]
        assert status.state.waiting.reason == "CrashLoopBackOff"
        assert status.state.waiting.message.startswith("back-off 10s restarting failed container=vllm pod=")
        assert (status.lastState.terminated.exitCode, status.lastState.terminated.reason) == (1, "Error")
        assert status.restartCount == 1 and pod.status.phase == "Running"
        fake_kube.step()
        status = (await c.get(Pod, pod.metadata.name, namespace="default")).status.containerStatuses[0]
        assert status.restartCount == 2 and status.state.waiting.message.startswith("back-off 20s ")
        events = [e async for e in c.list(Event, namespace="default", fields={"reason": "BackOff"})]
        uid = pod.metadata.uid
        assert (
            events[0].message == f"Back-off restarting failed container vllm in pod {pod.metadata.name}_default({uid})"
        )
        assert events[0].involvedObject.fieldPath == "spec.containers{vllm}"
        url = f"{fake_kube.url}/api/v1/namespaces/default/pods/{pod.metadata.name}/log"
        headers = {"Authorization": f"Bearer {fake_kube.token}"}
        previous = httpx.get(url, params={"container": "vllm", "previous": "true"}, headers=headers)
        assert previous.text == "RuntimeError: CUDA out of memory\n"
        lines = [line async for line in c.log(pod.metadata.name, namespace="default", container="vllm")]
        assert lines == ["RuntimeError: CUDA out of memory\n"]

    run(fake_kubeconfig, body)


def test_image_pull_failure_and_missing_secret(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    fake_kube.add_node("n1")
    fake_kube.script(ImagePullError(), pod_prefix="pull")
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}]

    async def body(c: AsyncClient) -> None:
        await c.create(gpu_pod("pull", gpus=0))
        await c.create(
            Pod.from_dict(
                {
                    "metadata": {"name": "cfg", "namespace": "default"},
                    "spec": {"containers": [{"name": "vllm", "image": "vllm:1", "env": env}]},
                }
            )
        )
        fake_kube.step()

        async def waiting(name: str) -> tuple[str, str]:
            state = (await c.get(Pod, name, namespace="default")).status.containerStatuses[0].state.waiting
            return state.reason, state.message

        assert (await waiting("pull"))[0] == "ErrImagePull"
        assert await waiting("cfg") == ("CreateContainerConfigError", 'secret "hf" not found')
        failed = [
            e.message
            async for e in c.list(
                Event, namespace="default", fields={"involvedObject.name": "pull", "reason": "Failed"}
            )
        ]
        ref = "docker.io/library/vllm:1"
        assert failed[0] == (
            f'Failed to pull image "vllm:1": rpc error: code = NotFound desc = failed to pull and unpack image '
            f'"{ref}": failed to resolve reference "{ref}": {ref}: not found'
        )
        await c.create(Secret(metadata=ObjectMeta(name="hf", namespace="default"), stringData={"other": "x"}))
        fake_kube.step()
        assert (await waiting("pull"))[0] == "ImagePullBackOff"
        assert await waiting("cfg") == ("CreateContainerConfigError", "couldn't find key token in Secret default/hf")
        await c.patch(Secret, "hf", {"stringData": {"token": "t"}}, namespace="default")
        fake_kube.step()
        pod = await c.get(Pod, "cfg", namespace="default")
        assert pod.status.containerStatuses[0].ready and pod.status.phase == "Running"

    run(fake_kubeconfig, body)


# -- jobs, volumes, autoscaler, rollouts ------------------------------------------------------------


def test_job_completes_or_fails(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    fake_kube.add_node("n1")
    fake_kube.script(Exit(code=3), pod_prefix="bad-")

    def job(name: str) -> Any:
        return Job.from_dict(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "spec": {"restartPolicy": "Never", "containers": [{"name": "bench", "image": "vllm:1"}]}
                    },
                },
            }
        )

    async def body(c: AsyncClient) -> None:
        await c.apply(job("good"), field_manager="vllm-fleet")
        await c.apply(job("bad"), field_manager="vllm-fleet")
        fake_kube.settle()
        good = await c.get(Job, "good", namespace="default")
        assert good.status.succeeded == 1 and [(x.type, x.status) for x in good.status.conditions] == [
            ("Complete", "True")
        ]
        bad = await c.get(Job, "bad", namespace="default")
        assert [(x.type, x.reason) for x in bad.status.conditions] == [("Failed", "BackoffLimitExceeded")]
        assert bad.status.failed == 1

    run(fake_kubeconfig, body)


def test_claims_bind_immediately_or_wait_for_their_first_consumer(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    fake_kube.add_node("n1")
    fake_kube.add_storage_class("standard", binding_mode="Immediate")
    fake_kube.add_storage_class("fast", binding_mode="WaitForFirstConsumer", default=True)

    def claim(name: str, sc: str | None) -> Any:
        spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "100Gi"}}}
        if sc:
            spec["storageClassName"] = sc
        return PersistentVolumeClaim.from_dict({"metadata": {"name": name, "namespace": "default"}, "spec": spec})

    async def body(c: AsyncClient) -> None:
        await c.create(claim("now", "standard"))
        await c.create(claim("later", None))  # the default class: WaitForFirstConsumer
        fake_kube.step()
        assert (await c.get(PersistentVolumeClaim, "now", namespace="default")).status.phase == "Bound"
        later = await c.get(PersistentVolumeClaim, "later", namespace="default")
        assert (later.spec.storageClassName, later.status.phase) == ("fast", "Pending")
        events = [e async for e in c.list(Event, namespace="default", fields={"involvedObject.name": "later"})]
        assert [(e.reason, e.message) for e in events] == [
            ("WaitForFirstConsumer", "waiting for first consumer to be created before binding")
        ]
        volume = [{"name": "cache", "persistentVolumeClaim": {"claimName": "later"}}]
        await c.create(gpu_pod("user", gpus=0, volumes=volume))
        fake_kube.settle()
        assert (await c.get(PersistentVolumeClaim, "later", namespace="default")).status.phase == "Bound"
        assert (await c.get(Pod, "user", namespace="default")).spec.nodeName == "n1"

    run(fake_kubeconfig, body)


def test_autoscaler_scale_up_brings_a_node_mid_wait(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    async def body(c: AsyncClient) -> None:
        await c.create(gpu_pod("p"))
        fake_kube.step()
        assert (await c.get(Pod, "p", namespace="default")).status.conditions[0].message == (
            "no nodes available to schedule pods"
        )
        fake_kube.autoscaler_scale_up("gpu-pool", "gpu-1", gpus=1, max_size=4)
        triggered = [e.message async for e in c.list(Event, namespace="default", fields={"reason": "TriggeredScaleUp"})]
        assert triggered == ["pod triggered scale-up: [{gpu-pool 0->1 (max: 4)}]"]
        status = await c.get(ConfigMap, "cluster-autoscaler-status", namespace="kube-system")
        assert "scaleUp:\n    status: InProgress" in status.data["status"]
        with fake_kube.run_controllers(0.02):
            fake_kube.wait_for(
                lambda: (fake_kube.get("v1", "Pod", "p", "default") or {}).get("spec", {}).get("nodeName")
            )
        assert (await c.get(Pod, "p", namespace="default")).spec.nodeName == "gpu-1"

    run(fake_kubeconfig, body)


def test_lightkube_wait_returns_once_slow_containers_are_ready(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    fake_kube.add_node("n1")
    fake_kube.script(Starting(passes=5), container="vllm")  # ContainerCreating for five kubelet passes

    async def body(c: AsyncClient) -> None:
        await c.apply(deployment(), field_manager="vllm-fleet")
        with fake_kube.run_controllers(0.02):
            ready = await asyncio.wait_for(
                c.wait(Deployment, "web", for_conditions=["Available"], namespace="default"), 5
            )
        assert ready.status.availableReplicas == 1
        creating = [
            (m, q) for m, p, q in fake_kube.requests if m == "GET" and p.endswith("/deployments") and q.get("watch")
        ]
        assert creating and creating[0][1]["fieldSelector"] == "metadata.name=web"

    run(fake_kubeconfig, body)


def test_a_missing_service_account_is_a_replica_failure(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    fake_kube.add_node("n1")

    async def body(c: AsyncClient) -> None:
        assert [sa["metadata"]["name"] for sa in fake_kube.objects("v1", "ServiceAccount", "default")] == ["default"]
        await c.apply(deployment(serviceAccountName="vllm"), field_manager="vllm-fleet")
        fake_kube.step()
        fake_kube.step()
        (rs,) = fake_kube.objects("apps/v1", "ReplicaSet", "default")
        refused = (
            f'pods "{rs["metadata"]["name"]}-" is forbidden: error looking up service account default/vllm: '
            'serviceaccount "vllm" not found'
        )
        failed = [e async for e in c.list(Event, namespace="default", fields={"reason": "FailedCreate"})]
        assert [e.message for e in failed] == [f"Error creating: {refused}"]
        d = await c.get(Deployment, "web", namespace="default")
        failure = next(x for x in d.status.conditions if x.type == "ReplicaFailure")
        assert (failure.status, failure.reason, failure.message) == ("True", "FailedCreate", refused)
        await c.create(ServiceAccount(metadata=ObjectMeta(name="vllm", namespace="default")))
        fake_kube.settle()
        d = await c.get(Deployment, "web", namespace="default")
        assert d.status.availableReplicas == 1 and "ReplicaFailure" not in [x.type for x in d.status.conditions]

    run(fake_kubeconfig, body)


def test_progress_deadline_exceeded_when_told(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    async def body(c: AsyncClient) -> None:
        await c.apply(deployment(), field_manager="vllm-fleet")  # no node: the pod stays pending
        fake_kube.settle()
        d = await c.get(Deployment, "web", namespace="default")
        progressing = next(x for x in d.status.conditions if x.type == "Progressing")
        assert progressing.status == "True" and progressing.reason in ("NewReplicaSetCreated", "ReplicaSetUpdated")
        available = next(x for x in d.status.conditions if x.type == "Available")
        assert (available.status, available.reason) == ("False", "MinimumReplicasUnavailable")
        fake_kube.exceed_progress_deadline("default", "web")
        fake_kube.step()
        d = await c.get(Deployment, "web", namespace="default")
        progressing = next(x for x in d.status.conditions if x.type == "Progressing")
        assert (progressing.status, progressing.reason) == ("False", "ProgressDeadlineExceeded")
        (rs,) = fake_kube.objects("apps/v1", "ReplicaSet", "default")
        assert progressing.message == f'ReplicaSet "{rs["metadata"]["name"]}" has timed out progressing.'

    run(fake_kubeconfig, body)


# -- port-forward over WebSocket ---------------------------------------------------------------


def running_pod(kube: FakeKube, name: str) -> None:
    """A bare pod on a node, Running once the components have settled."""
    if kube.get("v1", "Node", "cpu-a") is None:
        kube.add_node("cpu-a")
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "vllm", "image": "vllm:1"}]},
        }
    )
    kube.settle()
    pod = kube.get("v1", "Pod", name, "default")
    assert pod is not None and pod["status"]["phase"] == "Running"


def test_port_forward_frames_ports_and_carries_bytes_both_ways(fake_kube: FakeKube) -> None:
    running_pod(fake_kube, "web-0")
    with socket_closed_port() as closed:

        async def main() -> None:
            async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                while (data := await reader.read(1024)) and data != b"quit":
                    writer.write(data)
                    await writer.drain()
                writer.close()

            server = await asyncio.start_server(echo, "127.0.0.1", 0)
            fake_kube.forward_pods(
                "127.0.0.1", {8000: server.sockets[0].getsockname()[1], 8001: closed}, pod_prefix="web-"
            )
            url = f"{fake_kube.url}/api/v1/namespaces/default/pods/web-0/portforward?ports=8000&ports=8001"
            headers = {"Authorization": f"Bearer {fake_kube.token}"}
            protocols = ("portforward.k8s.io",)
            async with (
                server,
                aiohttp.ClientSession() as session,
                session.ws_connect(url, protocols=protocols, headers=headers) as ws,
            ):
                assert ws.protocol == "portforward.k8s.io"
                # websocket.go: the port, uint16 little-endian, on data then error channel of each port
                frames = [await ws.receive_bytes(timeout=2) for _ in range(4)]
                assert frames == [b"\x00\x40\x1f", b"\x01\x40\x1f", b"\x02\x41\x1f", b"\x03\x41\x1f"]
                refused = await ws.receive_bytes(timeout=2)  # nothing listens behind port 8001
                assert refused[0] == 3 and b"error forwarding port 8001 to pod" in refused
                assert refused.endswith(b"connect: connection refused")
                await ws.send_bytes(b"\x00hello")
                assert await ws.receive_bytes(timeout=2) == b"\x00hello"
                await ws.send_bytes(b"\x00quit")  # the pod's end closes: so does the WebSocket
                assert (await ws.receive(timeout=2)).type == aiohttp.WSMsgType.CLOSE

        asyncio.run(main())
    assert fake_kube.server_errors == []


def test_port_forward_refusals_answer_before_the_upgrade(fake_kube: FakeKube) -> None:
    running_pod(fake_kube, "web-0")
    fake_kube.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "waiting", "namespace": "default"},
            "spec": {"containers": [{"name": "vllm", "image": "vllm:1"}], "nodeSelector": {"pool": "none"}},
        }
    )
    fake_kube.settle()
    headers = {"Authorization": f"Bearer {fake_kube.token}"}

    async def status(pod: str) -> int:
        url = f"{fake_kube.url}/api/v1/namespaces/default/pods/{pod}/portforward?ports=8000"
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(url, protocols=("portforward.k8s.io",), headers=headers):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    assert asyncio.run(status("missing")) == 404
    assert asyncio.run(status("waiting")) == 400
    response = httpx.get(
        f"{fake_kube.url}/api/v1/namespaces/default/pods/waiting/portforward?ports=8000", headers=headers
    )
    assert response.status_code == 501 and "SPDY" in response.json()["message"]  # no upgrade: not modelled
    assert asyncio.run(status("web-0")) == 101
    fake_kube.deny("create", "", "pods/portforward")
    assert asyncio.run(status("web-0")) == 403
    assert asyncio.run(status("missing")) == 403  # authorization comes before the lookup
    assert fake_kube.server_errors == []


def test_not_modelled_apis_say_so(fake_kube: FakeKube) -> None:
    response = httpx.post(
        f"{fake_kube.url}/api/v1/namespaces/default/pods/p/eviction",
        headers={"Authorization": f"Bearer {fake_kube.token}"},
        content=json.dumps({}),
    )
    assert response.status_code == 501 and "does not model" in response.json()["message"]
