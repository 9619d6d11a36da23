"""Staging from real S3 (moto server), GCS (gcp-storage-emulator) and Hub-protocol servers on loopback."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from tests.servers import HubServer, free_port
from vllm_fleet.errors import SourceError, SourceForbidden, SourceNotFound
from vllm_fleet.weights import cache
from vllm_fleet.weights.stage import StageOptions, stage

pytestmark = pytest.mark.integration
MiB = 1 << 20
FAST = StageOptions(chunk_size=1 * MiB, concurrency=4, retries=2, backoff=0.01, stall_timeout=2)


def blob(n: int, seed: bytes = b"w") -> bytes:
    return (hashlib.sha256(seed).digest() * (n // 32 + 1))[:n]


@pytest.fixture(scope="module")
def moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    yield f"http://127.0.0.1:{server._port}"
    server.stop()


@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch):
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTKEY0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    client = boto3.client("s3")
    bucket = f"models-{free_port()}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def test_s3_prefix_is_staged_and_md5_verified(s3, tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    client, bucket = s3
    weights, big = blob(3 * MiB), blob(6 * MiB, b"big")
    client.put_object(Bucket=bucket, Key="org/m/config.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key="org/m/model-1.safetensors", Body=weights)
    (tmp_path / "big").write_bytes(big)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    client.upload_file(str(tmp_path / "big"), bucket, "org/m/model-2.safetensors", Config=config)
    client.put_object(Bucket=bucket, Key="org/other/x", Body=b"not this model")

    result = stage(f"s3://{bucket}/org/m", tmp_path / "m", options=FAST)
    assert (tmp_path / "m" / "model-1.safetensors").read_bytes() == weights
    assert (tmp_path / "m" / "model-2.safetensors").read_bytes() == big
    assert result.verified == {"md5": 2, "size": 1}  # a multipart ETag is no MD5
    assert not (tmp_path / "m" / "x").exists()
    assert stage(f"s3://{bucket}/org/m/", tmp_path / "m", options=FAST).skipped


def test_s3_missing_bucket_and_key_errors(s3, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound, match="bucket nope-nope not found"):
        stage("s3://nope-nope/m", tmp_path / "m", options=FAST)
    _, bucket = s3
    with pytest.raises(SourceNotFound, match="no objects under"):
        stage(f"s3://{bucket}/empty", tmp_path / "m", options=FAST)


def test_s3_traversal_key_is_refused(s3, tmp_path: Path) -> None:
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="m/config.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key="m/../../evil", Body=b"x")
    with pytest.raises(SourceError, match="refusing unsafe file name"):
        stage(f"s3://{bucket}/m", tmp_path / "cache" / "m", options=FAST)
    assert not list(tmp_path.rglob("evil"))


def test_s3_without_credentials_is_forbidden_with_a_fix(moto_server: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(SourceForbidden, match="no AWS credentials"):
        stage("s3://b/m", tmp_path / "m", options=FAST)


@pytest.fixture(scope="module")
def gcs_server():
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="models")
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_gcs_prefix_is_staged_and_md5_verified(gcs_server: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    files = {"config.json": b"{}", "model.safetensors": blob(3 * MiB, b"gcs")}
    for name, data in files.items():
        url = f"{gcs_server}/upload/storage/v1/b/models/o?uploadType=media&name=gm/{name}"
        httpx.post(url, content=data, trust_env=False).raise_for_status()
    result = stage("gs://models/gm", tmp_path / "m", options=FAST)
    for name, data in files.items():
        assert (tmp_path / "m" / name).read_bytes() == data
    assert result.verified == {"md5": 2}
    with pytest.raises(SourceNotFound):
        stage("gs://models/absent", tmp_path / "x", options=FAST)


HUB_FILES = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
    "model-00001-of-00002.safetensors": blob(2 * MiB + 17, b"a"),
    "model-00002-of-00002.safetensors": blob(MiB, b"b"),
    "pytorch_model.bin": b"pickled copy",
    "tokenizer.json": b'{"model": {}}',
}


def test_hub_repo_is_staged_pinned_to_the_commit(tmp_path: Path, monkeypatch) -> None:
    with HubServer("org/tiny", HUB_FILES) as hub:
        hub.token = "hf_secret_value_1234"
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        result = stage("hf://org/tiny", tmp_path / "m", options=FAST)
        assert result.revision == hub.commit
        assert result.verified == {"sha256": 2, "gitsha1": 2}  # LFS sha256; git blob ids for the small files
        assert not (tmp_path / "m" / "pytorch_model.bin").exists()
        for name in ("config.json", "model-00001-of-00002.safetensors", "tokenizer.json"):
            assert (tmp_path / "m" / name).read_bytes() == HUB_FILES[name]
        manifest = json.loads((tmp_path / "m" / ".vllm-fleet" / "manifest.json").read_text())
        assert manifest["revision"] == hub.commit
        assert "hf_secret" not in json.dumps(manifest) + json.dumps(result.to_dict())
        assert f"Bearer {hub.token}" in hub.tokens_seen
        resolves = [p for m, p, n in hub.requests if m == "GET" and "/resolve/" in p]
        assert resolves and all(f"/resolve/{hub.commit}/" in p for p in resolves)


def test_hub_errors_never_show_the_token(tmp_path: Path, monkeypatch) -> None:
    with HubServer("org/tiny", HUB_FILES) as hub:
        hub.token = "hf_right_token"
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_5678")
        with pytest.raises(SourceForbidden) as info:
            stage("hf://org/tiny", tmp_path / "m", options=FAST)
        assert "HTTP 401" in str(info.value) and "HF_TOKEN" in str(info.value)
        assert "5678" not in str(info.value)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        with pytest.raises(SourceNotFound, match="not found"):
            stage("hf://org/tiny@v9", tmp_path / "m", options=FAST)


def test_hub_sibling_escaping_the_directory_is_refused(tmp_path: Path, monkeypatch) -> None:
    with HubServer("org/evil", {"config.json": b"{}", "../../outside.json": b"x"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(SourceError, match="refusing unsafe file name"):
            stage("hf://org/evil", tmp_path / "cache" / "m", options=FAST)
    assert not cache.is_complete(tmp_path / "cache" / "m")
    assert not list(tmp_path.rglob("outside.json"))
