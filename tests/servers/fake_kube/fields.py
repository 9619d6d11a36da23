"""Server-side apply field ownership (simplified) and the three patch formats.

Apply follows https://kubernetes.io/docs/reference/using-api/server-side-apply/ and
``staging/src/k8s.io/apimachinery/pkg/util/managedfields`` (structured-merge-diff underneath):

- Each manager owns a set of leaf paths. An Apply sets the manager's set to the leaves of its
  config; a field another manager owns, applied with a different value, is a conflict (409) unless
  ``force``, which moves the field to the applier. An equal value is shared ownership, no conflict.
- A field the applier owned before and no longer applies is removed, unless another manager owns it.
- An Update (create, PUT, a non-apply PATCH) makes its manager own the fields it changed and takes
  them from the others (``managedfields/internal/fieldmanager.go`` Update).

Simplified, and said so: lists are atomic (one leaf) except the associative lists of the built-in
types in ``LIST_KEYS`` (keyed by their ``patchMergeKey``/``x-kubernetes-list-map-keys``: containers
by name, env by name, ...); the real server reads list types from the OpenAPI schema (and for CRDs
from ``x-kubernetes-list-type``, atomic by default, which is what custom resources get here).
Set-lists (``x-kubernetes-list-type: set``) are atomic here. Container and service ports are keyed
by port number alone (the real key adds ``protocol``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import KubeError

Path = tuple[str, ...]  # tokens as in fieldsV1: "f:spec", 'k:{"name":"vllm"}'
MISSING: Any = object()

LIST_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "conditions": ("type",),
    "ownerReferences": ("uid",),
    "hostAliases": ("ip",),
    "topologySpreadConstraints": ("topologyKey", "whenUnsatisfiable"),
    "resourceClaims": ("name",),
}


def list_keys(name: str, *lists: list[Any]) -> tuple[str, ...] | None:
    """The merge keys of list field ``name`` if every item of ``lists`` carries them, else None (atomic)."""
    keys = LIST_KEYS.get(name)
    if name == "ports":
        items = [i for lst in lists for i in lst]
        keys = (
            ("containerPort",) if items and all(isinstance(i, dict) and "containerPort" in i for i in items) else None
        )
        keys = keys or ("port",)
    if keys is None:
        return None
    for lst in lists:
        for item in lst:
            if not isinstance(item, dict) or any(k not in item for k in keys):
                return None
    return keys


def item_token(item: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    """The fieldsV1 token of one associative-list item: ``k:{"name":"vllm"}``."""
    return "k:" + json.dumps({k: item[k] for k in keys}, separators=(",", ":"), sort_keys=True)


def _item_matches(item: Any, token: str) -> bool:
    want = json.loads(token[2:])
    return isinstance(item, dict) and all(item.get(k) == v for k, v in want.items())


def leaves(obj: Mapping[str, Any], keyed: bool, prefix: Path = ()) -> dict[Path, Any]:
    """Leaf path -> value: scalars, atomic lists and empty maps are leaves; maps and keyed items recurse."""
    out: dict[Path, Any] = {}
    for name, value in obj.items():
        path = (*prefix, "f:" + name)
        if isinstance(value, dict):
            if value:
                out.update(leaves(value, keyed, path))
            else:
                out[path] = {}
        elif isinstance(value, list) and value and keyed and (keys := list_keys(name, value)):
            for item in value:
                out.update(leaves(item, keyed, (*path, item_token(item, keys))))
        else:
            out[path] = copy.deepcopy(value)
    return out


def get_path(obj: Any, path: Path) -> Any:
    """The value at ``path``, or MISSING."""
    cur = obj
    for tok in path:
        if tok.startswith("f:"):
            if not isinstance(cur, dict) or tok[2:] not in cur:
                return MISSING
            cur = cur[tok[2:]]
        else:
            if not isinstance(cur, list):
                return MISSING
            cur = next((i for i in cur if _item_matches(i, tok)), MISSING)
            if cur is MISSING:
                return MISSING
    return cur


def delete_path(obj: Any, path: Path) -> None:
    """Remove the field or list item at ``path`` (nothing if absent)."""
    parent = get_path(obj, path[:-1])
    tok = path[-1]
    if tok.startswith("f:") and isinstance(parent, dict):
        parent.pop(tok[2:], None)
    elif isinstance(parent, list):
        parent[:] = [i for i in parent if not _item_matches(i, tok)]


def remove_unowned(obj: dict[str, Any], removed: Iterable[Path], owned: set[Path]) -> None:
    """Drop fields an applier stopped applying that nobody owns, then the maps left empty.

    A list item nobody owns any field of goes as a whole, with the defaults the server filled in it.
    """
    owned_prefixes = {p[:i] for p in owned for i in range(1, len(p) + 1)}
    for path in sorted(removed, key=len, reverse=True):
        if path in owned_prefixes:
            continue
        target = next(
            (
                path[:d]
                for d in range(1, len(path) + 1)
                if path[d - 1].startswith("k:") and path[:d] not in owned_prefixes
            ),
            path,
        )
        delete_path(obj, target)
        for depth in range(len(target) - 1, 0, -1):
            anc = target[:depth]
            if anc in owned_prefixes or get_path(obj, anc) not in ({}, []):
                break
            delete_path(obj, anc)


def merge_into(live: dict[str, Any], applied: Mapping[str, Any], keyed: bool) -> None:
    """Merge an applied config into the live object: maps recurse, keyed lists merge by key, the rest replace."""
    for name, value in applied.items():
        cur = live.get(name)
        if isinstance(value, dict) and isinstance(cur, dict):
            merge_into(cur, value, keyed)
        elif isinstance(value, list) and isinstance(cur, list) and keyed and value and list_keys(name, value, cur):
            keys = list_keys(name, value, cur) or ()
            for item in value:
                tok = item_token(item, keys)
                match = next((i for i in cur if _item_matches(i, tok)), None)
                if match is None:
                    cur.append(copy.deepcopy(item))
                else:
                    merge_into(match, item, keyed)
        else:
            live[name] = copy.deepcopy(value)


def path_string(path: Path) -> str:
    """``fieldpath.Path.String()``: ``.spec.template.spec.containers[name="vllm"].image``."""
    out = ""
    for tok in path:
        if tok.startswith("f:"):
            out += "." + tok[2:]
        else:
            keys = json.loads(tok[2:])
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]"
    return out


def fields_v1(paths: Iterable[Path]) -> dict[str, Any]:
    """The ``fieldsV1`` tree of a set of leaf paths (associative items carry their ``"."`` marker)."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for tok in path:
            node = node.setdefault(tok, {})
            if tok.startswith("k:"):
                node.setdefault(".", {})
    return root


@dataclass
class Manager:
    """One ``managedFields`` entry: who, how (Apply or Update), at which apiVersion, which leaves."""

    manager: str
    operation: str
    api_version: str
    time: str
    subresource: str = ""
    paths: set[Path] = field(default_factory=set)

    @property
    def ident(self) -> tuple[str, ...]:
        """``BuildManagerIdentifier``: appliers are one manager whatever apiVersion they use."""
        version = self.api_version if self.operation == "Update" else ""
        return (self.manager, self.operation, version, self.subresource)

    def printed(self) -> str:
        """``printManager`` in ``managedfields/internal/conflict.go`` (no time: the identifier has none)."""
        out = json.dumps(self.manager)
        if self.subresource:
            out += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            out += f" using {self.api_version}"
        return out

    def entry(self) -> dict[str, Any]:
        """The ``metadata.managedFields`` item."""
        entry: dict[str, Any] = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_v1(self.paths),
        }
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


def conflict_error(conflicts: list[tuple[Manager, Path]]) -> KubeError:
    """``NewConflictError``/``getConflictMessage`` (managedfields/internal/conflict.go), 409 Conflict."""
    causes = [
        {"reason": "FieldManagerConflict", "message": f"conflict with {m.printed()}", "field": path_string(p)}
        for m, p in conflicts
    ]
    if len(conflicts) == 1:
        manager, path = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {manager.printed()}: {path_string(path)}"
    else:
        by_manager: dict[tuple[str, ...], list[Path]] = {}
        printed: dict[tuple[str, ...], str] = {}
        for m, p in conflicts:
            by_manager.setdefault(m.ident, []).append(p)
            printed[m.ident] = m.printed()
        lines: list[str] = []
        for ident in sorted(by_manager):
            lines.append(f"conflicts with {printed[ident]}:")
            lines.extend(f"- {path_string(p)}" for p in sorted(by_manager[ident], key=path_string))
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return KubeError(409, "Conflict", message, {"causes": causes})


def apply_config(
    live: dict[str, Any],
    live_tracked: Mapping[str, Any],
    managers: list[Manager],
    applied: Mapping[str, Any],
    me: Manager,
    force: bool,
    keyed: bool,
) -> tuple[dict[str, Any], list[Manager]]:
    """Apply ``applied`` (tracked fields only) as manager ``me``; the new object and managers, or a conflict."""
    new_leaves = leaves(applied, keyed)
    current = leaves(live_tracked, keyed)
    managers = [copy.deepcopy(m) for m in managers]
    mine = next((m for m in managers if m.ident == me.ident), None)
    conflicts: list[tuple[Manager, Path]] = []
    for path, value in new_leaves.items():
        if current.get(path, MISSING) == value:
            continue
        conflicts.extend((m, path) for m in managers if m is not mine and path in m.paths)
    if conflicts and not force:
        raise conflict_error(conflicts)
    for m, path in conflicts:
        m.paths.discard(path)
    removed = (mine.paths if mine else set()) - set(new_leaves)
    if mine is None:
        mine = me
        managers.append(mine)
    elif mine.paths != set(new_leaves) or mine.api_version != me.api_version:
        mine.time, mine.api_version = me.time, me.api_version  # the time moves only when the set changes
    mine.paths = set(new_leaves)
    merged = copy.deepcopy(live)
    merge_into(merged, applied, keyed)
    owned = set().union(*(m.paths for m in managers))
    remove_unowned(merged, removed, owned)
    return merged, [m for m in managers if m.paths]


def track_update(
    old_tracked: Mapping[str, Any], new_tracked: Mapping[str, Any], managers: list[Manager], me: Manager, keyed: bool
) -> list[Manager]:
    """An Update: ``me`` owns what it changed, the others lose it; removed fields leave every set."""
    before, after = leaves(old_tracked, keyed), leaves(new_tracked, keyed)
    changed = {p for p, v in after.items() if before.get(p, MISSING) != v}
    gone = set(before) - set(after)
    managers = [copy.deepcopy(m) for m in managers]
    for m in managers:
        m.paths -= changed | gone
    mine = next((m for m in managers if m.ident == me.ident), None)
    if changed:
        if mine is None:
            mine = me
            managers.append(mine)
        else:
            mine.time = me.time
        mine.paths |= changed
    return [m for m in managers if m.paths]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (``application/merge-patch+json``)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch, approximated: a merge patch whose keyed lists (LIST_KEYS) merge by key.

    ``$patch: replace`` on a map and ``$patch: delete`` on a list item are honoured; the other
    directives (``$setElementOrder``, ``$retainKeys``, ``$deleteFromPrimitiveList``) are ignored.
    The real one is ``staging/src/k8s.io/apimachinery/pkg/util/strategicpatch/patch.go``.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            out.pop(key, None)
            continue
        current = out.get(key)
        items = [i for i in value if isinstance(i, dict)] if isinstance(value, list) else []
        plain = [{k: v for k, v in i.items() if k != "$patch"} for i in items]
        keys = list_keys(key, plain, current) if isinstance(current, list) and len(plain) == len(value) else None
        if isinstance(value, list) and isinstance(current, list) and keys:
            merged = copy.deepcopy(current)
            for item, clean in zip(items, plain, strict=True):
                tok = item_token(clean, keys)
                idx = next((n for n, i in enumerate(merged) if _item_matches(i, tok)), None)
                if item.get("$patch") == "delete":
                    if idx is not None:
                        del merged[idx]
                elif idx is None:
                    merged.append(strategic_merge_patch({}, clean))
                else:
                    merged[idx] = strategic_merge_patch(merged[idx], clean)
            out[key] = merged
        else:
            out[key] = strategic_merge_patch(current, value)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _container(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for part in parts:
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    return cur


def json_patch(doc: Any, ops: list[Mapping[str, Any]]) -> Any:
    """RFC 6902 JSON patch (``application/json-patch+json``): add, remove, replace, move, copy, test."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, parts = op.get("op"), _pointer(str(op.get("path", "")))
        if kind in ("move", "copy"):
            src = _pointer(str(op.get("from", "")))
            value = copy.deepcopy(_container(doc, src))
            if kind == "move":
                doc = json_patch(doc, [{"op": "remove", "path": op["from"]}])
            doc = json_patch(doc, [{"op": "add", "path": op["path"], "value": value}])
            continue
        if kind == "test":
            if _container(doc, parts) != op.get("value"):
                raise ValueError(f"testing value {op.get('path')} failed")
            continue
        if not parts:
            if kind in ("add", "replace"):
                doc = copy.deepcopy(op.get("value"))
                continue
            raise ValueError("cannot remove the document root")
        parent, last = _container(doc, parts[:-1]), parts[-1]
        if kind == "add":
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op.get("value")))
            else:
                parent[last] = copy.deepcopy(op.get("value"))
        elif kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind == "replace":
            index: Any = int(last) if isinstance(parent, list) else last
            if isinstance(parent, dict) and last not in parent:
                raise ValueError(f"replace operation does not apply: doc is missing key: {op.get('path')}")
            parent[index] = copy.deepcopy(op.get("value"))
        else:
            raise ValueError(f"unexpected kind: {kind}")
    return doc
