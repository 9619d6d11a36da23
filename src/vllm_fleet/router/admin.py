"""The router's admin API.

    GET    /admin/backends                 every backend: state, in-flight, load, failures
    POST   /admin/backends        {"url"}  add one (checked before it gets requests; kept when the registry
                                           or discovery next sets the backends)
    DELETE /admin/backends        {"url"}  remove one (its in-flight requests finish; a backend the registry
                                           or discovery lists comes back at their next refresh)
    POST   /admin/backends/drain  {"url", "draining": true}  no new requests; poll in_flight until 0
    POST   /admin/registry/reload          read the registry now

With an admin token set, each call needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import json
import time

from vllm_fleet.router.access import RegistryLink
from vllm_fleet.router.backends import Pool, backend_url
from vllm_fleet.router.proxy import json_error
from vllm_fleet.wire.http1_server import Reply, Request


async def handle(request: Request, pool: Pool, registry: RegistryLink | None, token: str | None) -> Reply:
    if token and not hmac.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}"):
        return json_error("the admin API needs `Authorization: Bearer <admin token>`", 401, "Unauthorized")
    now = time.monotonic()
    path, method = request.path, request.method
    if path == "/admin/backends" and method == "GET":
        return Reply.json({"backends": [b.to_dict(now) for b in pool.backends.values()]})
    if path == "/admin/registry/reload" and method == "POST":
        if registry is None:
            return json_error("this router has no registry (start it with --registry URL)", 409)
        return Reply.json({"models": await registry.load(), "backends": len(pool.backends)})
    if (path, method) not in _BACKEND_CALLS:
        return json_error(f"no admin call {method} {path}", 404, "NotFound")
    try:
        data = json.loads(request.body or b"{}")
        url = str(data["url"]).rstrip("/")
    except (ValueError, KeyError, TypeError, RecursionError):
        return json_error('send a JSON body {"url": "http://host:port"}', 400)
    if method == "POST" and path == "/admin/backends":
        try:
            return Reply.json(pool.add(backend_url(url), pin=True).to_dict(now))
        except ValueError as exc:
            return json_error(str(exc), 400)
    if method == "DELETE":
        return Reply.json({"removed": pool.remove(url)})
    backend = pool.drain(url, bool(data.get("draining", True)))
    if backend is None:
        return json_error(f"no backend {url}; GET /admin/backends lists them", 404, "NotFound")
    return Reply.json(backend.to_dict(now))


_BACKEND_CALLS = {("/admin/backends", "POST"), ("/admin/backends", "DELETE"), ("/admin/backends/drain", "POST")}
