"""The log rules on log excerpts as vLLM, its libraries and vllm-fleet print them.

The excerpts keep vLLM's prefixes ("(APIServer pid=1) ERROR 12-01 10:00:00 [core.py:708]") and its
tracebacks, so a rule that matches here matches a real pod's ``kubectl logs``.
"""

from __future__ import annotations

import re
import string

import pytest

from vllm_fleet.targets.kubernetes.cluster.rules.logs import RULES, LogRule, read_log, read_logs

API = "(APIServer pid=1) "
CORE = "(EngineCore_DP0 pid=60) "
CORE_ERROR = CORE + "ERROR 12-01 10:00:40 [core.py:708] "
OOM = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.96 GiB. "
    "GPU 0 has a total capacity of 79.19 GiB of which 1.02 GiB is free."
)


def _log(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


HEALTHY = _log(
    "INFO 12-01 10:00:00 [__init__.py:216] Automatically detected platform cuda.",
    API + "INFO 12-01 10:00:03 [api_server.py:1839] vLLM API server version 0.11.0",
    API + "INFO 12-01 10:00:03 [utils.py:233] non-default args: {'model': '/cache/models/qwen', 'max_model_len': 4096}",
    API + "INFO 12-01 10:00:09 [model.py:547] Resolved architecture: Qwen2ForCausalLM",
    CORE + "INFO 12-01 10:00:15 [core.py:644] Waiting for init message from front-end.",
    CORE + "INFO 12-01 10:00:21 [gpu_model_runner.py:2602] Starting to load model /cache/models/qwen...",
    CORE + "INFO 12-01 10:00:31 [default_loader.py:267] Loading weights took 9.12 seconds",
    CORE + "INFO 12-01 10:00:32 [gpu_model_runner.py:2653] Model loading took 14.25 GiB and 10.1 seconds",
    CORE + "INFO 12-01 10:00:40 [gpu_worker.py:298] Available KV cache memory: 51.13 GiB",
    CORE + "INFO 12-01 10:00:40 [kv_cache_utils.py:1087] GPU KV cache size: 957,424 tokens",
    CORE + "INFO 12-01 10:00:40 [kv_cache_utils.py:1091] Maximum concurrency for 4,096 tokens per request: 233.75x",
    API + "INFO 12-01 10:00:45 [api_server.py:1634] Starting vLLM API server 0 on http://0.0.0.0:8000",
    API + "INFO:     Started server process [1]",
    API + "INFO:     Waiting for application startup.",
    API + "INFO:     Application startup complete.",
    API + 'INFO:     10.0.0.7:51234 - "GET /health HTTP/1.1" 200 OK',
)

NO_DEVICE = _log(
    "INFO 03-04 10:00:00 [__init__.py:256] No platform detected, vLLM is running on UnspecifiedPlatform",
    "Traceback (most recent call last):",
    '  File "/usr/local/lib/python3.12/dist-packages/vllm/engine/arg_utils.py", line 1074, in create_engine_config',
    "    device_config = DeviceConfig(device=self.device)",
    "                    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    '  File "/usr/local/lib/python3.12/dist-packages/vllm/config.py", line 1626, in __init__',
    '    raise RuntimeError("Failed to infer device type")',
    "RuntimeError: Failed to infer device type",
)

OOM_THEN_ENGINE_FAILED = _log(
    CORE + "INFO 12-01 10:00:32 [gpu_model_runner.py:2653] Model loading took 70.12 GiB and 40.3 seconds",
    CORE_ERROR + "EngineCore failed to start.",
    CORE_ERROR + "Traceback (most recent call last):",
    CORE_ERROR
    + '  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py", line 699, in run_engine_core',
    CORE_ERROR + "    engine_core = EngineCoreProc(*args, **kwargs)",
    CORE_ERROR + OOM,
    CORE + "Process EngineCore_DP0:",
    CORE + "Traceback (most recent call last):",
    CORE + OOM,
    API + "Traceback (most recent call last):",
    API
    + '  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/utils.py", line 840, in wait_for_engine_startup',
    API + '    raise RuntimeError("Engine core initialization failed. "',
    API + "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
)

KV_V1 = (
    "(EngineCore_DP0 pid=60) ERROR 10-08 20:33:48 [core.py:708] ValueError: To serve at least one request with "
    "the models's max seq len (40960), (5.62 GiB KV cache is needed, which is larger than the available KV cache "
    "memory (4.50 GiB). Based on the available memory, the estimated maximum model length is 32768. Try increasing "
    "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.\n"
    "(APIServer pid=1) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n"
)

KV_V0 = (
    "ERROR 11-02 08:12:55 engine.py:366] The model's max seq len (32768) is larger than the maximum number of "
    "tokens that can be stored in KV cache (12345). Try increasing `gpu_memory_utilization` or decreasing "
    "`max_model_len` when initializing the engine.\n"
    "ValueError: The model's max seq len (32768) is larger than the maximum number of tokens that can be stored in "
    "KV cache (12345). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the "
    "engine.\n"
)

GATED = _log(
    API + "Traceback (most recent call last):",
    API + '  File "/usr/lib/python3/dist-packages/huggingface_hub/utils/_http.py", line 409, in hf_raise_for_status',
    API + "    raise _format(GatedRepoError, message, response) from e",
    API + "huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-66f4b037-1bf3d7d2)",
    API,
    API + "Cannot access gated repo for url "
    "https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/resolve/main/config.json.",
    API + "Access to model meta-llama/Llama-3.1-8B-Instruct is restricted. "
    "You must have access to it and be authenticated to access it. Please log in.",
    API + "ValueError: Invalid repository ID or local directory specified: 'meta-llama/Llama-3.1-8B-Instruct'.",
    API + "Please verify the following requirements:",
    API + "1. Provide a valid Hugging Face repository ID.",
)

CASES = {
    "no-device": NO_DEVICE,
    "no-space": "error: cannot write /cache/models/q/model.safetensors.partial: [Errno 28] No space left on device\n",
    "cuda-oom": OOM_THEN_ENGINE_FAILED,
    "no-kv-memory": (
        "(EngineCore_DP0 pid=60) ERROR 12-01 10:00:40 [core.py:708] ValueError: No available memory for the cache "
        "blocks. Try increasing `gpu_memory_utilization` when initializing the engine.\n"
    ),
    "kv-cache-too-small": KV_V1,
    "kv-cache-short": (
        "(EngineCore_DP0 pid=60) ERROR 10-08 20:33:48 [core.py:708] ValueError: To serve at least one request with "
        "the models's max seq len (131072), (16.00 GiB KV cache is needed, which is larger than the available KV "
        "cache memory (0.50 GiB).  Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
        "initializing the engine.\n"
    ),
    "max-len-over-model": (
        "(APIServer pid=1) ERROR 12-01 10:00:05 [api_server.py:1920] ValueError: User-specified max_model_len "
        "(100000) is greater than the derived max_model_len (max_position_embeddings=8192 or model_max_length=None "
        "in model's config.json). This may lead to incorrect model outputs or CUDA errors. To allow overriding this "
        "maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1\n"
    ),
    "hf-gated": GATED,
    "unsupported-arch": (
        "(APIServer pid=1) ValueError: Model architectures ['FancyNewForCausalLM'] are not supported for now. "
        "Supported architectures: dict_keys(['AquilaModel', 'LlamaForCausalLM', 'Qwen2ForCausalLM'])\n"
    ),
    "model-path": (
        "INFO 04-29 07:18:08 [api_server.py:1044] vLLM API server version 0.8.5\n"
        "OSError: /cache/models/qwen does not appear to have a file named config.json. Checkout "
        "'https://huggingface.co//cache/models/qwen/tree/None' for available files.\n"
        "ValueError: Invalid repository ID or local directory specified: '/cache/models/qwen'.\n"
        "Please verify the following requirements:\n"
        "1. Provide a valid Hugging Face repository ID.\n"
    ),
    "stage-forbidden": (
        "error: config.json: access refused by s3://models/qwen (HTTP 403) for access key AKIA…WXYZ (from env)\n"
        "fix: check the credentials and that they may read this object\n"
    ),
    "stage-not-found": "error: no objects under gs://models/qwen\nfix: check the bucket and prefix\n",
    "stage-failed": (
        "error: /cache/models/qwen has no completion marker: the model is not fully staged\nfix: re-run the stage\n"
    ),
    "waiting-for-marker": (
        "waiting for /cache/models/qwen/.vllm-fleet/COMPLETE\nwaiting for /cache/models/qwen/.vllm-fleet/COMPLETE\n"
    ),
    "python-exception": (
        "(APIServer pid=1) Traceback (most recent call last):\n"
        '(APIServer pid=1)   File "/usr/local/lib/python3.12/dist-packages/vllm/entrypoints/cli/main.py", line 73\n'
        "(APIServer pid=1) KeyError: 'rope_scaling'\n"
    ),
}


def test_every_rule_has_a_case_and_a_unique_name() -> None:
    names = [rule.name for rule in RULES]
    assert len(names) == len(set(names))
    assert set(CASES) == set(names)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
def test_templates_use_only_their_own_groups(rule: LogRule) -> None:
    """A ``{name}`` in cause or fix that the pattern does not capture would raise at read time."""
    fields = {name for text in (rule.cause, rule.fix) for _, name, _, _ in string.Formatter().parse(text) if name}
    assert fields <= set(rule.pattern.groupindex)
    assert rule.source


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_rule_names_its_cause(name: str) -> None:
    finding = read_log(CASES[name])
    assert finding is not None and finding.rule == name
    assert "{" not in finding.fix and finding.evidence


def test_healthy_startup_finds_nothing() -> None:
    assert read_log(HEALTHY) is None
    assert read_logs(HEALTHY) == []
    assert read_log("") is None


def test_oom_is_the_primary_cause_not_the_engine_failure_it_causes() -> None:
    findings = read_logs(OOM_THEN_ENGINE_FAILED)
    assert [f.rule for f in findings] == ["cuda-oom", "python-exception"]
    primary = findings[0]
    assert primary.evidence.startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert "engine.gpu_memory_utilization" in primary.fix and "resources.gpu_type" in primary.fix
    assert not primary.retryable
    assert "Engine core initialization failed" in findings[1].cause


def test_no_device_is_the_raised_line_not_the_source_line() -> None:
    finding = read_log(NO_DEVICE)
    assert finding is not None and not finding.retryable
    assert finding.evidence == "RuntimeError: Failed to infer device type"
    assert "resources.gpus" in finding.fix and "kubernetes.image" in finding.fix


@pytest.mark.parametrize(("text", "fits", "want"), [(KV_V1, "32768", "40960"), (KV_V0, "12345", "32768")])
def test_kv_cache_fix_names_the_length_vllm_printed(text: str, fits: str, want: str) -> None:
    finding = read_log(text)
    assert finding is not None and finding.rule == "kv-cache-too-small"
    assert f"engine.max_model_len: {fits}" in finding.fix
    assert f"({want})" in finding.cause and f"{fits} tokens fit" in finding.cause


def test_max_len_over_model_names_the_model_limit() -> None:
    finding = read_log(CASES["max-len-over-model"])
    assert finding is not None
    assert finding.fix.startswith("engine.max_model_len: 8192 at most (the model's max_position_embeddings")
    assert "(100000)" in finding.cause


def test_gated_repo_outranks_the_invalid_repository_it_causes() -> None:
    findings = read_logs(GATED)
    assert [f.rule for f in findings] == ["hf-gated", "model-path"]
    assert "kubernetes.secrets.hf_token" in findings[0].fix and "licence" in findings[0].fix
    # the last matching line of the rule is the evidence
    assert findings[0].evidence.startswith("Access to model meta-llama/Llama-3.1-8B-Instruct is restricted")


def test_stage_errors_carry_their_message_and_credential_keys() -> None:
    forbidden = read_log(CASES["stage-forbidden"])
    assert forbidden is not None
    assert "access refused by s3://models/qwen (HTTP 403)" in forbidden.cause
    assert "kubernetes.gcp_service_account" in forbidden.fix and "kubernetes.secrets" in forbidden.fix
    failed = read_log(CASES["stage-failed"])
    assert failed is not None and failed.cause.endswith("has no completion marker: the model is not fully staged")


def test_waiting_for_the_marker_is_retryable_and_quoted_paths_match() -> None:
    finding = read_log("waiting for '/cache/models/my model/.vllm-fleet/COMPLETE'\n")
    assert finding is not None and finding.rule == "waiting-for-marker" and finding.retryable
    assert "/cache/models/my model/.vllm-fleet/COMPLETE" in finding.cause


def test_prefixes_colour_and_timestamps_are_stripped() -> None:
    text = (
        "2025-06-03T10:00:00.123456789Z (RayWorkerWrapper pid=9, ip=10.0.0.2) ERROR 06-21 03:49:38 "
        "worker_base.py:148] \x1b[31mKeyError: 'x'\x1b[0m\n"
    )
    finding = read_log(text)
    assert finding is not None and finding.rule == "python-exception"
    assert finding.evidence == "KeyError: 'x'"
    assert finding.cause == "the process exited with KeyError: 'x'"


def test_vllm_error_lines_are_not_our_error_lines() -> None:
    """vLLM's "ERROR 12-01 ..." level and "CUDA error: ..." are not vllm-fleet's "error: <message>"."""
    finding = read_log(
        "(EngineCore_DP0 pid=60) ERROR 12-01 10:00:40 [core.py:708] RuntimeError: CUDA error: out of memory\n"
    )
    assert finding is not None and finding.rule == "cuda-oom"


def test_evidence_is_trimmed() -> None:
    finding = read_log("RuntimeError: " + "x" * 1000)
    assert finding is not None and len(finding.evidence) <= 300


def test_patterns_compile_as_regexes() -> None:
    assert all(isinstance(rule.pattern, re.Pattern) for rule in RULES)


def test_the_readme_shows_the_dump_command_doctor_reads() -> None:
    from tests import ROOT
    from vllm_fleet.targets.kubernetes.cluster.doctor import DUMP_COMMAND

    assert DUMP_COMMAND in (ROOT / "README.md").read_text()
