"""The Plan: a FleetSpec resolved for one environment. Every derived number is computed once.

Targets read a Plan and never re-derive: paths, ports, probe budgets, grace
periods. Each derived number carries the reason it has its value, so
``vllm-fleet plan`` can show its work.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm_fleet import engine
from vllm_fleet.plan import budgets, gpus
from vllm_fleet.plan.derived import Derived
from vllm_fleet.plan.lint import lint_spec
from vllm_fleet.plan.model import check_engine_fits_model, local_config, measure_bytes
from vllm_fleet.spec import FleetSpec, load_spec
from vllm_fleet.weights.sources import file_path


@dataclass(frozen=True)
class Plan:
    """A FleetSpec resolved for one environment: what targets execute."""

    spec: FleetSpec
    env: str | None
    spec_dir: Path
    source: str
    cache_root: Path
    model_dir: Path
    run_dir: Path
    ports: tuple[int, ...]  # the replicas' (local)
    router_port: int | None  # local: where the router serves, in front of the replicas (None: no router)
    model_bytes: int | None
    derived: dict[str, Derived] = field(default_factory=dict)
    lint: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def served_name(self) -> str:
        return self.spec.served_name

    @property
    def endpoints(self) -> list[str]:
        """Where clients connect (local): the router, or each replica when there is none."""
        if self.router_port is not None:
            return [self.url_of(self.router_port)]
        return self.replica_urls

    @property
    def replica_urls(self) -> list[str]:
        return [self.url_of(port) for port in self.ports]

    def url_of(self, port: int) -> str:
        return f"http://{self.spec.local.host}:{port}"

    @property
    def registry_url(self) -> str:
        """The router's registry: the spec's, or SQLite under the cache root (shared by the specs using it)."""
        from vllm_fleet.registry import default_registry_url

        return self.spec.router.registry or default_registry_url(self.cache_root)

    @property
    def pod_engine_args(self) -> list[str]:
        """The API server's arguments in a pod: the volume's model directory, the container port."""
        pod_dir = str(self.derived["pod_model_dir"].value)
        return engine.vllm_args(
            self.spec,
            model_dir=pod_dir,
            port=self.spec.kubernetes.port,
            shutdown_timeout_s=int(self.derived["shutdown_timeout_s"].value or 0),
        )

    @property
    def engine_args(self) -> list[str]:
        """The arguments the spec's target really runs (local: replica 0's; its others differ by port)."""
        if self.spec.target == "kubernetes":
            return self.pod_engine_args
        return engine.vllm_args(
            self.spec,
            model_dir=str(self.model_dir),
            port=self.ports[0],
            host=self.spec.local.host,
            shutdown_timeout_s=self.spec.availability.shutdown_timeout_s,
        )

    @property
    def stop_grace_s(self) -> float:
        """Local: how long a stopped replica's group may take to exit after SIGTERM, before SIGKILL."""
        return float(self.derived["stop_grace_s"].value or 0)

    @property
    def startup_budget_s(self) -> int:
        return int(self.derived["startup_budget_s"].value or 0)

    @property
    def termination_grace_s(self) -> int:
        return int(self.derived["termination_grace_s"].value or 0)

    @property
    def scaling_target(self) -> float:
        """The autoscaler's per-replica target of scaling.metric (issue 16)."""
        return float(self.derived["scaling_target"].value or 0)

    @property
    def scaling_average_value(self) -> float:
        """What the HPA (or KEDA) compares per replica: the target, x GPUs for GPU utilisation."""
        return float(self.derived["scaling_average_value"].value or 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view of the Plan (what `vllm-fleet plan --json` prints)."""
        return {
            "name": self.name,
            "env": self.env,
            "target": self.spec.target,
            "served_name": self.served_name,
            "source": self.source,
            "cache_root": str(self.cache_root),
            "model_dir": str(self.model_dir),
            "replicas": self.spec.replicas,
            "endpoints": self.endpoints if self.spec.target == "local" else [],
            "replica_endpoints": self.replica_urls if self.spec.target == "local" else [],
            "model_bytes": self.model_bytes,
            "engine_argv": self.engine_args,
            "engine_env": engine.vllm_env(self.spec),
            "derived": {k: {"value": d.value, "why": d.why} for k, d in self.derived.items()},
            "lint": list(self.lint),
            "spec": self.spec.model_dump(exclude={"environments"}),
        }


def load_plan(spec_path: str | Path, env: str | None = None) -> Plan:
    """Load, validate and resolve the spec at ``spec_path`` for ``env``."""
    spec_path = Path(spec_path)
    return resolve(load_spec(spec_path, env), env=env, spec_dir=spec_path.resolve().parent)


def resolve(spec: FleetSpec, env: str | None = None, spec_dir: Path | None = None) -> Plan:
    """Resolve ``spec``; relative paths in it are relative to ``spec_dir``."""
    spec_dir = spec_dir or Path.cwd()
    source = _absolute_source(spec.model.source, spec_dir)
    cache_root = (spec_dir / spec.cache.dir).resolve()
    key = model_key(source, spec.model.revision)
    model_bytes = measure_bytes(spec, source)
    if config := local_config(source):
        check_engine_fits_model(spec, config, f"{file_path(source)}/config.json")
    routed = spec.router.enabled and spec.target == "local"
    first = spec.local.base_port + 1 if routed else spec.local.base_port  # the router takes base_port
    ports = tuple(first + i for i in range(spec.replicas))
    derived = budgets.derive(spec, model_bytes)
    derived |= budgets.derive_kubernetes(spec, key, derived)
    derived |= gpus.gpu_fit(spec, source, model_bytes)
    return Plan(
        spec=spec,
        env=env,
        spec_dir=spec_dir,
        source=source,
        cache_root=cache_root,
        model_dir=cache_root / "models" / key,
        run_dir=cache_root / "run" / spec.name,
        ports=ports,
        router_port=spec.local.base_port if routed else None,
        model_bytes=model_bytes,
        derived=derived,
        lint=lint_spec(spec, derived),
    )


def model_key(source: str, revision: str | None = None) -> str:
    """Cache directory name for a source: readable tail plus a hash of the full URI."""
    ident = f"{source}@{revision or ''}"
    tail = re.sub(r"[^a-zA-Z0-9._-]+", "-", source.rstrip("/").rsplit("/", 1)[-1]).strip("-") or "model"
    return f"{tail[:40]}-{hashlib.sha256(ident.encode()).hexdigest()[:10]}"


def _absolute_source(source: str, spec_dir: Path) -> str:
    if "://" not in source:
        return (spec_dir / source).resolve().as_uri()
    scheme, rest = source.split("://", 1)
    if scheme == "file" and not rest.startswith("/"):
        return (spec_dir / rest).resolve().as_uri()
    return source
