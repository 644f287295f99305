"""discofilter's one error hierarchy.

Every error that discofilter raises on purpose derives from `DiscofilterError`. Each carries
`status_hint`, the HTTP status a client should see if the error ends a request (h11's
`error_status_hint`), and `reason`, the Kubernetes `Status.reason` to put beside it. The conversion to
an HTTP answer happens in one place only: the error middleware in `discofilter.app`.
"""

from __future__ import annotations

import orjson


class DiscofilterError(Exception):
    """Base of every error discofilter raises on purpose."""

    status_hint: int = 500
    reason: str = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(DiscofilterError):
    """A flag, environment variable or kubeconfig that cannot work. Stops the process at start-up."""

    status_hint = 500
    reason = "InternalError"


class SelectorError(ConfigError):
    """A label selector that does not parse, or breaks the Kubernetes label syntax."""

    status_hint = 400
    reason = "BadRequest"


class MeshConfigError(ConfigError):
    """An Istio mesh config (file or ConfigMap) whose discoverySelectors cannot be read.

    At start-up from a file it stops the process; while running, the last good selectors stay.
    """


class StreamFramingError(DiscofilterError):
    """Upstream bytes that are not a well-formed watch stream or list body.

    The stream is ended with an ERROR event; the bytes are never forwarded unparsed.
    """

    status_hint = 502
    reason = "InternalError"


class ObjectTooLargeError(StreamFramingError):
    """One event or list body is larger than the configured limit."""


class NotReadyError(DiscofilterError):
    """Mesh membership is not known yet, or has been stale too long: filtered reads fail closed."""

    status_hint = 503
    reason = "ServiceUnavailable"


class ForbiddenError(DiscofilterError):
    """A request discofilter refuses to forward as asked, because doing so would add privileges."""

    status_hint = 403
    reason = "Forbidden"


class NotAcceptableError(DiscofilterError):
    """The client asked for a representation of a filtered collection that discofilter cannot filter."""

    status_hint = 406
    reason = "NotAcceptable"


class UpstreamError(DiscofilterError):
    """The API server could not be reached, or answered in a way discofilter cannot use."""

    status_hint = 502
    reason = "InternalError"

    def __init__(
        self, message: str, *, status: int | None = None, upstream_reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.upstream_reason = upstream_reason


class ExpiredError(UpstreamError):
    """The resourceVersion is too old (HTTP 410 or an ERROR event with code 410)."""


MAX_ERROR_BODY = 64 * 1024
"""An error answer is a small Status (a few hundred bytes in every 1.28 capture); read no more than this."""


def raise_for_status(status: int, reason: str | None, body: bytes, what: str, hint: str = "") -> None:
    """Raise ``UpstreamError`` (``ExpiredError`` for 410) for an error answer to discofilter's own read.

    kubernetes-asyncio raises ApiException on an error status only when it decodes the body itself;
    with ``_preload_content=False`` (how the namespace and ConfigMap sources read) a 401 or 403 comes
    back as a response like any other. Its Status body, read as a list, has no items: the namespace
    tracker would sync membership as empty, and every filtered answer would be empty, a mesh-wide outage.
    """
    if status < 300:
        return
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and (doc.get("code") or doc.get("message")):
        words = status_words(doc)
    else:
        text = body[:200].decode("utf-8", "replace").strip()
        words = f"{status} {reason or ''}" + (f": {text}" if text else "")
    cls = ExpiredError if status == 410 else UpstreamError
    raise cls(f"{what} refused: {words}{hint}", status=status)


def status_words(status: dict[str, object]) -> str:
    """A Kubernetes Status in words: ``401 Unauthorized: Unauthorized``."""
    code, reason, message = status.get("code"), status.get("reason"), status.get("message")
    return " ".join(str(p) for p in (code, reason) if p) + (f": {message}" if message else "")
