"""s3://bucket/prefix on AWS or any S3-compatible store (MinIO, DigitalOcean Spaces, R2 ...).

boto3 (the ``s3`` extra, imported lazily) lists the objects and presigns GET
URLs with the standard credential chain (env, config files, instance or
workload identity); the bytes come over the shared ranged HTTP transport.
The endpoint is ``--endpoint-url`` or AWS_ENDPOINT_URL. A single-part ETag is
the object's MD5; a multipart one is not, so such files are checked by size
unless the object carries a full-object SHA-256 checksum.
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

from vllm_fleet.errors import FleetError, SourceError, SourceForbidden, SourceNotFound
from vllm_fleet.weights.sources.base import SourceFile, SourceOptions, bucket_and_prefix
from vllm_fleet.weights.sources.http import HttpTransport, normalize_etag

INSTALL_HINT = "pip install 'vllm-fleet[s3]'"
PRESIGN_SECONDS = 6 * 3600


class S3Source(HttpTransport):
    def __init__(self, uri: str, options: SourceOptions):
        super().__init__(options)
        self.bucket, self.prefix = bucket_and_prefix(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}"  # one spelling per model: the manifest compares it
        self._s3: Any = None
        self._urls: dict[str, str] = {}

    def _client_s3(self) -> Any:
        if self._s3 is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:
                raise FleetError("s3:// sources need boto3", fix=INSTALL_HINT) from exc
            endpoint = self.options.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
            config = Config(retries={"max_attempts": 5, "mode": "standard"}, signature_version="s3v4")
            self._s3 = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
        return self._s3

    def identity(self) -> str:
        """The access key id, shortened, and where it came from: enough to tell which one, never the secret."""
        try:
            creds = self._client_s3()._request_signer._credentials
        except AttributeError:
            creds = None
        if creds is None:
            return "no credentials"
        key = creds.access_key or ""
        return f"access key {key[:4]}…{key[-4:]} (from {creds.method})"

    async def list_files(self) -> list[SourceFile]:
        return await asyncio.to_thread(self._list)

    def _list(self) -> list[SourceFile]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        s3 = self._client_s3()
        files = []
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith("/"):
                        continue  # a "directory" placeholder
                    files.append(self._file(s3, obj))
        except NoCredentialsError as exc:
            raise SourceForbidden(
                f"no AWS credentials found to list {self.uri}",
                fix="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance/workload role",
            ) from exc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "404"):
                raise SourceNotFound(f"bucket {self.bucket} not found", fix="check the s3:// URI") from exc
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise SourceForbidden(
                    f"listing {self.uri} refused ({code}) for {self.identity()}",
                    fix="check the credentials and that they may list this bucket",
                ) from exc
            raise SourceError(f"listing {self.uri} failed: {code}", fix="check the s3:// URI and endpoint") from exc
        except BotoCoreError as exc:
            raise SourceError(
                f"listing {self.uri} failed: {exc}", fix="check --endpoint-url / AWS_ENDPOINT_URL"
            ) from exc
        if not files:
            raise SourceNotFound(f"no objects under {self.uri}", fix="check the bucket and prefix")
        return files

    def _file(self, s3: Any, obj: dict) -> SourceFile:
        key, size, etag = obj["Key"], obj["Size"], normalize_etag(obj.get("ETag"))
        checksum = None
        if etag and "-" not in etag and len(etag) == 32:
            checksum = f"md5:{etag}"
        elif size:  # multipart: only a full-object SHA-256 checksum (if uploaded with one) says more than size
            head = s3.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            value = head.get("ChecksumSHA256")
            if value and "-" not in value and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
                checksum = f"sha256:{base64.b64decode(value).hex()}"
        self._urls[key] = s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS
        )
        return SourceFile(key[len(self.prefix) :], size, checksum, etag)

    async def locate(self, file: SourceFile) -> tuple[str, dict[str, str]]:
        return self._urls[self.prefix + file.path], {}
