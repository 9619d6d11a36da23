"""API errors as the kube-apiserver words them: a ``Status`` body and an HTTP code.

Each constructor follows ``staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go``
(``NewNotFound``, ``NewAlreadyExists``, ``NewConflict``, ``NewInvalid``, ``NewForbidden``,
``NewBadRequest``, ``NewInternalError``, ``NewResourceExpired``, ``NewMethodNotSupported``),
so a client sees the same ``reason``, ``code``, ``message`` and ``details`` as from a real server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class KubeError(Exception):
    """An API error: raised anywhere in the fake, answered as a ``Status`` with its code."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        """The ``Status`` object the real server writes for this error (metav1.Status)."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def qualified(group: str, plural: str) -> str:
    """``schema.GroupResource.String()``: ``pods`` in the core group, ``deployments.apps`` elsewhere."""
    return f"{plural}.{group}" if group else plural


def _details(group: str, kind: str, name: str, **extra: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name} if name else {}
    if group:
        details["group"] = group
    details["kind"] = kind
    details.update(extra)
    return details


def not_found(group: str, plural: str, name: str) -> KubeError:
    """``NewNotFound``: 404 ``pods "x" not found``."""
    return KubeError(404, "NotFound", f'{qualified(group, plural)} "{name}" not found', _details(group, plural, name))


def already_exists(group: str, plural: str, name: str) -> KubeError:
    """``NewAlreadyExists``: 409 ``deployments.apps "x" already exists``."""
    message = f'{qualified(group, plural)} "{name}" already exists'
    return KubeError(409, "AlreadyExists", message, _details(group, plural, name))


def conflict(group: str, plural: str, name: str, why: str) -> KubeError:
    """``NewConflict``: 409 ``Operation cannot be fulfilled on deployments.apps "x": <why>``."""
    message = f'Operation cannot be fulfilled on {qualified(group, plural)} "{name}": {why}'
    return KubeError(409, "Conflict", message, _details(group, plural, name))


MODIFIED = "the object has been modified; please apply your changes to the latest version and try again"


def invalid(kind: str, group: str, name: str, causes: Sequence[tuple[str, str, str]]) -> KubeError:
    """``NewInvalid``: 422 ``Deployment.apps "x" is invalid: <field>: <detail>``.

    ``causes`` are (field, cause type, body) as ``field.Error``: type ``FieldValueRequired`` with body
    ``Required value: ...``, or ``FieldValueInvalid`` with ``Invalid value: "v": ...``. Several are
    aggregated as ``[a, b]`` (``field.ErrorList.ToAggregate``).
    """
    group_kind = f"{kind}.{group}" if group else kind
    errors = [f"{field}: {body}" for field, _, body in causes]
    aggregate = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
    details: dict[str, Any] = {"name": name, "group": group, "kind": kind} if group else {"name": name, "kind": kind}
    details["causes"] = [{"reason": kind_, "message": body, "field": field} for field, kind_, body in causes]
    return KubeError(422, "Invalid", f'{group_kind} "{name}" is invalid: {aggregate}', details)


def bad_request(message: str) -> KubeError:
    """``NewBadRequest``: 400 with the message as given."""
    return KubeError(400, "BadRequest", message)


def forbidden(group: str, plural: str, name: str, why: str) -> KubeError:
    """``NewForbidden``: 403 ``deployments.apps "x" is forbidden: <why>`` (no name: ``deployments.apps is ...``)."""
    subject = f'{qualified(group, plural)} "{name}"' if name else qualified(group, plural)
    return KubeError(403, "Forbidden", f"{subject} is forbidden: {why}", _details(group, plural, name))


def internal(message: str) -> KubeError:
    """``NewInternalError``: 500 ``Internal error occurred: <message>``."""
    return KubeError(500, "InternalError", f"Internal error occurred: {message}", {"causes": [{"message": message}]})


def expired(message: str) -> KubeError:
    """``NewResourceExpired``: 410 Expired, sent as a watch ERROR event for a compacted resourceVersion."""
    return KubeError(410, "Expired", message)


def method_not_allowed(group: str, plural: str, verb: str) -> KubeError:
    """``NewMethodNotSupported``: 405 ``<verb> is not supported on resources of kind "<resource>"``."""
    message = f'{verb} is not supported on resources of kind "{qualified(group, plural)}"'
    return KubeError(405, "MethodNotAllowed", message, _details(group, plural, ""))


def unsupported_patch(accepted: Sequence[str]) -> KubeError:
    """415 from the patch handler (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go)."""
    message = "the body of the request was in an unknown format - accepted media types include: " + ", ".join(accepted)
    return KubeError(415, "UnsupportedMediaType", message)


def unauthorized() -> KubeError:
    """401 from the authentication filter (staging/src/k8s.io/apiserver/pkg/endpoints/filters/authentication.go)."""
    return KubeError(401, "Unauthorized", "Unauthorized")


def not_modelled(what: str) -> KubeError:
    """501 for a real API the fake does not model: it says so instead of pretending (not a real server answer)."""
    return KubeError(501, "NotImplemented", f"fake_kube does not model {what}")
