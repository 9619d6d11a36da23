"""URI -> Source: list a model's files (path, size, checksum) and read byte ranges of them.

    file:///dir  or a plain path     a directory on a local or mounted filesystem
    http(s)://host/dir/file          one file
    http(s)://host/dir/              a directory listed by ``index.txt`` in it (see http.py)
    s3://bucket/prefix               any S3-compatible store (s3.py; endpoint from --endpoint-url
                                     or AWS_ENDPOINT_URL)
    gs://bucket/prefix               Google Cloud Storage (gs.py; STORAGE_EMULATOR_HOST honoured)
    hf://org/name[@revision]         a Hugging Face model repository (hf.py; HF_ENDPOINT, HF_TOKEN)

Every source offers the strongest checksum it has and serves byte ranges as an
async iterator of chunks; the ranged transfer (transfer.py) is written once.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from importlib import import_module
from pathlib import Path

from vllm_fleet.errors import SourceNotFound, SpecError
from vllm_fleet.weights.sources.base import (
    Retryable,
    Source,
    SourceFile,
    SourceOptions,
    bucket_and_prefix,
    file_path,
)

__all__ = [
    "SCHEMES",
    "Retryable",
    "Source",
    "SourceFile",
    "SourceOptions",
    "bucket_and_prefix",
    "file_path",
    "open_source",
    "select_files",
]

WEIGHT_FALLBACKS = ("*.bin", "*.pt", "*.pth")  # skipped when *.safetensors exist, as vLLM's loader does
# scheme -> (module, class): the one list of schemes (the spec validates against it). Modules are
# imported on first use, so a missing cloud SDK costs nothing until its scheme is asked for.
SCHEMES: dict[str, tuple[str, str]] = {
    "file": ("file", "FileSource"),
    "http": ("http", "HttpSource"),
    "https": ("http", "HttpSource"),
    "s3": ("s3", "S3Source"),
    "gs": ("gs", "GcsSource"),
    "hf": ("hf", "HfSource"),
}


def open_source(uri: str, options: SourceOptions | None = None) -> Source:
    """The Source for ``uri``; a plain path means file://."""
    options = options or SourceOptions()
    if "://" not in uri:
        uri = Path(uri).resolve().as_uri()
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise SpecError(f"source scheme {scheme}:// is not supported", fix=f"use one of {known}")
    module, name = SCHEMES[scheme]
    cls = getattr(import_module(f"{__name__}.{module}"), name)
    return cls(uri) if scheme == "file" else cls(uri, options)


def select_files(
    files: Iterable[SourceFile], include: Iterable[str] = (), exclude: Iterable[str] = (), *, all_weights: bool = False
) -> list[SourceFile]:
    """Files matching any ``include`` glob (all when none) and no ``exclude`` glob.

    Unless ``all_weights``, ``*.bin``/``*.pt`` are dropped when ``*.safetensors`` exist: vLLM
    loads only the safetensors then, and the pickled copies double the transfer.
    """
    include, exclude = list(include), list(exclude)
    chosen = [
        f
        for f in files
        if (not include or any(fnmatch.fnmatch(f.path, g) for g in include))
        and not any(fnmatch.fnmatch(f.path, g) for g in exclude)
    ]
    if not all_weights and any(f.path.endswith(".safetensors") for f in chosen):
        chosen = [f for f in chosen if not any(fnmatch.fnmatch(f.path, g) for g in WEIGHT_FALLBACKS)]
    if not chosen:
        raise SourceNotFound("no file of the model matches the include/exclude globs", fix="check --include/--exclude")
    return chosen
