"""``FakeKube``: the API server on 127.0.0.1 in a thread, in front of a ``Cluster`` (cluster.py).

``with FakeKube() as kube:`` starts it on a free port; ``kube.kubeconfig(path)`` writes a
kubeconfig for it; everything a test scripts about the cluster is on ``Cluster``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import yaml
from aiohttp import web

from .cluster import Cluster
from .server import ApiServer


class FakeKube(Cluster):
    """A narrow kube-apiserver on 127.0.0.1 over plain HTTP, in front of a scripted ``Cluster``.

    ``with FakeKube() as kube: kube.kubeconfig(path)`` and point a client at ``path``.
    """

    def __init__(
        self,
        *,
        version: str = "1.30",
        token: str = "fake-token",
        user: str = "fake-user",
        anonymous_auth: bool = False,
        watch_timeout_s: float = 1800.0,
        namespaces: Iterable[str] = (),
    ) -> None:
        super().__init__(version=version, namespaces=namespaces)
        self.token, self.user, self.anonymous_auth = token, user, anonymous_auth
        # a watch without timeoutSeconds ends after --min-request-timeout (1800 s; the real server adds jitter)
        self.watch_timeout_s = watch_timeout_s
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, query) of every request
        self.server_errors: list[str] = []
        self.denied: list[tuple[str, str, str, str | None]] = []
        self._server = ApiServer(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeKube:
        """Serve on a free port of 127.0.0.1 from a thread running its own event loop."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            # handler_cancellation: a watch whose client went away ends at once, as the real server's does
            runner = web.AppRunner(self._server.app(), access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
            try:
                loop.run_until_complete(runner.setup())
                loop.run_until_complete(web.SockSite(runner, sock, shutdown_timeout=1.0).start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="fake-kube-apiserver", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise RuntimeError("fake_kube could not start") from failure[0]
        return self

    def stop(self) -> None:
        """Stop the controllers and timers, end the watches, stop serving; raise if the fake itself broke."""
        problems: list[BaseException] = []
        try:
            self.stop_background()
        except RuntimeError as exc:
            problems.append(exc)
        if self._loop is not None and self._thread is not None:
            for queue in list(self._server.streams):
                self._loop.call_soon_threadsafe(queue.put_nowait, None)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop = self._thread = None
        if problems:
            raise problems[0]
        if self.server_errors:
            raise AssertionError("fake_kube answered 500 for its own bugs: " + "; ".join(self.server_errors))

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def kubeconfig(self, path: Path | str, *, namespace: str = "default", context: str = "fake") -> Path:
        """Write a kubeconfig for this server (cluster ``fake``, a bearer-token user, context ``context``)."""
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
            "current-context": context,
            "preferences": {},
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # -- authorization -------------------------------------------------------------------------

    def deny(self, verb: str, group: str, resource: str, namespace: str | None = None) -> None:
        """Forbid ``verb`` on ``resource`` (``plural`` or ``plural/sub``) of ``group`` ("*" matches any)."""
        self.denied.append((verb, group, resource, namespace))

    def allowed(self, verb: str, group: str, resource: str, namespace: str | None) -> bool:
        """Whether the test user may do this (what a SelfSubjectAccessReview answers)."""
        for d_verb, d_group, d_resource, d_ns in self.denied:
            if (
                d_verb in ("*", verb)
                and d_group in ("*", group)
                and d_resource in ("*", resource)
                and (d_ns is None or d_ns == namespace)
            ):
                return False
        return True
