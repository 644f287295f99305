"""Small helpers shared by the asyncio shell: Kubernetes Status bodies, headers, content negotiation.

(No I/O of its own; it lives outside ``core`` only because it speaks HTTP header vocabulary.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import orjson

# RFC 9110 7.6.1 hop-by-hop headers, plus Proxy-Connection that old clients still send.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def hop_by_hop(headers: Mapping[str, str]) -> frozenset[str]:
    """Header names not to forward: the standard set and whatever ``Connection`` names."""
    extra = {tok.strip().lower() for tok in headers.get("Connection", "").split(",") if tok.strip()}
    return HOP_BY_HOP | extra


def status_body(code: int, reason: str, message: str) -> bytes:
    """A ``metav1.Status`` failure, shaped like the API server's own (see the error-*.json captures)."""
    return orjson.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
    )


def error_event(code: int, reason: str, message: str) -> bytes:
    """A watch ERROR event line carrying a Status, like the API server's 410 (watch-pods-410.json)."""
    return b'{"type":"ERROR","object":' + status_body(code, reason, message) + b"}\n"


_JSON_TYPES: Final = ("application/json", "*/*", "application/*")


def json_accept(accept: str | None) -> str:
    """Rewrite an Accept header for a filtered read so the API server answers in JSON.

    Protobuf and YAML media ranges are dropped (discofilter filters JSON here); JSON ones keep their
    parameters, so ``as=Table`` and ``as=PartialObjectMetadataList`` requests stay what they were.
    ``*/*`` becomes ``application/json``. client-go picks its decoder from the answer's Content-Type,
    so a protobuf-preferring istiod decodes the JSON answer fine (REFERENCE.md, "Content type").
    """
    kept: list[str] = []
    for part in (accept or "").split(","):
        media = part.strip()
        if not media:
            continue
        base = media.split(";", 1)[0].strip().lower()
        if base == "application/json":
            kept.append(media)
        elif base in _JSON_TYPES and "application/json" not in kept:
            kept.append("application/json")
    return ", ".join(kept) if kept else "application/json"


def media_params(accept: str | None) -> Iterable[dict[str, str]]:
    """The parameters of each JSON media range in an Accept header, lower-cased keys."""
    for part in (accept or "").split(","):
        fields = [f.strip() for f in part.split(";")]
        if fields[0].lower() != "application/json":
            continue
        params: dict[str, str] = {}
        for f in fields[1:]:
            if "=" in f:
                k, v = f.split("=", 1)
                params[k.strip().lower()] = v.strip()
        yield params


def is_json_content_type(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"
