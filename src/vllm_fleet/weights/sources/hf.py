"""hf://org/name[@revision]: a Hugging Face model repository, over the Hub's HTTP API.

The listing (``/api/models/{repo}/revision/{rev}?blobs=true``) resolves the
revision to a commit and gives each file's size, its LFS SHA-256 or its git
blob id. Files are then read from ``/{repo}/resolve/{commit}/{path}``, pinned
to that commit; LFS files redirect to a CDN, which aiohttp follows (and drops
the Authorization header on the way to another host). HF_ENDPOINT and the
standard token places (HF_TOKEN, HF_TOKEN_PATH, $HF_HOME/token) are honoured;
the token is never shown, not even in part.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from vllm_fleet.errors import SourceNotFound, SpecError
from vllm_fleet.weights.sources.base import SourceFile, SourceOptions
from vllm_fleet.weights.sources.http import HttpTransport

DEFAULT_ENDPOINT = "https://huggingface.co"


def find_token() -> tuple[str | None, str]:
    """The Hub token and where it came from (the place, for messages)."""
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"].strip(), "HF_TOKEN"
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    path = Path(os.environ.get("HF_TOKEN_PATH") or home / "token")
    try:
        token = path.read_text().strip()
    except OSError:
        return None, "no token"
    return (token, f"the token file {path}") if token else (None, "no token")


class HfSource(HttpTransport):
    def __init__(self, uri: str, options: SourceOptions):
        super().__init__(options)
        self.uri = uri
        repo = uri.split("://", 1)[1].strip("/")
        repo, _, revision = repo.partition("@")
        if not repo or any(part in ("", ".", "..") for part in repo.split("/")) or repo.count("/") > 1:
            raise SpecError(
                f"bad Hugging Face model id in {uri!r}", fix="write hf://ORG/NAME or hf://ORG/NAME@REVISION"
            )
        self.repo = repo
        self.requested = revision or options.revision or "main"
        self.revision: str | None = None
        self.endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self._token, self._token_from = find_token()

    def identity(self) -> str:
        return f"the token from {self._token_from}" if self._token else "no token (anonymous)"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def list_files(self) -> list[SourceFile]:
        url = f"{self.endpoint}/api/models/{self.repo}/revision/{quote(self.requested, safe='')}?blobs=true"
        info = (await self.request("GET", url, f"{self.repo}@{self.requested}", self._auth())).json()
        self.revision = info["sha"]
        files = []
        for sibling in info.get("siblings", []):
            lfs = sibling.get("lfs") or {}
            if lfs.get("sha256"):
                checksum = f"sha256:{lfs['sha256']}"
            elif sibling.get("blobId"):
                checksum = f"gitsha1:{sibling['blobId']}"
            else:
                checksum = None
            size = lfs.get("size", sibling.get("size"))
            if size is None:
                raise SourceNotFound(f"{sibling['rfilename']}: the Hub listed no size", fix="check HF_ENDPOINT")
            files.append(SourceFile(sibling["rfilename"], int(size), checksum))
        if not files:
            raise SourceNotFound(f"{self.repo}@{self.requested} holds no files", fix="check the model id")
        return files

    async def locate(self, file: SourceFile) -> tuple[str, dict[str, str]]:
        return f"{self.endpoint}/{self.repo}/resolve/{self.revision}/{quote(file.path)}", self._auth()
