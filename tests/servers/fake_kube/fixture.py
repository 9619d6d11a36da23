"""Pytest fixtures: a FakeKube per test and a kubeconfig pointing at it.

In a conftest.py, import them (``from tests.servers.fake_kube.fixture import fake_kube,
fake_kubeconfig  # noqa: F401``). In a test module, bind them to module names instead
(``fake_kube = fixture.fake_kube``): pytest finds a fixture under any module attribute, and ruff
does not flag a test argument that shadows an assignment, as it does one that shadows an import.
A test that wants another version sets ``fake_kube.version = "1.28"`` (read at each request).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .fake import FakeKube


@pytest.fixture
def fake_kube() -> Iterator[FakeKube]:
    """A started FakeKube on 127.0.0.1 (Kubernetes 1.30, no nodes), stopped after the test."""
    with FakeKube() as kube:
        yield kube


@pytest.fixture
def fake_kubeconfig(fake_kube: FakeKube, tmp_path: Path) -> Path:
    """A kubeconfig file for ``fake_kube`` (context ``fake``, namespace ``default``)."""
    return fake_kube.kubeconfig(tmp_path / "kubeconfig")
