"""Connect to a cluster through the standard kubeconfig chain, and turn lightkube's errors into ours.

lightkube is imported here, lazily (the `kubernetes` extra): `vllm-fleet --help` never pays for it,
and a missing install gives the command that installs it. Every error that leaves this package is a
FleetError that says what failed and the next step (STYLE.md #2, #3).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vllm_fleet.errors import FleetError, SpecError, TargetError
from vllm_fleet.targets.base import TargetOptions

if TYPE_CHECKING:
    import lightkube
    from lightkube.config.kubeconfig import SingleConfig

FIELD_MANAGER = "vllm-fleet"
INSTALL_HINT = "pip install 'vllm-fleet[kubernetes]' (lightkube)"


class ClusterError(TargetError):
    """The cluster refused or could not be reached; the message names the server and what to do."""

    def __init__(self, message: str, *, fix: str | None = None, code: int | None = None):
        super().__init__(message, fix=fix)
        self.code = code  # the HTTP status, when the server answered


def _lightkube() -> Any:
    try:
        import lightkube
    except ImportError as exc:
        raise FleetError("the Kubernetes target needs lightkube, which is not installed", fix=INSTALL_HINT) from exc
    return lightkube


def load_config(options: TargetOptions) -> SingleConfig:
    """The kubeconfig context to use: --kubeconfig/--context, else KUBECONFIG, ~/.kube/config or in-cluster."""
    _lightkube()
    from lightkube import ConfigError, KubeConfig

    try:
        config = KubeConfig.from_file(options.kubeconfig) if options.kubeconfig else KubeConfig.from_env()
        chosen = config.get(context_name=options.context)
    except ConfigError as exc:
        where = options.kubeconfig or "KUBECONFIG, ~/.kube/config or the in-cluster service account"
        raise SpecError(
            f"no usable kubeconfig ({where}): {exc}",
            fix="pass --kubeconfig PATH [--context NAME], or get credentials (GKE: gcloud container clusters "
            "get-credentials CLUSTER; DigitalOcean: doctl kubernetes cluster kubeconfig save CLUSTER)",
        ) from exc
    except (OSError, KeyError, ValueError) as exc:
        raise SpecError(
            f"cannot read the kubeconfig {options.kubeconfig or ''}: {exc}", fix="check --kubeconfig and --context"
        ) from exc
    if chosen is None:
        raise SpecError(
            "the kubeconfig has no current context", fix="pass --context NAME (kubectl config get-contexts)"
        )
    return chosen


@dataclass
class Cluster:
    """One connection to one cluster: the lightkube client and the server's address."""

    client: lightkube.AsyncClient
    server: str
    context: str
    raw: Any  # an httpx2.AsyncClient with the same auth and TLS, for what lightkube has no call for

    async def version(self) -> tuple[int, int, str]:
        """(major, minor, gitVersion) of the API server (GET /version, which lightkube has no call for)."""
        with errors(self.server):
            response = await self.raw.get("/version")
            response.raise_for_status()
            data = response.json()
        minor = int(re.sub(r"\D.*$", "", str(data.get("minor", "0"))) or 0)
        return int(data.get("major", 0) or 0), minor, str(data.get("gitVersion", ""))

    async def get_or_none(self, resource: Any, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object as a dict, or None when the server says it does not exist (404)."""
        try:
            with errors(self.server):
                found = await self.client.get(resource, name, namespace=namespace)
        except ClusterError as exc:
            if exc.code == 404:
                return None
            raise
        return dict(found.to_dict())

    async def list_dicts(self, resource: Any, namespace: str | None = None, **selectors: Any) -> list[dict[str, Any]]:
        """Every object of ``resource`` (``namespace="*"``: all namespaces) as dicts."""
        with errors(self.server):
            return [dict(o.to_dict()) async for o in self.client.list(resource, namespace=namespace, **selectors)]


@asynccontextmanager
async def connect(options: TargetOptions, namespace: str) -> AsyncIterator[Cluster]:
    """A Cluster for ``options``, closed on exit."""
    config = load_config(options)
    lk = _lightkube()
    from lightkube.config import client_adapter

    client = lk.AsyncClient(config, namespace=namespace, field_manager=FIELD_MANAGER, trust_env=False)
    raw = client_adapter.AsyncClient(config, client_adapter.ConnectionParams(trust_env=False))
    try:
        yield Cluster(client, config.cluster.server, config.context_name, raw)
    finally:
        await raw.aclose()
        await client.close()


@contextmanager
def errors(server: str, doing: str = "") -> Iterator[None]:
    """lightkube's and the transport's errors as ClusterErrors that name the server and the fix."""
    from httpx2 import HTTPStatusError, TransportError
    from lightkube import ApiError

    what = f"{doing}: " if doing else ""
    try:
        yield
    except ApiError as exc:
        raise api_error(exc, server, what) from exc
    except HTTPStatusError as exc:
        code = exc.response.status_code
        raise ClusterError(
            f"{what}the API server at {server} answered {code}", fix=_FIX_BY_CODE.get(code), code=code
        ) from exc
    except TransportError as exc:
        raise ClusterError(
            f"{what}cannot reach the API server at {server} ({type(exc).__name__})",
            fix="check that the cluster runs and that --context (or the kubeconfig's current context) points at it",
        ) from exc


_FIX_BY_CODE = {
    401: "the credentials were refused: refresh them (GKE: gcloud container clusters get-credentials; "
    "EKS: aws eks update-kubeconfig; DigitalOcean: doctl kubernetes cluster kubeconfig save)",
    403: "ask the cluster admin for the verb on the resource the message names (preflight lists every one)",
}


def api_error(exc: Any, server: str, what: str = "") -> ClusterError:
    """One ApiError as a ClusterError: the server's own message (it names verb, resource and user) and the fix."""
    status = exc.status
    code = int(getattr(status, "code", 0) or 0)
    message = str(getattr(status, "message", "") or exc)
    fix = _FIX_BY_CODE.get(code)
    if code == 409 and getattr(status, "reason", "") == "Conflict" and "Apply failed" in message:
        fix = "another field manager owns these fields: change them there, or take them with --force-conflicts"
    return ClusterError(f"{what}{message} ({server}, HTTP {code})", fix=fix, code=code)
