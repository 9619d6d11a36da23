"""The HTTP side: routing, authentication, authorization and the verbs, as kube-apiserver answers them.

Paths follow https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-uris :
``/api/v1/...`` and ``/apis/GROUP/VERSION/...``, ``namespaces/NS/PLURAL[/NAME[/SUBRESOURCE]]`` for
namespaced types, ``PLURAL[/NAME]`` for cluster-scoped ones and the all-namespaces collection
(``/api/v1/pods``). A path the server does not serve (an unknown group, version or resource, a
custom resource whose CRD is absent) answers what the real server's last handler answers:
``http.NotFound``, a plain-text ``404 page not found`` (``staging/src/k8s.io/apiserver/pkg/util/
notfoundhandler/notfoundhandler.go``), not a Status; clients such as client-go turn it into "the
server could not find the requested resource". A missing object of a served type is a JSON Status
NotFound. Errors are JSON Status bodies with ``Content-Type: application/json``.

Authentication (``staging/src/k8s.io/apiserver/pkg/endpoints/filters/authentication.go``): a
request without the bearer token is 401 Unauthorized, as with ``--anonymous-auth=false``; with
``anonymous_auth=True`` it is ``system:anonymous``, who may read /version and the health paths
only (the ``system:public-info-viewer`` role) and gets 403 elsewhere. Authorization: everything is
allowed but the deny set, which answers 403 with RBAC's wording
(``staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go`` forbiddenMessage)
and is what SelfSubjectAccessReviews report.

Port-forward (``pods/NAME/portforward``) over WebSocket only, in the kubelet's channel framing
(``pkg/kubelet/cri/streaming/portforward/websocket.go``, which the API server proxies the upgrade
to): see ``ApiServer._port_forward``; the pod's ports are served where ``Cluster.forward_pods``
says.

Not modelled (each answers 501 saying so): exec, attach, port-forward over SPDY (a POST, or a GET
without the WebSocket upgrade), proxy, eviction, binding, scale, ephemeral containers, namespace
finalize. Protobuf and CBOR: JSON only. Table output
(``Accept: ...;as=Table``), server-side field validation (unknown fields are kept, not rejected),
admission webhooks, quotas, limit ranges.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web

from . import errors, events
from .errors import KubeError
from .fields import json_patch, merge_patch, strategic_merge_patch
from .resources import ResourceType
from .selectors import match_fields, match_labels, parse_fields, parse_labels

if TYPE_CHECKING:
    from .fake import FakeKube

log = logging.getLogger(__name__)
PUBLIC_PATHS = frozenset({"/version", "/healthz", "/livez", "/readyz"})
TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})  # strconv.ParseBool
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
# what the port-forward WebSocket accepts; it answers with the one the client offered first
PORT_FORWARD_PROTOCOLS = ("portforward.k8s.io", "v4.channel.k8s.io")
NOT_MODELLED_SUBRESOURCES = frozenset(
    {
        "exec",
        "attach",
        "proxy",
        "eviction",
        "binding",
        "scale",
        "ephemeralcontainers",
        "resize",
        "finalize",
        "token",
        "ephemeral",
    }
)


def json_response(body: Any, status: int = 200) -> web.Response:
    """JSON exactly as the server labels it (no charset: lightkube checks the header verbatim)."""
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        headers={"Content-Type": "application/json"},
    )


def page_not_found() -> web.Response:
    """Go's ``http.NotFound``."""
    return web.Response(
        body=b"404 page not found\n",
        status=404,
        headers={"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"},
    )


class _NotServed(Exception):
    """The path is not served at all: plain-text 404."""


class ApiServer:
    """The aiohttp application for one FakeKube."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube
        self.streams: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def app(self) -> web.Application:
        """One catch-all route: the real server's path scheme does not fit a router table."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Every request: record it, authenticate, route; errors become Status bodies."""
        self.kube.requests.append((request.method, request.path, dict(request.query)))
        try:
            user = self._authenticate(request)
            return await self._route(request, user)
        except _NotServed:
            return page_not_found()
        except KubeError as exc:
            return json_response(exc.status(), exc.code)
        except Exception as exc:  # a bug in the fake: answer 500 and remember it, so the test fails loudly
            log.exception("fake_kube: %s %s failed", request.method, request.path)
            self.kube.server_errors.append(f"{request.method} {request.path}: {exc!r}")
            return json_response(errors.internal(repr(exc)).status(), 500)

    def _authenticate(self, request: web.Request) -> str:
        header = request.headers.get("Authorization")
        if header == f"Bearer {self.kube.token}":
            return self.kube.user
        if header is None and self.kube.anonymous_auth:
            return "system:anonymous"
        raise errors.unauthorized()

    async def _route(self, request: web.Request, user: str) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in PUBLIC_PATHS:
            if path == "/version":
                return json_response(self.kube.version_info())
            return web.Response(text="ok")
        if user == "system:anonymous":
            why = f'User "system:anonymous" cannot {request.method.lower()} path "{request.path}"'
            raise KubeError(403, "Forbidden", f"forbidden: {why}", {})
        parts = path.strip("/").split("/")
        table = self.kube.store.table
        if parts[0] == "api":
            if len(parts) == 1:
                return json_response(self._api_versions(request))
            group, version, rest = "", parts[1], parts[2:]
            if version != "v1":
                raise _NotServed
        elif parts[0] == "apis":
            groups = table.groups()
            if len(parts) == 1:
                return json_response(
                    {
                        "kind": "APIGroupList",
                        "apiVersion": "v1",
                        "groups": [self._group(g, vs) for g, vs in sorted(groups.items())],
                    }
                )
            group = parts[1]
            if group not in groups:
                raise _NotServed
            if len(parts) == 2:
                return json_response({"kind": "APIGroup", "apiVersion": "v1", **self._group(group, groups[group])})
            version, rest = parts[2], parts[3:]
        else:
            raise _NotServed
        if not rest:
            served = list(table.in_group_version(group, version))
            if not served:
                raise _NotServed
            return json_response(self._resource_list(group, version, served))
        return await self._resource(request, user, group, version, rest)

    # -- discovery -----------------------------------------------------------------------------

    def _api_versions(self, request: web.Request) -> dict[str, Any]:
        host = request.host
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
        }

    @staticmethod
    def _group(group: str, versions: list[str]) -> dict[str, Any]:
        listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": listed, "preferredVersion": listed[0]}

    @staticmethod
    def _resource_list(group: str, version: str, served: list[ResourceType]) -> dict[str, Any]:
        resources: list[dict[str, Any]] = []
        for rt in served:
            verbs = sorted(rt.verbs)
            resources.append(
                {
                    "name": rt.plural,
                    "singularName": rt.kind.lower(),
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": verbs,
                    **({"shortNames": list(rt.short)} if rt.short else {}),
                }
            )
            if rt.status:
                resources.append(
                    {
                        "name": f"{rt.plural}/status",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
            if rt.kind == "Pod" and not rt.group:
                resources.append(
                    {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]}
                )
                resources.append(
                    {
                        "name": "pods/portforward",
                        "singularName": "",
                        "namespaced": True,
                        "kind": "PodPortForwardOptions",
                        "verbs": ["create", "get"],
                    }
                )
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}

    # -- resources -----------------------------------------------------------------------------

    def _resolve(self, group: str, version: str, rest: list[str]) -> tuple[ResourceType, str | None, str | None, str]:
        """(type, namespace, name, subresource) for a resource path, or _NotServed."""
        table = self.kube.store.table
        namespace_sub = len(rest) == 3 and rest[0] == "namespaces" and not group and rest[2] in ("status", "finalize")
        if rest[0] == "namespaces" and len(rest) >= 3 and not namespace_sub:
            if len(rest) > 5:
                raise _NotServed
            rt = table.lookup(group, version, rest[2])
            if rt is None or not rt.namespaced:
                raise _NotServed
            return rt, rest[1], rest[3] if len(rest) > 3 else None, rest[4] if len(rest) > 4 else ""
        if len(rest) > 3:
            raise _NotServed
        rt = table.lookup(group, version, rest[0])
        if rt is None or (rt.namespaced and len(rest) > 1):
            raise _NotServed
        return rt, None, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else ""

    async def _resource(
        self, request: web.Request, user: str, group: str, version: str, rest: list[str]
    ) -> web.StreamResponse:
        rt, namespace, name, sub = self._resolve(group, version, rest)
        method, query = request.method, request.query
        verb = {
            ("GET", False): "watch" if query.get("watch", "") in TRUE else "list",
            ("GET", True): "get",
            ("POST", False): "create",
            ("PUT", True): "update",
            ("PATCH", True): "patch",
            ("DELETE", True): "delete",
            ("DELETE", False): "deletecollection",
        }.get((method, name is not None))
        if sub == "portforward" and rt.kind == "Pod" and not rt.group and name is not None:
            if method not in ("GET", "POST"):
                raise errors.method_not_allowed(rt.group, "pods/portforward", method.lower())
            # RBAC grants port-forward as verb create on pods/portforward (kubectl's POST); the fake
            # asks for create on the WebSocket GET as well
            self._authorize(user, "create", rt.group, "pods/portforward", namespace, name, rt)
            return await self._port_forward(request, namespace or "", name)
        if sub in NOT_MODELLED_SUBRESOURCES:
            raise errors.not_modelled(f"the {rt.plural}/{sub} subresource")
        if sub and not (
            (sub == "status" and rt.status and verb in ("get", "update", "patch"))
            or (sub == "log" and rt.kind == "Pod" and not rt.group and verb == "get")
        ):
            raise _NotServed
        if verb is None or verb not in rt.verbs:
            raise errors.method_not_allowed(rt.group, rt.plural, verb or method.lower())
        resource = f"{rt.plural}/{sub}" if sub else rt.plural
        self._authorize(user, verb, rt.group, resource, namespace, name or "", rt)
        api_version = f"{group}/{version}" if group else version
        store_rt = self.kube.store.table.by_key(rt.key) if rt.store_as else rt
        assert store_rt is not None
        view = self._view(rt, api_version)
        ns = namespace or ""
        if sub == "log":
            return self._log(ns, name or "", query)
        if rt.kind == "SelfSubjectAccessReview":
            return json_response(self._review(await self._body(request)), 201)
        if verb == "list":
            return json_response(self._list(store_rt, rt, api_version, namespace, query, view))
        if verb == "watch":
            return await self._watch(request, store_rt, rt, namespace, query, view)
        if verb == "get":
            obj = self.kube.store.get(store_rt.key, ns, name or "")
            if obj is None:
                raise errors.not_found(rt.group, rt.plural, name or "")
            return json_response(view(obj))
        manager = query.get("fieldManager") or request.headers.get("User-Agent", "").split("/")[0]
        dry_run = "All" in query.getall("dryRun", [])
        if verb == "create":
            body = self._unview(rt, await self._body(request))
            created = self.kube.store.create(
                store_rt, ns, body, manager=manager, api_version=api_version, dry_run=dry_run
            )
            return json_response(view(created), 201)
        if verb == "update":
            body = self._unview(rt, await self._body(request))
            updated = self.kube.store.update(
                store_rt,
                ns,
                name or "",
                body,
                manager=manager,
                api_version=api_version,
                subresource=sub,
                dry_run=dry_run,
            )
            return json_response(view(updated))
        if verb == "patch":
            return await self._patch(request, store_rt, rt, ns, name or "", sub, api_version, dry_run, view)
        if verb == "delete":
            return await self._delete(request, store_rt, rt, ns, name or "", api_version, dry_run, view)
        return await self._delete_collection(request, store_rt, rt, namespace, api_version, dry_run, view)

    def _authorize(
        self, user: str, verb: str, group: str, resource: str, namespace: str | None, name: str, rt: ResourceType
    ) -> None:
        if self.kube.allowed(verb, group, resource, namespace):
            return
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        why = f'User "{user}" cannot {verb} resource "{resource}" in API group "{group}" {scope}'
        raise errors.forbidden(rt.group, rt.plural, name, why)

    def _view(self, rt: ResourceType, api_version: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """Stored object -> what this path serves (events.k8s.io's representation, a CR at the asked version)."""
        if rt.store_as:
            return events.to_v1
        if rt.custom:

            def at_version(obj: dict[str, Any]) -> dict[str, Any]:
                # conversion strategy None: only apiVersion changes (CustomResourceConversion)
                return {**obj, "apiVersion": api_version}

            return at_version
        return lambda obj: obj

    @staticmethod
    def _unview(rt: ResourceType, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request("the object provided is unrecognized")
        return events.from_v1(body) if rt.store_as else body

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            raise errors.bad_request(f"couldn't get version/kind; json parse error: {exc}") from exc

    def _selectors(self, rt: ResourceType, query: Mapping[str, str]) -> Callable[[dict[str, Any]], bool]:
        labels = parse_labels(query.get("labelSelector", ""))
        fields = parse_fields(query.get("fieldSelector", ""), rt.fields)

        def matches(obj: dict[str, Any]) -> bool:
            return match_labels(labels, obj["metadata"].get("labels")) and match_fields(fields, obj)

        return matches

    def _list(
        self,
        store_rt: ResourceType,
        rt: ResourceType,
        api_version: str,
        namespace: str | None,
        query: Mapping[str, str],
        view: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        matches = self._selectors(rt, query)
        with self.kube.store.lock:
            rv = self.kube.store.resource_version
            items = [v for obj in self.kube.store.objects(store_rt.key, namespace) if matches(v := view(obj))]
        start = 0
        if query.get("continue"):
            try:
                token = json.loads(base64.b64decode(query["continue"]))
                start, rv = int(token["start"]), str(token["rv"])
            except (ValueError, KeyError, binascii.Error) as exc:
                raise errors.bad_request(f"continue key is not valid: {exc}") from exc
        meta: dict[str, Any] = {"resourceVersion": rv}
        limit = int(query.get("limit") or 0)
        page = items[start : start + limit] if limit > 0 else items[start:]
        if limit > 0 and start + limit < len(items):
            token = {"rv": rv, "start": start + limit}
            meta["continue"] = base64.b64encode(json.dumps(token).encode()).decode()
            meta["remainingItemCount"] = len(items) - start - limit
        if not rt.custom:
            # typed lists carry kind and apiVersion on the list, not on the items (kubernetes/kubernetes#3030)
            page = [{k: v for k, v in item.items() if k not in ("kind", "apiVersion")} for item in page]
        return {"kind": rt.list_kind, "apiVersion": api_version, "metadata": meta, "items": page}

    async def _watch(
        self,
        request: web.Request,
        store_rt: ResourceType,
        rt: ResourceType,
        namespace: str | None,
        query: Mapping[str, str],
        view: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> web.StreamResponse:
        matches = self._selectors(rt, query)
        raw_rv = query.get("resourceVersion", "")
        try:
            since = int(raw_rv) if raw_rv not in ("", "0") else None
        except ValueError as exc:
            raise errors.bad_request(f'invalid resource version "{raw_rv}"') from exc
        timeout = float(query.get("timeoutSeconds") or self.kube.watch_timeout_s)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def deliver(event: dict[str, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the server has stopped: nobody is listening any more
                loop.call_soon_threadsafe(queue.put_nowait, event)

        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        watcher = None
        try:
            watcher, initial = self.kube.store.watch(store_rt.key, namespace, matches, view, deliver, since)
        except KubeError as exc:
            if exc.code != 410:
                raise
            # the watch cache answers an expired resourceVersion with one ERROR event (cacher.go newErrWatcher)
            initial = [{"type": "ERROR", "object": exc.status()}]
        self.streams.add(queue)
        try:
            await response.prepare(request)
            for first in initial:
                await response.write(json.dumps(first, separators=(",", ":")).encode() + b"\n")
            deadline = loop.time() + timeout
            while watcher is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
                if event is None:
                    break
                await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            self.streams.discard(queue)
            if watcher is not None:
                self.kube.store.unwatch(watcher)
        return response

    async def _patch(
        self,
        request: web.Request,
        store_rt: ResourceType,
        rt: ResourceType,
        ns: str,
        name: str,
        sub: str,
        api_version: str,
        dry_run: bool,
        view: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> web.Response:
        query = request.query
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        accepted = [JSON_PATCH, MERGE, APPLY] + ([] if rt.custom else [STRATEGIC])
        if content_type not in accepted:
            raise errors.unsupported_patch(accepted)
        manager = query.get("fieldManager") or (
            "" if content_type == APPLY else request.headers.get("User-Agent", "").split("/")[0]
        )
        if content_type != APPLY and "force" in query:
            cause = ("force", "FieldValueForbidden", "Forbidden: may not be specified for non-apply patch")
            raise errors.invalid("PatchOptions", "meta.k8s.io", "", [cause])
        raw = await request.read()
        store = self.kube.store
        if content_type == APPLY:
            try:
                body = yaml.safe_load(raw.decode() or "{}")
            except yaml.YAMLError as exc:
                raise errors.bad_request(f"error decoding YAML: {exc}") from exc
            body = self._unview(rt, body)
            with store.lock:
                existed = store.get(store_rt.key, ns, name) is not None
                out = store.apply(
                    store_rt,
                    ns,
                    name,
                    body,
                    manager=manager,
                    api_version=api_version,
                    force=query.get("force", "") in TRUE,
                    subresource=sub,
                    dry_run=dry_run,
                )
            return json_response(view(out), 200 if existed else 201)
        try:
            patch = json.loads(raw or b"null")
        except ValueError as exc:
            raise errors.bad_request(f"error decoding patch: {exc}") from exc

        def patcher(obj: dict[str, Any]) -> dict[str, Any]:
            current = view(obj)
            try:
                if content_type == MERGE:
                    new = merge_patch(current, patch)
                elif content_type == STRATEGIC:
                    new = strategic_merge_patch(current, patch)
                else:
                    if not isinstance(patch, list):
                        raise ValueError("a JSON patch is a list of operations")
                    new = json_patch(current, patch)
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise KubeError(422, "Invalid", f"the patch could not be applied: {exc}") from exc
            return self._unview(rt, new)

        out = store.patch(
            store_rt, ns, name, patcher, manager=manager, api_version=api_version, subresource=sub, dry_run=dry_run
        )
        return json_response(view(out))

    async def _delete_options(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        options: dict[str, Any] = {}
        if raw.strip():
            try:
                options = json.loads(raw)
            except ValueError as exc:
                raise errors.bad_request(f"couldn't decode DeleteOptions: {exc}") from exc
        query = request.query
        if "propagationPolicy" in query:
            options["propagationPolicy"] = query["propagationPolicy"]
        if "gracePeriodSeconds" in query:
            options["gracePeriodSeconds"] = int(query["gracePeriodSeconds"])
        if "orphanDependents" in query:
            options["orphanDependents"] = query["orphanDependents"] in TRUE
        if "All" in query.getall("dryRun", []):
            options["dryRun"] = ["All"]
        if options.get("orphanDependents") is not None and "propagationPolicy" not in options:
            options["propagationPolicy"] = "Orphan" if options["orphanDependents"] else "Background"
        return options

    async def _delete(
        self,
        request: web.Request,
        store_rt: ResourceType,
        rt: ResourceType,
        ns: str,
        name: str,
        api_version: str,
        dry_run: bool,
        view: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> web.Response:
        options = await self._delete_options(request)
        out, gone = self.kube.store.delete(
            store_rt,
            ns,
            name,
            propagation=options.get("propagationPolicy"),
            grace=options.get("gracePeriodSeconds"),
            preconditions=options.get("preconditions"),
            api_version=api_version,
            dry_run=dry_run or "All" in (options.get("dryRun") or ()),
        )
        if gone and rt.kind != "Pod":
            details: dict[str, Any] = {"name": name, "kind": rt.plural, "uid": out["metadata"].get("uid")}
            if rt.group:
                details["group"] = rt.group
            return json_response(
                {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
            )
        return json_response(view(out))

    async def _delete_collection(
        self,
        request: web.Request,
        store_rt: ResourceType,
        rt: ResourceType,
        namespace: str | None,
        api_version: str,
        dry_run: bool,
        view: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> web.Response:
        options = await self._delete_options(request)
        matches = self._selectors(rt, request.query)
        deleted = []
        for obj in self.kube.store.objects(store_rt.key, namespace):
            if not matches(view(obj)):
                continue
            try:
                out, _ = self.kube.store.delete(
                    store_rt,
                    obj["metadata"].get("namespace", ""),
                    obj["metadata"]["name"],
                    propagation=options.get("propagationPolicy"),
                    grace=options.get("gracePeriodSeconds"),
                    api_version=api_version,
                    dry_run=dry_run,
                )
            except KubeError as exc:
                if exc.code == 404:
                    continue
                raise
            deleted.append(view(out))
        return json_response(
            {
                "kind": rt.list_kind,
                "apiVersion": api_version,
                "metadata": {"resourceVersion": self.kube.store.resource_version},
                "items": deleted,
            }
        )

    def _log(self, ns: str, name: str, query: Mapping[str, str]) -> web.Response:
        pod = self.kube.store.get(("", "pods"), ns, name)
        if pod is None:
            raise errors.not_found("", "pods", name)
        tail = int(query["tailLines"]) if query.get("tailLines") else None
        text = self.kube.kubelet.logs(pod, query.get("container"), query.get("previous", "") in TRUE, tail)
        return web.Response(body=text.encode(), headers={"Content-Type": "text/plain"})

    async def _port_forward(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        """``GET pods/NAME/portforward?ports=P[&ports=Q]`` upgraded to a WebSocket, framed as websocket.go does.

        ``pkg/kubelet/cri/streaming/portforward/websocket.go`` (handleWebSocketStreams): the i-th
        port has data channel ``2*i`` and error channel ``2*i+1``; every binary message starts with
        its channel byte; first the server writes the port, 2 bytes little-endian, on both channels
        of each port. Then client bytes on a data channel go to a TCP connection to the port (here:
        where ``Cluster.forward_pods`` says) and what it sends comes back on that data channel. A
        refused connection is the error text (``error forwarding port P to pod ...``) on the error
        channel; the WebSocket closes when every port's connection has ended, or the client closes
        it. "portforward.k8s.io" is accepted with the same framing (the real server uses that name
        for SPDY tunnelled over WebSocket, KEP-4006, which the fake does not model).
        """
        if request.method != "GET" or request.headers.get("Upgrade", "").lower() != "websocket":
            raise errors.not_modelled("port-forward over SPDY (only the WebSocket upgrade is)")
        pod = self.kube.store.get(("", "pods"), ns, name)
        if pod is None:
            raise errors.not_found("", "pods", name)
        ports: list[int] = []
        for value in request.query.getall("ports", []):
            for text in value.split(","):
                if not text.isdigit() or not 0 < int(text) < 65536:
                    raise errors.bad_request(f'unable to parse "{value}" as a port')
                ports.append(int(text))
        if not ports:
            raise errors.bad_request('query parameter "ports" is required')
        if not pod["spec"].get("nodeName"):
            raise errors.bad_request(f"pod {name} does not have a host assigned")
        phase = pod.get("status", {}).get("phase", "Pending")
        if phase != "Running":
            raise errors.bad_request(f"unable to forward port because pod is not running. Current status={phase}")
        offered = [p.strip() for h in request.headers.getall("Sec-WebSocket-Protocol", []) for p in h.split(",")]
        if any(offered) and not set(offered) & set(PORT_FORWARD_PROTOCOLS):
            raise errors.bad_request(f"requested protocol(s) are not supported: {offered}")
        targets = [self.kube.forward_target(pod, port) for port in ports]
        ws = web.WebSocketResponse(protocols=PORT_FORWARD_PROTOCOLS)
        await ws.prepare(request)
        writers: dict[int, asyncio.StreamWriter] = {}
        pumps: list[asyncio.Task[None]] = []
        sandbox = pod["metadata"].get("uid", "").replace("-", "")

        async def pump(channel: int, reader: asyncio.StreamReader) -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(1 << 16):
                    await ws.send_bytes(bytes([channel]) + chunk)

        async def receive() -> None:
            async for message in ws:
                if message.type != web.WSMsgType.BINARY or not message.data:
                    continue  # wsstream ignores empty frames; text is not the binary protocol's
                writer = writers.get(message.data[0])  # an error channel or an unknown one: ignored, as wsstream does
                if writer is not None and not writer.is_closing():
                    writer.write(message.data[1:])
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()

        try:
            for i, port in enumerate(ports):
                for channel in (2 * i, 2 * i + 1):
                    await ws.send_bytes(bytes([channel]) + port.to_bytes(2, "little"))
            for i, (port, target) in enumerate(zip(ports, targets, strict=True)):
                try:
                    if target is None:
                        raise ConnectionRefusedError("connection refused")
                    reader, writer = await asyncio.open_connection(*target)
                except OSError as exc:
                    why = "connection refused" if isinstance(exc, ConnectionRefusedError) else str(exc)
                    message = (
                        f"error forwarding port {port} to pod {sandbox}, uid : failed to connect to localhost:{port} "
                        f'inside namespace "{sandbox}", IPv4: dial tcp4 127.0.0.1:{port}: connect: {why.lower()}'
                    )
                    await ws.send_bytes(bytes([2 * i + 1]) + message.encode())
                    continue
                writers[2 * i] = writer
                pumps.append(asyncio.create_task(pump(2 * i, reader)))
            pumps.append(receiver := asyncio.create_task(receive()))
            ended = asyncio.gather(*pumps[:-1], return_exceptions=True)
            # every port's connection ended (websocket.go waits for them all), or the client left
            await asyncio.wait({receiver, ended}, return_when=asyncio.FIRST_COMPLETED)
        except ConnectionError:
            pass  # the client went away before the streams were open
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in writers.values():
                writer.close()
            await ws.close()
        return ws

    def _review(self, body: Any) -> dict[str, Any]:
        """SelfSubjectAccessReview: status.allowed from the deny set (``pkg/registry/authorization``)."""
        if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
            raise errors.bad_request("the object provided is unrecognized (must be of type SelfSubjectAccessReview)")
        spec = body["spec"]
        attrs = spec.get("resourceAttributes")
        if attrs is None and spec.get("nonResourceAttributes") is None:
            cause = (
                "spec.resourceAttributes",
                "FieldValueRequired",
                "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )
            raise errors.invalid("SelfSubjectAccessReview", "authorization.k8s.io", "", [cause])
        if attrs is not None:
            resource = attrs.get("resource", "")
            if attrs.get("subresource"):
                resource += "/" + attrs["subresource"]
            allowed = self.kube.allowed(attrs.get("verb", ""), attrs.get("group", ""), resource, attrs.get("namespace"))
        else:
            allowed = True
        return {
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": {"allowed": allowed},
        }
