"""The router's backends on Kubernetes: the ready endpoints of the engine Service, from its EndpointSlices.

List, then watch from the list's resourceVersion, the ``discovery.k8s.io/v1`` EndpointSlices
labelled ``kubernetes.io/service-name=<service>`` (a Service may have several slices: the backends
are the union). An endpoint is a backend while ``conditions.ready`` is true and
``conditions.terminating`` is not
(https://kubernetes.io/docs/concepts/services-networking/endpoint-slices/#conditions): a pod that
fails readiness, or that is being deleted (its preStop drain running), gets no new requests, and
the requests it already has finish. A nil ``ready`` means ready (the EndpointConditions API
reference: "A nil value should be interpreted as true").

The watch never ends the router: an expired resourceVersion (410 Gone) is a re-list; any other
error is one log line and a reconnect with backoff, keeping the backends last seen meanwhile
(the pool's own health checks judge them; emptying the pool because the API server blinked would
turn an API outage into an inference outage).

lightkube is imported inside the function: the router's import stays light, and only this module
and the cluster code import a Kubernetes client (tests/unit/test_imports.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0


def ready_urls(slices: Iterable[Any], port: int) -> list[str]:
    """``http://IP:PORT`` of every ready, not terminating endpoint of ``slices`` (lightkube objects), sorted."""
    urls = set()
    for piece in slices:
        ipv6 = getattr(piece, "addressType", "IPv4") == "IPv6"
        for endpoint in piece.endpoints or ():
            conditions = endpoint.conditions
            ready = conditions is None or conditions.ready is None or conditions.ready
            terminating = conditions is not None and conditions.terminating is True
            if not ready or terminating:
                continue
            for address in endpoint.addresses or ():
                urls.add(f"http://[{address}]:{port}" if ipv6 else f"http://{address}:{port}")
    return sorted(urls)


async def follow_endpointslices(
    namespace: str,
    service: str,
    port: int,
    on_change: Callable[[list[str]], None],
    *,
    client: Any = None,
) -> None:
    """Call ``on_change(sorted URLs)`` whenever the ready endpoints of ``namespace/service`` change, until cancelled.

    ``client`` is a lightkube ``AsyncClient``; by default one from the environment (in a pod: its
    service account), closed when this returns.
    """
    from lightkube import ApiError, AsyncClient
    from lightkube.resources.discovery_v1 import EndpointSlice

    own = client is None
    labels = {SERVICE_NAME_LABEL: service}
    slices: dict[str, Any] = {}
    published: list[str] | None = None

    def publish() -> None:
        nonlocal published
        urls = ready_urls(slices.values(), port)
        if urls != published:
            published = urls
            on_change(urls)

    delay = BACKOFF_FIRST_S
    try:
        while True:
            try:
                if client is None:  # inside the loop: no configuration yet is one more error to retry
                    client = AsyncClient()
                listing = client.list(EndpointSlice, namespace=namespace, labels=labels)
                slices = {s.metadata.name: s async for s in listing}
                publish()
                delay = BACKOFF_FIRST_S
                async for change, piece in client.watch(
                    EndpointSlice, namespace=namespace, labels=labels, resource_version=listing.resourceVersion
                ):
                    if change == "DELETED":
                        slices.pop(piece.metadata.name, None)
                    else:
                        slices[piece.metadata.name] = piece
                    publish()
            except ApiError as exc:
                if exc.status.code == 410:  # our resourceVersion is too old: list again, at once
                    continue
                log.warning(_why(namespace, service, f"{exc.status.code} {exc.status.message}", delay))
            except Exception as exc:  # never end the router; say why, once a try
                log.warning(_why(namespace, service, f"{type(exc).__name__}: {exc}", delay))
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
    finally:
        if own and client is not None:
            await client.close()


def _why(namespace: str, service: str, error: str, delay: float) -> str:
    return f"watching EndpointSlices of {namespace}/{service} failed ({error}); retrying in {delay:.1f} s"
