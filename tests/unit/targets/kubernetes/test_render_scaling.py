"""Autoscaling signals (issue 16): queue depth, batch size or GPU utilisation, per mode; every object valid,
external metric names lowercase, the target from the Plan."""

from __future__ import annotations

import pytest

from tests.unit.targets.kubernetes.test_render import _render, _spec, validate
from vllm_fleet.errors import SpecError
from vllm_fleet.plan import resolve
from vllm_fleet.spec import parse_spec
from vllm_fleet.targets.kubernetes.manifests.scaling import SERIES

GPU = {"gpus": 2, "gpu_type": "nvidia-l4"}
ENGINE = {"tensor_parallel_size": 2, "max_num_seqs": 32}


def _scaler(mode: str, metric: str, **scaling: float) -> dict:
    text = _spec(resources=GPU, engine=ENGINE,
                 scaling={"mode": mode, "metric": metric, "max_replicas": 4, **scaling})  # fmt: skip
    objects = _render(text)
    for obj in objects:
        validate(obj)
    return next(o for o in objects if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"))


@pytest.mark.parametrize("mode", ["hpa", "gke", "keda"])
@pytest.mark.parametrize("metric", ["waiting", "running", "gpu-utilization"])
def test_every_mode_and_metric_renders_a_valid_autoscaler(mode: str, metric: str) -> None:
    scaler = _scaler(mode, metric)
    if mode == "keda":
        trigger = scaler["spec"]["triggers"][0]["metadata"]
        assert SERIES[metric] in trigger["query"]
        return
    (entry,) = scaler["spec"]["metrics"]
    body = entry[entry["type"].lower()]
    name = body["metric"]["name"]
    if metric == "gpu-utilization":
        assert entry["type"] == "External" and name == name.lower()  # the HPA ignores upper-case names
        assert name == ("kubernetes.io|container|accelerator|duty_cycle" if mode == "gke" else "dcgm_fi_dev_gpu_util")
        assert body["metric"]["selector"]["matchLabels"]
    else:
        assert entry["type"] == "Pods" and SERIES[metric].split(":")[1] in name


def test_the_targets_come_from_the_plan() -> None:
    waiting = _scaler("hpa", "waiting", target_waiting=3)
    assert waiting["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "3"
    running = _scaler("gke", "running")  # 3/4 of max_num_seqs 32
    assert running["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "24"
    assert running["spec"]["metrics"][0]["pods"]["metric"]["name"] == (
        "prometheus.googleapis.com|vllm:num_requests_running|gauge"
    )
    gpu = _scaler("hpa", "gpu-utilization", target=70)  # 70 % per GPU, 2 GPUs a replica, summed by the HPA
    assert gpu["spec"]["metrics"][0]["external"]["target"]["averageValue"] == "140"
    keda = _scaler("keda", "gpu-utilization")
    assert keda["spec"]["triggers"][0]["metadata"]["threshold"] == "160"
    plan = resolve(parse_spec(_spec(resources=GPU, engine=ENGINE, scaling={"mode": "hpa", "metric": "running"})))
    assert "max_num_seqs 32" in plan.derived["scaling_target"].why


def test_gpu_utilisation_needs_gpus() -> None:
    with pytest.raises(SpecError, match=r"resources\.gpus"):
        parse_spec(_spec(scaling={"mode": "hpa", "metric": "gpu-utilization"}))
    with pytest.raises(SpecError, match=r"scaling\.metric"):
        parse_spec(_spec(scaling={"mode": "hpa", "metric": "queue"}))
