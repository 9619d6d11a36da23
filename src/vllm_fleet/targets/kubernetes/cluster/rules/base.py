"""What every rule shares: the result types and reading plain API objects (dicts, as the server sends them)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Obj = dict[str, Any]
Status = Literal["current", "in-progress", "failed"]
_Verdict = tuple[Status, str]

_MESSAGE_LIMIT = 400


@dataclass(frozen=True)
class ObjectState:
    """Where one applied object stands, with one line a person reads."""

    kind: str
    name: str
    status: Status
    message: str


@dataclass(frozen=True)
class PodProblem:
    """Why a pod does not come up, and whether waiting can fix it."""

    pod: str
    container: str | None
    reason: str
    message: str
    retryable: bool
    fix: str


# ---------------------------------------------------------------------------------------------
# Reading plain objects


def _get(obj: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """``obj["a"]["b"]`` for ``"a.b"``, ``default`` where a step is missing or null."""
    cur: Any = obj
    for key in path.split("."):
        if not isinstance(cur, Mapping) or cur.get(key) is None:
            return default
        cur = cur[key]
    return cur


def _int(obj: Mapping[str, Any], path: str, default: int = 0) -> int:
    value = _get(obj, path)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _list(obj: Mapping[str, Any], path: str) -> list[Obj]:
    value = _get(obj, path, [])
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _conditions(obj: Mapping[str, Any]) -> dict[str, Obj]:
    """``status.conditions`` by type (the API treats the list as a map keyed by type)."""
    return {c["type"]: c for c in _list(obj, "status.conditions") if isinstance(c.get("type"), str)}


def _one_line(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    """Collapse whitespace (kubelet and scheduler texts span lines) and cap the length."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _parse_time(value: Any) -> datetime | None:
    """An RFC 3339 Time or MicroTime from the API (``2024-05-01T10:00:00Z``, ``…00.123456Z``)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _aware(moment: datetime) -> datetime:
    """A naive ``now`` is taken as UTC, as the API's timestamps are."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _group_kind(obj: Mapping[str, Any]) -> str:
    """kstatus's lookup key: ``apps/Deployment``, or just ``Pod`` for the core group (core.go)."""
    api_version = str(obj.get("apiVersion", ""))
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    kind = str(obj.get("kind", ""))
    return f"{group}/{kind}" if group else kind


def _container_statuses(pod: Obj) -> Iterator[Obj]:
    """Init containers first (they run first, and a stuck one hides the rest), then app containers."""
    yield from _list(pod, "status.initContainerStatuses")
    yield from _list(pod, "status.containerStatuses")


def _waiting_reason(status: Obj) -> str:
    return str(_get(status, "state.waiting.reason", ""))


def _terminated_summary(pod: Obj) -> str:
    for status in _container_statuses(pod):
        term = _get(status, "state.terminated")
        if term and term.get("exitCode"):
            return f"{status.get('name')} exited with code {term['exitCode']} ({term.get('reason') or 'Error'})"
    return ""
