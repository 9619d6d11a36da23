"""Port-forward to a pod through the API server, over WebSocket, so verify and bench reach it from here.

The protocol is the kubelet's WebSocket port-forward (pkg/kubelet/cri/streaming/portforward/websocket.go,
proxied by the API server): ``GET .../pods/NAME/portforward?ports=P`` upgraded with subprotocol
``portforward.k8s.io``; every binary message starts with its channel (0: data, 1: errors, for the one
port); the server first sends the port, 2 bytes little-endian, on each channel. One WebSocket carries
one TCP connection, so each connection accepted on the local port opens its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from vllm_fleet.targets.kubernetes.cluster.client import Cluster, ClusterError

SUBPROTOCOL = "portforward.k8s.io"
DATA, ERROR = 0, 1


async def _auth_headers(cluster: Cluster) -> dict[str, str]:
    """The Authorization header lightkube's auth would send (a token, or what an exec plugin returns)."""
    import httpx2
    from lightkube.config.client_adapter import user_auth

    auth = user_auth(cluster.client.config.user)
    if auth is None:
        return {}
    request = httpx2.Request("GET", cluster.server)
    flow = auth.async_auth_flow(request)
    signed = await flow.__anext__()
    with contextlib.suppress(StopAsyncIteration):
        await flow.aclose()
    return {k: v for k, v in signed.headers.items() if k.lower() == "authorization"}


def _ssl(cluster: Cluster) -> ssl.SSLContext | bool:
    """TLS as the kubeconfig says: its CA (or the system's), client certificates, or insecure-skip-tls-verify."""
    config = cluster.client.config
    if not cluster.server.startswith("https"):
        return False
    from lightkube.config.client_adapter import user_cert, verify_cluster

    user = config.user
    if user is None:
        raise ClusterError(f"the kubeconfig context {cluster.context} names no user", fix="check --context")
    verify = verify_cluster(config.cluster, user, config.abs_file, trust_env=False)
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    elif isinstance(verify, ssl.SSLContext):
        context = verify
    else:
        context = ssl.create_default_context(cafile=None if verify is True else str(verify))
    cert = user_cert(user, config.abs_file)
    if cert:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


@asynccontextmanager
async def forward(cluster: Cluster, namespace: str, pod: str, port: int) -> AsyncIterator[str]:
    """A local URL (http://127.0.0.1:LOCAL) that reaches ``pod``:``port`` while the context is open."""
    headers = await _auth_headers(cluster)
    url = f"{cluster.server.rstrip('/')}/api/v1/namespaces/{namespace}/pods/{pod}/portforward?ports={port}"
    session = aiohttp.ClientSession()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ws = await session.ws_connect(url, protocols=(SUBPROTOCOL,), headers=headers, ssl=_ssl(cluster))
        except aiohttp.ClientError:
            writer.close()
            return
        async with ws:
            if await _port_frames(ws):
                await asyncio.gather(_upstream(reader, ws), _downstream(ws, writer), return_exceptions=True)
        writer.close()

    try:
        await _check(session, url, headers, cluster)
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        local = server.sockets[0].getsockname()[1]
        async with server:
            yield f"http://127.0.0.1:{local}"
    finally:
        await session.close()


async def _check(session: aiohttp.ClientSession, url: str, headers: dict[str, str], cluster: Cluster) -> None:
    """Open one stream first, so a refusal (403, 404, a pod not running) is an error here, not a broken verify."""
    try:
        ws = await session.ws_connect(url, protocols=(SUBPROTOCOL,), headers=headers, ssl=_ssl(cluster))
    except aiohttp.WSServerHandshakeError as exc:
        pod = url.rsplit("/portforward", 1)[0].rsplit("/", 1)[1]
        raise ClusterError(
            f"port-forward to pod {pod} refused: HTTP {exc.status} {exc.message}",
            fix="check `create pods/portforward` permission (vllm-fleet preflight) and that the pod runs",
            code=exc.status,
        ) from exc
    except aiohttp.ClientError as exc:
        raise ClusterError(f"cannot port-forward through {cluster.server}: {exc}") from exc
    await ws.close()


async def _port_frames(ws: Any) -> bool:
    """The server names the port on the data and the error channel before any data (websocket.go)."""
    for _ in (DATA, ERROR):
        message = await ws.receive()
        if message.type != aiohttp.WSMsgType.BINARY:
            return False
    return True


async def _upstream(reader: asyncio.StreamReader, ws: Any) -> None:
    """Local bytes to the pod, on the data channel."""
    while chunk := await reader.read(1 << 16):
        await ws.send_bytes(bytes([DATA]) + chunk)


async def _downstream(ws: Any, writer: asyncio.StreamWriter) -> None:
    """The pod's bytes back to the local connection; text on the error channel ends it."""
    async for message in ws:
        if message.type != aiohttp.WSMsgType.BINARY or not message.data:
            break
        channel, payload = message.data[0], message.data[1:]
        if channel == DATA and payload:
            writer.write(payload)
            await writer.drain()
        elif channel == ERROR and payload:
            break
