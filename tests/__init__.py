"""The test suite: unit/ mirrors src/, integration/ starts real servers, e2e/ runs real vLLM, servers/ holds
the servers tests share (origins, the fake engine)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
