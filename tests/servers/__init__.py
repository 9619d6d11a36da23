"""Real servers on loopback for the staging tests and benchmark.

- ``Origin``: a threaded Python HTTP server with Range, HEAD and ETag, an optional
  per-connection bandwidth cap, and scripted faults per request (status codes,
  dropped connections, stalls, wrong bytes, truncation). nginx cannot script
  faults, so fault tests use this one.
- ``HubServer``: an ``Origin`` that speaks the Hugging Face resolve protocol:
  ``/api/models/{repo}/revision/{rev}?blobs=true``; ``/{repo}/resolve/{rev}/{path}``
  answering with ETag, X-Repo-Commit, and for LFS files a 302 to a CDN path with
  X-Linked-Etag and X-Linked-Size, as the Hub documents.
- ``Nginx``: nginx from Debian serving a directory, with ``limit_rate`` (benchmark
  and a happy-path test).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass(frozen=True)
class Fault:
    """What one GET does instead of answering normally."""

    status: int | None = None  # answer this status and no body
    drop_after: int | None = None  # send this many body bytes, then close the connection
    stall: float | None = None  # send headers, then nothing for this long
    corrupt: bool = False  # flip the bytes of the body
    short_by: int | None = None  # declare the full length, send this many bytes fewer, close


class Origin:
    """A threaded HTTP origin for ``files`` (path -> bytes) with scripted faults."""

    def __init__(self, rate: float | None = None):
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, deque[Fault]] = defaultdict(deque)
        self.always: dict[str, Fault] = {}  # a fault every GET of that path meets
        self.rate = rate  # bytes per second per connection, None for no cap
        self.requests: list[tuple[str, str, int]] = []  # (method, path, body bytes sent)
        self.lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                origin.handle(self, head=False)

            def do_HEAD(self) -> None:
                origin.handle(self, head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # clients killed mid-body are expected here
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Origin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def bytes_sent(self, path: str | None = None) -> int:
        with self.lock:
            return sum(n for method, p, n in self.requests if method == "GET" and (path is None or p == path))

    def handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        if self.route(h, path, head):
            return
        self.send_file(h, path, self.files.get(path), head)

    def route(self, h: BaseHTTPRequestHandler, path: str, head: bool) -> bool:
        """Subclasses answer their own paths here."""
        return False

    def send_file(
        self, h: BaseHTTPRequestHandler, path: str, data: bytes | None, head: bool, headers: dict | None = None
    ) -> None:
        if data is None:
            self._reply(h, 404, {"Content-Length": "0"})
            return
        fault = None if head else self._next_fault(path)
        if fault and fault.status:
            self._reply(h, fault.status, {"Content-Length": "0"})
            return
        etag = f'"{hashlib.md5(data).hexdigest()}"'
        out = {"ETag": etag, "Accept-Ranges": "bytes", **(headers or {})}
        start, end, status = 0, len(data), 200
        match = _RANGE.fullmatch(h.headers.get("Range", ""))
        if match:
            start = int(match[1])
            end = min(len(data), int(match[2]) + 1) if match[2] else len(data)
            if start >= len(data):
                self._reply(h, 416, {"Content-Range": f"bytes */{len(data)}", "Content-Length": "0"})
                return
            status = 206
            out["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        out["Content-Length"] = str(end - start)
        self._reply(h, status, out)
        if head:
            with self.lock:
                self.requests.append(("HEAD", path, 0))
            return
        body = data[start:end]
        if fault and fault.corrupt:
            body = bytes(b ^ 0xFF for b in body)
        if fault and fault.stall:
            time.sleep(fault.stall)
            h.close_connection = True
            return
        if fault and fault.drop_after is not None:
            body = body[: fault.drop_after]
        if fault and fault.short_by is not None:
            body = body[: max(0, len(body) - fault.short_by)]
        sent = self._send_body(h, body)
        with self.lock:
            self.requests.append(("GET", path, sent))
        if fault and (fault.drop_after is not None or fault.short_by is not None):
            h.close_connection = True
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)

    def _next_fault(self, path: str) -> Fault | None:
        with self.lock:
            if self.faults[path]:
                return self.faults[path].popleft()
            return self.always.get(path)

    def _send_body(self, h: BaseHTTPRequestHandler, body: bytes) -> int:
        block = 64 << 10
        sent = 0
        started = time.monotonic()
        try:
            for offset in range(0, len(body), block):
                h.wfile.write(body[offset : offset + block])
                sent += len(body[offset : offset + block])
                if self.rate:
                    ahead = sent / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        return sent

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, headers: dict[str, str]) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.end_headers()


class HubServer(Origin):
    """The Hugging Face Hub's listing and resolve endpoints for one repository."""

    def __init__(self, repo: str, files: dict[str, bytes], *, lfs: tuple[str, ...] = ("*.safetensors",)):
        super().__init__()
        self.repo = repo
        self.commit = hashlib.sha1(repr(sorted(files)).encode()).hexdigest()
        self.repo_files = files
        self.lfs = {name for name in files if any(Path(name).match(g) for g in lfs)}
        self.tokens_seen: list[str | None] = []
        self.token: str | None = None  # when set, the API and resolve endpoints require it
        for name in self.lfs:
            self.files[f"/cdn/{hashlib.sha256(files[name]).hexdigest()}"] = files[name]

    def route(self, h: BaseHTTPRequestHandler, path: str, head: bool) -> bool:
        self.tokens_seen.append(h.headers.get("Authorization"))
        if self.token and not path.startswith("/cdn/") and h.headers.get("Authorization") != f"Bearer {self.token}":
            self._reply(h, 401, {"Content-Length": "0", "X-Error-Code": "GatedRepo"})
            return True
        listing = f"/api/models/{self.repo}/revision/"
        if path.startswith(listing):
            revision = path[len(listing) :]
            if revision not in ("main", self.commit):
                self._reply(h, 404, {"Content-Length": "0", "X-Error-Code": "RevisionNotFound"})
                return True
            siblings = [self._sibling(name) for name in sorted(self.repo_files)]
            body = _json({"id": self.repo, "sha": self.commit, "siblings": siblings})
            self._reply(h, 200, {"Content-Type": "application/json", "Content-Length": str(len(body))})
            h.wfile.write(body)
            return True
        resolve = re.fullmatch(rf"/{re.escape(self.repo)}/resolve/([^/]+)/(.+)", path)
        if not resolve:
            return False
        revision, name = resolve[1], resolve[2]
        data = self.repo_files.get(name)
        if revision not in ("main", self.commit) or data is None:
            self._reply(h, 404, {"Content-Length": "0", "X-Error-Code": "EntryNotFound"})
            return True
        common = {"X-Repo-Commit": self.commit}
        if name in self.lfs:
            sha = hashlib.sha256(data).hexdigest()
            headers = {
                **common,
                "Location": f"{self.url}/cdn/{sha}",
                "ETag": f'"{_git_blob_id(data)}"',
                "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(len(data)),
                "Content-Length": "0",
            }
            self._reply(h, 302, headers)
            return True
        self.send_file(h, path, data, head, {**common, "ETag": f'"{_git_blob_id(data)}"'})
        return True

    def _sibling(self, name: str) -> dict:
        data = self.repo_files[name]
        if name in self.lfs:
            lfs = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            return {"rfilename": name, "size": len(data), "blobId": "0" * 40, "lfs": lfs}
        return {"rfilename": name, "size": len(data), "blobId": _git_blob_id(data)}


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _json(obj: Any) -> bytes:
    import json

    return json.dumps(obj).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx serving ``root`` on loopback, each connection capped at ``rate`` (nginx ``limit_rate``)."""

    def __init__(self, root: Path, workdir: Path, rate: str = "0"):
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "nginx.conf").write_text(
            f"""{"user root;" if os.geteuid() == 0 else ""} daemon off; worker_processes 1;
pid {workdir}/nginx.pid; error_log {workdir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off; sendfile on; keepalive_requests 100000;
  client_body_temp_path {workdir}; proxy_temp_path {workdir}; fastcgi_temp_path {workdir};
  uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
  server {{ listen 127.0.0.1:{self.port}; root {root}; limit_rate {rate}; }}
}}
"""
        )
        self.process: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return bool(shutil.which("nginx") or Path("/usr/sbin/nginx").exists())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Nginx:
        self.process = subprocess.Popen([self.binary, "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf")])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"nginx did not start: {(self.workdir / 'error.log').read_text()}")

    def __exit__(self, *exc: object) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(10)
