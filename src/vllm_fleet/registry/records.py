"""What the registry stores and answers: deployments, the routes merged from them, and API key limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_fleet.errors import SpecError


@dataclass(frozen=True)
class Deployment:
    """One spec's served model: ``up`` registers it once verify passed, ``down`` deregisters it.

    ``endpoints`` are the replicas' base URLs (duplicates dropped, order kept); ``policy`` is the
    router's policy for the model (``spec.router.policy``).
    """

    name: str
    model: str
    endpoints: tuple[str, ...]
    policy: str = "prefix"

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise SpecError("a deployment needs a name", fix="register it under its spec's name")
        if not self.model.strip():
            raise SpecError(f"deployment {self.name!r} has no model name", fix="set model.served_name in its spec")
        endpoints = tuple(dict.fromkeys(url.strip() for url in self.endpoints if url.strip()))
        if not endpoints:
            raise SpecError(f"deployment {self.name!r} has no endpoints", fix="register it after its replicas are up")
        from vllm_fleet.spec.schema import ROUTER_POLICIES  # here: the schema's import is heavy for the CLI

        if self.policy not in ROUTER_POLICIES:
            raise SpecError(
                f"deployment {self.name!r}: unknown routing policy {self.policy!r}",
                fix=f"use one of: {', '.join(ROUTER_POLICIES)}",
            )
        object.__setattr__(self, "endpoints", endpoints)


@dataclass(frozen=True)
class Route:
    """What the router serves for one model: every endpoint of its deployments, one policy."""

    model: str
    policy: str
    endpoints: tuple[str, ...]
    deployments: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "policy": self.policy,
            "endpoints": list(self.endpoints),
            "deployments": list(self.deployments),
        }


def merge_routes(deployments: list[Deployment]) -> list[Route]:
    """One route per model, from ``deployments`` in registration order (oldest first).

    Endpoints are the union (first seen first); the policy is the most recently registered
    deployment's, so re-running ``up`` for a spec that changed its policy takes effect.
    """
    by_model: dict[str, list[Deployment]] = {}
    for deployment in deployments:
        by_model.setdefault(deployment.model, []).append(deployment)
    routes = []
    for model, group in sorted(by_model.items()):
        endpoints = dict.fromkeys(url for d in group for url in d.endpoints)
        routes.append(Route(model, group[-1].policy, tuple(endpoints), tuple(d.name for d in group)))
    return routes


@dataclass(frozen=True)
class KeyLimits:
    """An API key's name and limits (None: unlimited). Never holds the secret or its hash."""

    name: str
    requests_per_min: int | None = None
    tokens_per_min: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "requests_per_min": self.requests_per_min, "tokens_per_min": self.tokens_per_min}
