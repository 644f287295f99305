"""Small helpers shared by the asyncio shell: Kubernetes Status bodies, headers, content negotiation.

(No I/O of its own; it lives outside ``core`` only because it speaks HTTP header vocabulary.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import orjson

from discofilter.core.protobuf import MAGIC, encode_tag, encode_varint, len_field_header

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
    kept, _ = _keep_media(accept, frozenset({"application/json"}))
    return ", ".join(kept) if kept else "application/json"


def _keep_media(accept: str | None, bases: frozenset[str]) -> tuple[list[str], list[str]]:
    """(the media ranges of ``accept`` whose base type is in ``bases``, with wildcards turned into
    ``application/json``; all its ranges), both in the client's order."""
    parts = [p.strip() for p in (accept or "").split(",") if p.strip()]
    kept: list[str] = []
    for media in parts:
        base = base_media_type(media)
        if base in bases:
            kept.append(media)
        elif base in _JSON_TYPES and "application/json" not in kept:
            kept.append("application/json")
    return kept, parts


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


# -- protobuf ------------------------------------------------------------------------------------------

PROTOBUF: Final = "application/vnd.kubernetes.protobuf"
PROTOBUF_WATCH: Final = PROTOBUF + ";stream=watch"


def base_media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_protobuf_content_type(content_type: str | None) -> bool:
    return base_media_type(content_type) == PROTOBUF


def native_accept(accept: str | None) -> str:
    """Accept for a filtered read in the native wire format: protobuf and JSON ranges kept as the
    client ordered them (istiod sends ``protobuf,json`` since Istio 1.18), anything else dropped,
    since only those two can be filtered."""
    kept, parts = _keep_media(accept, frozenset({PROTOBUF, "application/json"}))
    if accept and kept == parts:
        return accept  # nothing to drop: the client's header goes on byte for byte
    return ", ".join(kept) if kept else "application/json"


def prefers_protobuf(accept: str | None) -> bool:
    """Whether the first media range the client listed is protobuf."""
    first = (accept or "").split(",", 1)[0]
    return base_media_type(first) == PROTOBUF


def _pb_str(number: int, value: str) -> bytes:
    data = value.encode()
    return len_field_header(number, len(data)) + data


def _pb_msg(number: int, payload: bytes) -> bytes:
    return len_field_header(number, len(payload)) + payload


def proto_status(code: int, reason: str, message: str) -> bytes:
    """A ``metav1.Status`` failure in the protobuf envelope (``k8s\\0`` + runtime.Unknown), laid out
    field for field as the API server writes it (watch-pods-410.pb)."""
    list_meta = _pb_str(1, "") + _pb_str(2, "") + _pb_str(3, "")
    status = (
        _pb_msg(1, list_meta)
        + _pb_str(2, "Failure")
        + _pb_str(3, message)
        + _pb_str(4, reason)
        + encode_tag(6, 0)
        + encode_varint(code)
    )
    type_meta = _pb_str(1, "v1") + _pb_str(2, "Status")
    unknown = _pb_msg(1, type_meta) + _pb_msg(2, status) + _pb_str(3, "") + _pb_str(4, "")
    return MAGIC + unknown


def proto_error_event(code: int, reason: str, message: str) -> bytes:
    """A protobuf watch frame carrying an ERROR event: 4-byte big-endian length, then a WatchEvent."""
    event = _pb_str(1, "ERROR") + _pb_msg(2, _pb_msg(1, proto_status(code, reason, message)))
    return len(event).to_bytes(4, "big") + event
