"""vllm-fleet: one YAML spec in, a verified vLLM endpoint out."""

__version__ = "0.1.0"
