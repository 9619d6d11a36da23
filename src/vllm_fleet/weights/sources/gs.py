"""gs://bucket/prefix over the GCS JSON API.

Credentials come from Application Default Credentials (google-auth, the ``gcs``
extra, imported lazily: env, gcloud's file, workload identity, metadata server).
With STORAGE_EMULATOR_HOST set (the emulator's documented switch) requests go
there without credentials. Reads are pinned to the listed generation, so an
object replaced mid-transfer fails instead of mixing versions. Each file is
checked against its MD5 (absent for composite objects) or else its CRC32C.
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any
from urllib.parse import quote, urlencode

from vllm_fleet.errors import FleetError, SourceNotFound
from vllm_fleet.weights.sources.base import SourceFile, SourceOptions, bucket_and_prefix
from vllm_fleet.weights.sources.http import HttpTransport

INSTALL_HINT = "pip install 'vllm-fleet[gcs]'"
SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"


class GcsSource(HttpTransport):
    def __init__(self, uri: str, options: SourceOptions):
        super().__init__(options)
        self.bucket, self.prefix = bucket_and_prefix(uri)
        self.uri = f"gs://{self.bucket}/{self.prefix}"  # one spelling per model: the manifest compares it
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        self.base = (emulator if "://" in (emulator or "") else f"http://{emulator}") if emulator else None
        self.base = (self.base or "https://storage.googleapis.com").rstrip("/")
        self._emulator = bool(emulator)
        self._credentials: Any = None  # loaded on first request, off the event loop (it may ask a metadata server)
        self._generations: dict[str, str] = {}

    @staticmethod
    def _load_credentials() -> Any:
        try:
            import google.auth
            import google.auth.exceptions
        except ImportError as exc:
            raise FleetError("gs:// sources need google-auth", fix=INSTALL_HINT) from exc
        try:
            credentials, _ = google.auth.default(scopes=[SCOPE])
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise FleetError(
                "no Google credentials found for gs://",
                fix="run `gcloud auth application-default login` or use a workload identity",
            ) from exc
        return credentials

    def identity(self) -> str:
        if self._credentials is None:
            return "no credentials (emulator)" if self._emulator else "no credentials"
        email = getattr(self._credentials, "service_account_email", None)
        return f"service account {email}" if email else f"{type(self._credentials).__name__} credentials"

    async def _headers(self) -> dict[str, str]:
        if self._emulator:
            return {}
        if self._credentials is None:
            self._credentials = await asyncio.to_thread(self._load_credentials)
        if not self._credentials.valid:
            import google.auth.transport.requests

            await asyncio.to_thread(self._credentials.refresh, google.auth.transport.requests.Request())
        return {"Authorization": f"Bearer {self._credentials.token}"}

    async def list_files(self) -> list[SourceFile]:
        files: list[SourceFile] = []
        token = None
        while True:
            query = {"prefix": self.prefix, "fields": "items(name,size,md5Hash,crc32c,generation),nextPageToken"}
            if token:
                query["pageToken"] = token
            url = f"{self.base}/storage/v1/b/{quote(self.bucket, safe='')}/o?{urlencode(query)}"
            page = (await self.request("GET", url, self.uri, await self._headers())).json()
            for item in page.get("items", []):
                if item["name"].endswith("/"):
                    continue
                self._generations[item["name"]] = str(item.get("generation", ""))
                files.append(SourceFile(item["name"][len(self.prefix) :], int(item["size"]), _checksum(item)))
            token = page.get("nextPageToken")
            if not token:
                break
        if not files:
            raise SourceNotFound(f"no objects under {self.uri}", fix="check the bucket and prefix")
        return files

    async def locate(self, file: SourceFile) -> tuple[str, dict[str, str]]:
        name = self.prefix + file.path
        query = {"alt": "media"}
        if self._generations.get(name):
            query["generation"] = self._generations[name]
        url = f"{self.base}/storage/v1/b/{quote(self.bucket, safe='')}/o/{quote(name, safe='')}?{urlencode(query)}"
        return url, await self._headers()


def _checksum(item: dict) -> str | None:
    if item.get("md5Hash"):
        return f"md5:{base64.b64decode(item['md5Hash']).hex()}"
    if item.get("crc32c"):
        return f"crc32c:{base64.b64decode(item['crc32c']).hex()}"
    return None
