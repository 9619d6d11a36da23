"""`verify` and `bench` of a spec reach its replicas through its target: a Kubernetes spec is reached
through its cluster (a port-forward) and never silently tests 127.0.0.1; a URL is taken as the server
root or as the /v1 base alike."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests import ROOT
from vllm_fleet.errors import FleetError
from vllm_fleet.ops.endpoints import open_endpoints

K8S_SPEC = ROOT / "examples" / "gke-pvc-init.yaml"


@pytest.fixture
def listener_on_8000() -> Iterator[socket.socket]:
    """Something listening where the local numbers of the spec would point (counts connections)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", 8000))
    except OSError:
        pytest.skip("port 8000 is in use here")
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def _accepted(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def _endpoints(where: str) -> list[str]:
    async def urls() -> list[str]:
        async with open_endpoints(where) as found:
            return found.urls

    return asyncio.run(urls())


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000", "http://127.0.0.1:9000/", "http://127.0.0.1:9000/v1"])
def test_a_url_is_its_server_root(url: str) -> None:
    assert _endpoints(url) == ["http://127.0.0.1:9000"]


def test_a_kubernetes_spec_is_reached_through_its_cluster_never_localhost(tmp_path) -> None:
    with pytest.raises(FleetError) as caught:  # no kubeconfig here: the cluster, not 127.0.0.1, is asked
        _endpoints(str(K8S_SPEC))
    assert "no usable kubeconfig" in caught.value.message and "--kubeconfig" in (caught.value.fix or "")


@pytest.mark.parametrize("command", ["verify", "bench"])
def test_cli_verify_and_bench_of_a_kubernetes_spec_connect_to_nothing(
    command: str, listener_on_8000: socket.socket
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vllm_fleet.cli", command, str(K8S_SPEC), "--env", "production"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no usable kubeconfig" in result.stderr and "--kubeconfig" in result.stderr
    assert _accepted(listener_on_8000) == 0
