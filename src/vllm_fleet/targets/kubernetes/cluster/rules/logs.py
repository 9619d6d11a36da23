"""read_log: the primary cause in a container's log, from a table of known texts.

Each ``LogRule`` is one entry: a pattern matched against every log line, the cause a person
reads, the fix (with the spec key where there is one) and whether waiting may help. Adding a
cause is one entry in ``RULES`` and one test. The texts are the ones vLLM 0.6-0.11, torch,
transformers, huggingface_hub and vllm-fleet itself write; each rule cites where in ``source``
(from memory where it says so, else confirmed against the upstream text or issues quoting it).

``RULES`` is in priority order: an error that causes others comes first (a CUDA OOM ends in
``RuntimeError: Engine core initialization failed``; a 401 from the Hub ends in vLLM's
"Invalid repository ID"), and the generic last-exception rule comes last. A line belongs to the
first rule that matches it, so one line never yields two findings.

No I/O: the caller fetches the text (``kubectl logs POD -c CONTAINER --previous``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vllm_fleet.targets.kubernetes.cluster.rules.base import _one_line
from vllm_fleet.weights.cache import MARKER, META_DIR

_EVIDENCE_LIMIT = 300
_GROUP_LIMIT = 200


@dataclass(frozen=True)
class LogRule:
    """One known log text and what it means. ``cause`` and ``fix`` may use the pattern's named groups."""

    name: str
    pattern: re.Pattern[str]
    cause: str
    fix: str
    retryable: bool
    source: str


@dataclass(frozen=True)
class LogFinding:
    """A rule that matched: its cause and fix with the groups filled in, and the line that matched."""

    rule: str
    cause: str
    fix: str
    retryable: bool
    evidence: str


_I = re.IGNORECASE

RULES: tuple[LogRule, ...] = (
    LogRule(
        name="no-device",
        pattern=re.compile(
            r"Failed to infer device type|No CUDA GPUs are available|Found no NVIDIA driver on your system", _I
        ),
        cause="vLLM found no accelerator: no GPU is visible to the container, or the image does not match the hardware",
        fix=(
            "give the container a GPU: resources.gpus >= 1 on a GPU node pool (kubernetes.gpu_node_selector) whose "
            "NVIDIA device plugin is running; or set kubernetes.image to a vLLM build for this hardware (CPU or CUDA)"
        ),
        retryable=False,
        source=(
            "vLLM vllm/config.py DeviceConfig (0.6-0.8) and vllm/config/device.py (0.10+): "
            'RuntimeError("Failed to infer device type"), vLLM issue #12847; torch torch/cuda/__init__.py '
            '"No CUDA GPUs are available", "Found no NVIDIA driver on your system" (from memory)'
        ),
    ),
    LogRule(
        name="no-space",
        pattern=re.compile(r"No space left on device|\bENOSPC\b|not enough free space", _I),
        cause="the cache volume is full: the weights do not fit",
        fix="raise storage.size (the weights cache claim) above the model's size, or empty it (down --purge)",
        retryable=False,
        source="ENOSPC as Python prints it (OSError: [Errno 28] No space left on device); our stage's disk check",
    ),
    LogRule(
        name="stage-forbidden",
        pattern=re.compile(
            r"^error: (?P<message>.*(?:access refused by|refused \(\w+\) for|no AWS credentials found"
            r"|no Google credentials found).*)"
        ),
        cause="the stage could not read model.source: {message}",
        fix=(
            "give the stage credentials that may read model.source: kubernetes.secrets.hf_token (hf://), "
            "kubernetes.secrets.s3 (s3://), or GKE Workload Identity kubernetes.gcp_service_account (gs://)"
        ),
        retryable=False,
        source=(
            "vllm-fleet: SourceForbidden texts in weights/sources/http.py, s3.py and gs.py, printed by "
            'cli/common.py errors() as "error: <message>"'
        ),
    ),
    LogRule(
        name="stage-not-found",
        pattern=re.compile(
            r"^error: (?P<message>.*(?:not found at|model directory not found|model directory \S+ is empty"
            r"|no objects under|bucket \S+ not found|holds no files|no file of the model matches).*)"
        ),
        cause="the stage found no model at model.source: {message}",
        fix="model.source: point it at the model (bucket, prefix, Hub id or path) and check model.revision",
        retryable=False,
        source=(
            "vllm-fleet: SourceNotFound texts in weights/sources/http.py, file.py, s3.py, gs.py, hf.py and "
            'sources/__init__.py, printed by cli/common.py errors() as "error: <message>"'
        ),
    ),
    LogRule(
        name="stage-failed",
        pattern=re.compile(r"^error: (?P<message>\S.*)"),
        cause="vllm-fleet failed: {message}",
        fix=(
            "read the stage's own fix: line after it; check model.source and its credentials (kubernetes.secrets.*, "
            "kubernetes.gcp_service_account)"
        ),
        retryable=False,
        source='vllm-fleet: cli/common.py errors() prints every FleetError as "error: <message>" then "fix: <fix>"',
    ),
    LogRule(
        name="hf-gated",
        pattern=re.compile(
            r"GatedRepoError|Cannot access gated repo|You are trying to access a gated repo"
            r"|Access to model \S+ is restricted|You must (?:have access to it and )?be authenticated"
            r"|\b40[13] Client Error|RepositoryNotFoundError",
            _I,
        ),
        cause="the Hugging Face Hub refused the model: it is gated or private and no token here that may read it",
        fix=(
            "kubernetes.secrets.hf_token: a Secret whose HF_TOKEN belongs to an account that accepted the model's "
            "licence on its Hub page (or check the model id)"
        ),
        retryable=False,
        source=(
            "huggingface_hub utils/_http.py hf_raise_for_status: GatedRepoError "
            '"401 Client Error ... Cannot access gated repo for url ... Access to model X is restricted. You must '
            'have access to it and be authenticated to access it."; transformers utils/hub.py "You are trying to '
            'access a gated repo"'
        ),
    ),
    LogRule(
        name="model-path",
        pattern=re.compile(
            r"does not appear to have a file named config\.json|Can't load the configuration of"
            r"|Invalid repository ID or local directory specified"
            r"|No such file or directory: '(?:[^']*/models/[^']*|/cache/[^']*|[^']*config\.json)'"
            r"|Repo id must (?:be in the form|use alphanumeric)"
            r"|is not a local folder and is not a valid model identifier",
            _I,
        ),
        cause="the engine found no model (no config.json) at the path it was given",
        fix=(
            "the weights were not staged where the engine looks: check model.source and the stage init container "
            "(kubectl logs POD -c stage) or the download Job (kubectl logs job/NAME-download)"
        ),
        retryable=False,
        source=(
            'transformers configuration_utils.py / utils/hub.py ("does not appear to have a file named config.json", '
            '"Can\'t load the configuration of"); vLLM vllm/transformers_utils/config.py get_config (0.8+, PR #13724) '
            '"Invalid repository ID or local directory specified"; huggingface_hub utils/_validators.py '
            'HFValidationError "Repo id must be in the form" (a local path that does not exist)'
        ),
    ),
    LogRule(
        name="unsupported-arch",
        pattern=re.compile(
            r"Model architectures .* are not supported for now|is not supported for now\. Supported architectures"
            r"|Transformers does not recognize this architecture",
            _I,
        ),
        cause="the vLLM (or transformers) in this image cannot run the model's architecture",
        fix="serve a model this vLLM supports, or a newer vLLM image (kubernetes.image)",
        retryable=False,
        source=(
            "vLLM vllm/model_executor/models/registry.py: \"Model architectures ['X'] are not supported for now. "
            'Supported architectures: ..." (docs troubleshooting.md); transformers models/auto/configuration_auto.py '
            '"... but Transformers does not recognize this architecture" (from memory)'
        ),
    ),
    LogRule(
        name="max-len-over-model",
        pattern=re.compile(
            r"User-specified max_model_len \((?P<want>\d+)\) is greater than the derived max_model_len "
            r"\((?P<key>\w+)=(?P<limit>\d+)",
            _I,
        ),
        cause="engine.max_model_len ({want}) is above the model's own limit ({key}={limit})",
        fix="engine.max_model_len: {limit} at most (the model's {key} in config.json)",
        retryable=False,
        source=(
            'vLLM vllm/config.py _get_and_verify_max_len (0.6-0.9; vllm/config/model.py 0.10+): "User-specified '
            "max_model_len (X) is greater than the derived max_model_len (max_position_embeddings=Y or "
            "model_max_length=None in model's config.json)\" (from memory)"
        ),
    ),
    LogRule(
        name="cuda-oom",
        pattern=re.compile(r"(?:CUDA|HIP) out of memory|CUDA error: out of memory|\bOutOfMemoryError\b", _I),
        cause="the GPU ran out of memory while the engine started (weights plus activations did not fit)",
        fix=(
            "lower engine.gpu_memory_utilization (headroom for activations and CUDA graphs), engine.max_model_len or "
            "engine.max_num_seqs; or a larger resources.gpu_type (or engine.tensor_parallel_size)"
        ),
        retryable=False,
        source=(
            'torch c10/cuda/CUDACachingAllocator.cpp: "torch.OutOfMemoryError: CUDA out of memory. Tried to '
            'allocate ..." (torch.cuda.OutOfMemoryError before 2.5); CUDA runtime "CUDA error: out of memory"'
        ),
    ),
    LogRule(
        name="kv-cache-too-small",
        pattern=re.compile(
            r"max seq len \((?P<want>\d+)\).*?"
            r"(?:maximum number of tokens that can be stored in KV cache \(|estimated maximum model length is )"
            r"(?P<fits>\d+)",
            _I,
        ),
        cause="engine.max_model_len ({want}) needs more KV cache than the GPU has left: {fits} tokens fit",
        fix="engine.max_model_len: {fits} (what vLLM says fits), or raise engine.gpu_memory_utilization",
        retryable=False,
        source=(
            "vLLM v0 vllm/worker/worker.py raise_if_cache_size_invalid: \"The model's max seq len (X) is larger than "
            'the maximum number of tokens that can be stored in KV cache (Y)"; vLLM v1 vllm/v1/core/kv_cache_utils.py '
            'check_enough_kv_cache_memory: "... Based on the available memory, the estimated maximum model length '
            'is Y." (vLLM 0.9+)'
        ),
    ),
    LogRule(
        name="kv-cache-short",
        pattern=re.compile(r"max seq len \((?P<want>\d+)\).*larger than the available KV cache memory", _I),
        cause="engine.max_model_len ({want}) needs more KV cache than the GPU has left",
        fix="lower engine.max_model_len below {want}, or raise engine.gpu_memory_utilization",
        retryable=False,
        source=(
            'vLLM v1 vllm/v1/core/kv_cache_utils.py check_enough_kv_cache_memory: "To serve at least one request '
            "with the models's max seq len (X), (N GiB KV cache is needed, which is larger than the available KV "
            'cache memory (M GiB)." without an estimate'
        ),
    ),
    LogRule(
        name="no-kv-memory",
        pattern=re.compile(r"No available memory for the cache blocks|insufficient memory for (?:the )?KV cache", _I),
        cause="nothing was left for the KV cache after the weights and activations",
        fix="raise engine.gpu_memory_utilization or lower engine.max_model_len (or a larger resources.gpu_type)",
        retryable=False,
        source=(
            'vLLM v0 vllm/worker/worker.py and v1 vllm/v1/core/kv_cache_utils.py: "No available memory for the '
            'cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine."'
        ),
    ),
    LogRule(
        name="waiting-for-marker",
        pattern=re.compile(rf"^waiting for '?(?P<marker>\S.*/{re.escape(META_DIR)}/{re.escape(MARKER)})'?$"),
        cause="the pod is waiting for the download Job to stage the model ({marker} is not there yet)",
        fix=(
            "check the download Job: kubectl logs job/NAME-download (it stages model.source; its error: line says "
            "why it failed)"
        ),
        retryable=True,
        source=(
            "vllm-fleet: the wait-for-model init container in targets/kubernetes/manifests/storage.py "
            "(until [ -f MARKER ]; do echo waiting for MARKER; ...), marker from weights/cache.py"
        ),
    ),
    LogRule(
        name="python-exception",
        pattern=re.compile(r"^(?:[A-Za-z_][\w]*\.)*(?P<exc>\w*(?:Error|Exception)): (?P<message>\S.*)"),
        cause="the process exited with {exc}: {message}",
        fix="read the full log: kubectl logs POD -c CONTAINER --previous",
        retryable=False,
        source="Python: the last line of a traceback is 'ExceptionType: message'",
    ),
)

# kubectl logs --timestamps; then vLLM's process tag, "(APIServer pid=1)", "(EngineCore_DP0 pid=7)",
# "(RayWorkerWrapper pid=9, ip=10.0.0.2)"; then its logger's "LEVEL MM-DD HH:MM:SS [file.py:123]"
# (0.6 wrote "file.py:123]" without the opening bracket).
_PREFIX = re.compile(
    r"^(?:\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:?\d\d)\s+)?"
    r"(?:\([\w.-]+ pid=\d+[^)]*\)\s?)?"
    r"(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d\s+[\d:.]+\s+\[?[\w.-]+:\d+\]\s?)?"
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def read_logs(text: str) -> list[LogFinding]:
    """Every distinct rule that matched ``text``, primary first (``RULES`` order), each with its last line."""
    last: dict[int, tuple[re.Match[str], str]] = {}
    for raw in text.splitlines():
        line = _message(raw)
        if not line:
            continue
        for index, rule in enumerate(RULES):
            match = rule.pattern.search(line)
            if match:
                last[index] = (match, line)
                break  # a line belongs to its first rule: an OOM line is not also a generic exception
    return [_finding(RULES[index], *last[index]) for index in sorted(last)]


def read_log(text: str) -> LogFinding | None:
    """The primary cause in ``text``: the last matching line of the highest-priority rule, or None."""
    findings = read_logs(text)
    return findings[0] if findings else None


def _message(raw: str) -> str:
    """The line without colour codes, timestamps and vLLM's process and logger prefixes."""
    line = _ANSI.sub("", raw).rstrip()
    prefix = _PREFIX.match(line)  # every part is optional, so it always matches
    return line[prefix.end() :] if prefix else line


def _finding(rule: LogRule, match: re.Match[str], line: str) -> LogFinding:
    groups = {key: _one_line(value or "", _GROUP_LIMIT) for key, value in match.groupdict().items()}
    return LogFinding(
        rule=rule.name,
        cause=_one_line(rule.cause.format_map(groups)),
        fix=_one_line(rule.fix.format_map(groups)),
        retryable=rule.retryable,
        evidence=_one_line(line, _EVIDENCE_LIMIT),
    )
