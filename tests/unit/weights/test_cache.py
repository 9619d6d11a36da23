"""Cache layout: marker last, atomic writes, untrusted names refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_fleet.errors import SourceError
from vllm_fleet.weights import cache


def test_publish_writes_manifest_then_marker(tmp_path: Path) -> None:
    assert not cache.is_complete(tmp_path)
    manifest = cache.Manifest("s3://b/m", None, [cache.ManifestFile("a.safetensors", 3, "sha256:00", "sha256")])
    cache.publish(tmp_path, manifest)
    assert cache.is_complete(tmp_path)
    again = cache.read_manifest(tmp_path)
    assert again is not None and again.files == manifest.files and again.total_bytes == 3
    cache.unpublish(tmp_path)
    assert not cache.is_complete(tmp_path)
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/../../b", "", ".vllm-fleet/COMPLETE", "a\\..\\b"])
def test_safe_join_refuses_escapes(tmp_path: Path, name: str) -> None:
    with pytest.raises(SourceError, match="refusing"):
        cache.safe_join(tmp_path, name)


def test_safe_join_refuses_writing_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "sub").symlink_to(outside)
    with pytest.raises(SourceError, match="symlink"):
        cache.safe_join(root, "sub/x.bin")
    assert cache.safe_join(root, "ok/x.bin") == root / "ok" / "x.bin"
