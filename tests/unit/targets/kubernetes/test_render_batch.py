"""`render --batch`: the batch as a Job against the Service, its files on a claim, resumable by replacement."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests import ROOT
from tests.unit.targets.kubernetes.test_render import _spec, validate
from vllm_fleet.plan import resolve
from vllm_fleet.spec import parse_spec
from vllm_fleet.targets.kubernetes.manifests.batch import BatchJob, batch_job


def test_the_batch_job_runs_batch_against_the_service_with_its_files_on_the_claim() -> None:
    plan = resolve(parse_spec(_spec()))
    job = batch_job(plan, BatchJob("evals", "in/questions.jsonl", "out/answers.jsonl", "choice", 16))
    validate(job)
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == [
        "vllm-fleet", "batch", "http://m.llm.svc:8000", "/batch/in/questions.jsonl", "-o", "/batch/out/answers.jsonl",
        "--model", "m", "--eval", "choice", "--report", "/batch/out/answers.jsonl.report.json", "--concurrency", "16",
    ]  # fmt: skip
    assert {"name": "batch", "mountPath": "/batch"} in container["volumeMounts"]
    assert {"name": "batch", "persistentVolumeClaim": {"claimName": "evals"}} in pod["volumes"]
    # A killed or evicted pod is replaced, and the replacement skips what the output already holds.
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] > 0


def test_render_batch_prints_only_the_job_and_needs_a_claim(tmp_path) -> None:
    spec = tmp_path / "m.yaml"
    spec.write_text(_spec())
    cli = [sys.executable, "-m", "vllm_fleet.cli", "render", str(spec), "--batch", "q.jsonl"]
    missing = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 2 and "--batch-claim" in missing.stderr
    done = subprocess.run([*cli, "--batch-claim", "evals"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    [job] = list(yaml.safe_load_all(done.stdout))
    assert job["kind"] == "Job" and job["metadata"]["name"] == "m-batch"
