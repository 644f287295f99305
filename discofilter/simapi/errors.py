"""The failures of the simulated API server, shaped as the real server's ``Status`` objects.

Every refusal of the simulated server is an ``ApiError``: the store raises it, the HTTP shell turns it into
a ``Status`` body. The constructors below mirror apimachinery's ``pkg/api/errors`` (Kubernetes 1.28) field
for field and word for word, because clients branch on ``reason`` and ``code`` and tests compare bodies
with the captures in ``tests/data/apiserver-1.28`` byte for byte.

Rule: nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from discofilter.errors import DiscofilterError

JsonObj = dict[str, Any]

FieldErrorType = Literal["Required", "Invalid", "Forbidden", "NotSupported", "Duplicate", "NotFound"]

# field.ErrorType.String() and the StatusCause reason of each (apimachinery util/validation/field).
_TYPE_TEXT: Final[dict[str, str]] = {
    "Required": "Required value",
    "Invalid": "Invalid value",
    "Forbidden": "Forbidden",
    "NotSupported": "Unsupported value",
    "Duplicate": "Duplicate value",
    "NotFound": "Not found",
}
_CAUSE_REASON: Final[dict[str, str]] = {
    "Required": "FieldValueRequired",
    "Invalid": "FieldValueInvalid",
    "Forbidden": "FieldValueForbidden",
    "NotSupported": "FieldValueNotSupported",
    "Duplicate": "FieldValueDuplicate",
    "NotFound": "FieldValueNotFound",
}


def go_quote(value: object) -> str:
    """Go's ``%q`` for the values these messages quote (strings and integers)."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


@dataclass(frozen=True, slots=True)
class FieldError:
    """One ``field.Error``: what ``422 Invalid`` answers list as causes."""

    type: FieldErrorType
    field: str
    detail: str = ""
    value: object = None

    def body(self) -> str:
        """``field.Error.ErrorBody()``: the message without the field path."""
        text = _TYPE_TEXT[self.type]
        if self.type not in ("Required", "Forbidden"):
            text = f"{text}: {go_quote(self.value)}"
        if self.detail:
            text = f"{text}: {self.detail}"
        return text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


class ApiError(DiscofilterError):
    """A request the simulated API server refuses; ``status()`` is the body the real server sends."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: JsonObj | None = None,
        metadata: JsonObj | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status_hint = code
        self.reason = reason
        self.details = details
        self.metadata = metadata if metadata is not None else {}

    def status(self) -> JsonObj:
        """The ``metav1.Status`` in Go field order (kind, apiVersion, metadata, status, message, reason,
        details, code); ``details`` is left out when the real server omits it (BadRequest, Expired)."""
        body: JsonObj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": dict(self.metadata),
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = dict(self.details)
        body["code"] = self.code
        return body


def _details(resource: str, group: str, name: str = "") -> JsonObj:
    # StatusDetails field order: name, group, kind (all omitempty).
    details: JsonObj = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    details["kind"] = resource
    return details


def qualified(resource: str, group: str) -> str:
    """``schema.GroupResource.String()``: ``pods``, ``endpointslices.discovery.k8s.io``."""
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f"{qualified(resource, group)} {go_quote(name)} not found",
        details=_details(resource, group, name),
    )


def unknown_resource() -> ApiError:
    """What a path the server has no handler for gets (``error-404-unknown-resource.json``)."""
    return ApiError(404, "NotFound", "the server could not find the requested resource", details={})


def method_not_allowed() -> ApiError:
    return ApiError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource", details={}
    )


def already_exists(resource: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f"{qualified(resource, group)} {go_quote(name)} already exists",
        details=_details(resource, group, name),
    )


def conflict(resource: str, group: str, name: str, problem: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f"Operation cannot be fulfilled on {qualified(resource, group)} {go_quote(name)}: {problem}",
        details=_details(resource, group, name),
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unauthorized() -> ApiError:
    """401 for a bearer token the server does not know (``error-401-bad-token.json``)."""
    return ApiError(401, "Unauthorized", "Unauthorized")


def forbidden(resource: str, group: str, name: str, problem: str) -> ApiError:
    """``NewForbidden``: ``pods is forbidden: User "x" cannot list ...`` (``error-403-*.json``)."""
    subject = qualified(resource, group)
    if name:
        subject = f"{subject} {go_quote(name)}"
    return ApiError(
        403, "Forbidden", f"{subject} is forbidden: {problem}", details=_details(resource, group, name)
    )


def expired(message: str, *, continue_token: str | None = None) -> ApiError:
    """410 Expired; a refused ``continue`` carries a fresh token (rv -1) in ``metadata.continue``."""
    metadata = {"continue": continue_token} if continue_token else None
    return ApiError(410, "Expired", message, metadata=metadata)


def too_large_resource_version(requested: int, current: int) -> ApiError:
    """The watch cache's answer to a resourceVersion it has not reached (NewTooLargeResourceVersionError)."""
    return ApiError(
        504,
        "Timeout",
        f"Timeout: Too large resource version: {requested}, current: {current}",
        details={
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        },
    )


def invalid(group: str, kind: str, name: str, errors: Sequence[FieldError]) -> ApiError:
    """``NewInvalid``: 422 with one cause per field error; several errors print as ``[a, b]``."""
    subject = f"{kind}.{group}" if group else kind
    if not errors:
        message = f"{subject} {go_quote(name)} is invalid"
    elif len(errors) == 1:
        message = f"{subject} {go_quote(name)} is invalid: {errors[0]}"
    else:
        message = f"{subject} {go_quote(name)} is invalid: [{', '.join(str(e) for e in errors)}]"
    details: JsonObj = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    details["kind"] = kind
    details["causes"] = [
        {"reason": _CAUSE_REASON[e.type], "message": e.body(), "field": e.field} for e in errors
    ]
    return ApiError(422, "Invalid", message, details=details)


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"application/json, application/yaml, application/merge-patch+json, "
        f"application/strategic-merge-patch+json, application/json-patch+json (got {content_type})",
    )
