"""Fixtures for every test: no ambient credentials, proxies or kubeconfig leak in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / ".cache" / "demo" / "smollm2-135m-instruct"
_CLEARED_PREFIXES = ("AWS_", "HF_", "HUGGING_FACE", "GOOGLE_", "GCS_", "CLOUDSDK_", "KUBECONFIG", "VLLM_FLEET_")
_CLEARED = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "NO_PROXY", "no_proxy")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(_CLEARED_PREFIXES) or key in _CLEARED:
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The demo model directory built by `./dev test` (or `vllm-fleet demo-model`)."""
    if not (DEMO_MODEL / "model.safetensors").is_file():
        message = f"demo model not built: run `vllm-fleet demo-model {DEMO_MODEL}` (./dev test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return DEMO_MODEL
