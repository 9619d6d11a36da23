"""Deployments are validated, routes merge a model's deployments, SQL placeholders are rewritten for PostgreSQL."""

from __future__ import annotations

import pytest

from vllm_fleet.errors import SpecError
from vllm_fleet.registry import Deployment, Route
from vllm_fleet.registry.base import numbered
from vllm_fleet.registry.records import merge_routes


def test_deployment_dedupes_endpoints_and_takes_a_list() -> None:
    deployment = Deployment("d", "m", ["http://a", " http://b ", "http://a", ""])  # type: ignore[arg-type]
    assert deployment.endpoints == ("http://a", "http://b")


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"name": " "}, "needs a name"),
        ({"model": ""}, "no model"),
        ({"endpoints": ()}, "no endpoints"),
        ({"policy": "random"}, "unknown routing policy"),
    ],
)
def test_bad_deployments_are_refused(kwargs: dict, says: str) -> None:
    fields = {"name": "d", "model": "m", "endpoints": ("http://a",), **kwargs}
    with pytest.raises(SpecError, match=says):
        Deployment(**fields)


def test_routes_merge_a_models_deployments_with_the_latest_policy() -> None:
    deployments = [
        Deployment("b-old", "m", ("http://1", "http://2"), "prefix"),
        Deployment("other", "a-model", ("http://9",), "session"),
        Deployment("a-new", "m", ("http://2", "http://3"), "round-robin"),
    ]
    assert merge_routes(deployments) == [
        Route("a-model", "session", ("http://9",), ("other",)),
        Route("m", "round-robin", ("http://1", "http://2", "http://3"), ("b-old", "a-new")),
    ]
    assert merge_routes([]) == []


def test_route_json_shape() -> None:
    route = Route("m", "prefix", ("http://1",), ("d",))
    assert route.to_dict() == {"model": "m", "policy": "prefix", "endpoints": ["http://1"], "deployments": ["d"]}


def test_placeholders_are_numbered_for_postgres() -> None:
    assert numbered("SELECT 1") == "SELECT 1"
    assert numbered("INSERT INTO t (a, b) VALUES (?, ?)") == "INSERT INTO t (a, b) VALUES ($1, $2)"
    assert numbered("x = ? AND y = ?") == "x = $1 AND y = $2"
