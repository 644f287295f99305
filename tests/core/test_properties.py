"""Property tests: for any events, any membership changes and any chunking, the bytes a client gets
equal a reference model's answer (the same events, the same order, the same bytes); and no request
path reaches a filtered collection without the filter.

The reference model is written here, apart from the code under test: an event is decided when its
last byte arrives, by the membership at that moment, and membership is computed from the namespace
labels with Istio's two default selectors spelt out by hand (istio-injection=enabled, or any
istio.io/rev label). Events are encoded with orjson (JSON) and the test reference protobuf encoder.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discofilter.core.boundary import EventBoundary
from discofilter.core.membership import Membership
from discofilter.core.protowatch import ProtoWatchFilter
from discofilter.core.routing import classify
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS
from discofilter.core.watchfilter import WatchFilter
from tests.core.test_protobuf import ref_field
from tests.core.test_protowatch import frame

NAMESPACES = ("mesh-a", "plain-1", "ns-x", "ns-y")
LABEL_SETS: tuple[dict[str, str], ...] = (
    {},
    {"istio-injection": "enabled"},
    {"istio-injection": "disabled"},
    {"istio.io/rev": "canary"},
    {"istio.io/rev": ""},
    {"istio-injection": "enabled", "istio.io/rev": "1-20"},
    {"app": "istio-injection"},
)


def reference_member(labels: dict[str, str]) -> bool:
    return labels.get("istio-injection") == "enabled" or "istio.io/rev" in labels


@dataclass(frozen=True)
class Ev:
    etype: str
    namespace: str
    name: str
    rv: int
    layout: int
    """0: the API server's key order (the filter's fast path); 1: another order (its slow path)."""


def encode_json(ev: Ev) -> bytes:
    if ev.etype == "ERROR":
        return (
            orjson.dumps({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "code": 410}})
            + b"\n"
        )
    meta: dict[str, object] = {"name": ev.name, "namespace": ev.namespace, "resourceVersion": str(ev.rv)}
    if ev.etype == "BOOKMARK":
        meta = {"resourceVersion": str(ev.rv)}
    obj: dict[str, object] = {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": {"n": ev.name}}
    if ev.layout == 1:
        obj = {"metadata": meta, "spec": obj["spec"], "apiVersion": "v1", "kind": "Pod"}
        meta["labels"] = {"namespace": "mesh-a"}  # a decoy: not the object's namespace
    return orjson.dumps({"type": ev.etype, "object": obj}) + b"\n"


def encode_proto(ev: Ev) -> bytes:
    if ev.etype == "ERROR":
        status = ref_field(1, b"") + ref_field(6, 410)
        raw = b"k8s\x00" + ref_field(1, ref_field(1, "v1") + ref_field(2, "Status")) + ref_field(2, status)
        return frame(ref_field(1, "ERROR") + ref_field(2, ref_field(1, raw)))
    meta = ref_field(6, str(ev.rv))
    if ev.etype != "BOOKMARK":
        head = ref_field(1, ev.name) + ref_field(3, ev.namespace)
        meta = (
            head + meta
            if ev.layout == 0
            else meta + ref_field(11, ref_field(1, "a") + ref_field(2, "b")) + head
        )
    unknown = ref_field(1, ref_field(1, "v1") + ref_field(2, "Pod")) + ref_field(2, ref_field(1, meta))
    return frame(ref_field(1, ev.etype) + ref_field(2, ref_field(1, b"k8s\x00" + unknown)))


events = st.builds(
    Ev,
    etype=st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]),
    namespace=st.sampled_from(NAMESPACES),
    name=st.text("abcdefghij-0123456789", min_size=1, max_size=20),
    rv=st.integers(1, 10**9),
    layout=st.integers(0, 1),
)
label_changes = st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(range(len(LABEL_SETS))))


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[dict[str, int], list[Ev], list[int], dict[int, list[tuple[str, int]]]]:
    """Initial labels, events, cut points, and label changes applied at some cuts."""
    initial = {ns: draw(st.sampled_from(range(len(LABEL_SETS)))) for ns in NAMESPACES}
    evs = draw(st.lists(events, max_size=15))
    cuts = draw(st.lists(st.integers(0, 3000), max_size=20))
    changes = draw(st.dictionaries(st.integers(0, 20), st.lists(label_changes, max_size=3), max_size=6))
    return initial, evs, cuts, changes


def ns_object(name: str, labels: dict[str, str], rv: int) -> dict[str, object]:
    return {"metadata": {"name": name, "labels": dict(labels), "resourceVersion": str(rv)}}


def run_both(
    scenario: tuple[dict[str, int], list[Ev], list[int], dict[int, list[tuple[str, int]]]],
    encode: type[object] | object,
) -> tuple[bytes, bytes]:
    """(what the filter gave, what the reference model says), for one encoding."""
    initial, evs, cuts, changes = scenario
    enc = encode_json if encode == "json" else encode_proto
    encoded = [enc(e) for e in evs]
    data = b"".join(encoded)
    bounds = [*sorted({c for c in cuts if 0 < c < len(data)}), len(data)]

    # Under test: the real Membership fed namespace events, the real filter reading it live.
    membership = Membership(DEFAULT_MESH_SELECTORS)
    rv = 1000
    membership.replace([ns_object(ns, LABEL_SETS[i], rv) for ns, i in initial.items()], str(rv))
    wf = WatchFilter(membership) if encode == "json" else ProtoWatchFilter(membership)
    got = []
    prev = 0
    for k, end in enumerate(bounds):
        for ns, i in changes.get(k, []):
            rv += 1
            membership.apply("MODIFIED", ns_object(ns, LABEL_SETS[i], rv))
        got.extend(wf.feed(data[prev:end]))
        prev = end
    wf.feed_eof()

    # Reference: walk the events; each is decided in the chunk its last byte arrives in.
    labels = {ns: LABEL_SETS[i] for ns, i in initial.items()}
    expected = []
    offset = 0
    k = -1
    for e, raw in zip(evs, encoded, strict=True):
        offset += len(raw)
        while k + 1 < len(bounds) and (k < 0 or bounds[k] < offset):
            k += 1
            for ns, i in changes.get(k, []):
                labels[ns] = LABEL_SETS[i]
        if e.etype in ("BOOKMARK", "ERROR") or reference_member(labels[e.namespace]):
            expected.append(raw)
    return b"".join(got), b"".join(expected)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_json_stream_equals_the_reference_under_membership_changes_and_any_chunking(
    scenario: tuple[dict[str, int], list[Ev], list[int], dict[int, list[tuple[str, int]]]],
) -> None:
    got, expected = run_both(scenario, "json")
    assert got == expected


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_protobuf_stream_equals_the_reference_under_membership_changes_and_any_chunking(
    scenario: tuple[dict[str, int], list[Ev], list[int], dict[int, list[tuple[str, int]]]],
) -> None:
    got, expected = run_both(scenario, "protobuf")
    assert got == expected


# -- no path reaches a filtered collection without the filter ------------------------------------------

# How a server could read a path: once percent-decoded (Go's url.Path), with dot segments and
# repeated slashes resolved (Go's path.Clean, which net/http's ServeMux redirects to), the fragment
# dropped (HTTP clients never send one; aiohttp's client strips it). Any of these readings reaching a
# filtered collection means the request must be filtered or refused.
_FILTERED = re.compile(
    r"^/(?:api/v1/(?:watch/)?(?:namespaces/[^/]+/)?(?:pods|services|endpoints)"
    r"|apis/discovery\.k8s\.io/v1(?:beta1)?/(?:watch/)?(?:namespaces/[^/]+/)?endpointslices)"
    r"(?:/[^/]+)?/?$"
)


def server_readings(target: str) -> set[str]:
    """Decoded at most once (as Go does), cleaned before or after decoding."""
    path = target.split("#", 1)[0]

    def clean(p: str) -> str:
        return posixpath.normpath(p.replace("\\", "/")) if p.startswith("/") else p

    readings = {path, unquote(path), clean(path), clean(unquote(path)), unquote(clean(path))}
    if target.startswith("http://"):
        readings |= server_readings(urlsplit(target).path)
    return readings


def reaches_a_filtered_collection(target: str) -> bool:
    for r in server_readings(target):
        m = _FILTERED.match(r)
        if m is None:
            continue
        # A single named object (pods/NAME) is not a collection, except under /watch/.
        tail = r.rstrip("/").split("/")
        if "/watch/" in r or tail[-1] in ("pods", "services", "endpoints", "endpointslices"):
            return True
    return False


SEGMENTS = [
    "api", "v1", "apis", "discovery.k8s.io", "v1beta1", "namespaces", "mesh-a", "pods", "services",
    "endpoints", "endpointslices", "watch", "..", ".", "", "%2E%2E", "%2e", "%70ods", "pod%73", "x",
    "proxy", "status", "mesh-a%2Fpods", "#frag", "a#", "%23", "\\",
]  # fmt: skip


@st.composite
def random_targets(draw: st.DrawFn) -> str:
    segs = draw(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=8))
    seps = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(segs), max_size=len(segs)))
    path = "".join(sep + seg for sep, seg in zip(seps, segs, strict=True))
    return draw(st.sampled_from(["", "", "", "http://h", "http://h:1"])) + path


FILTERED_PATHS = [
    "/api/v1/pods",
    "/api/v1/namespaces/mesh-a/pods",
    "/api/v1/watch/namespaces/mesh-a/services",
    "/api/v1/watch/endpoints",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/apis/discovery.k8s.io/v1beta1/namespaces/mesh-a/endpointslices",
]
SEPARATORS = ["/", "/", "/", "%2F", "%2f", "//", "/./", "/x/../", "\\"]


@st.composite
def mutated_targets(draw: st.DrawFn) -> str:
    """A filtered path, disguised a few ways at once: what an attacker would start from."""
    segs = draw(st.sampled_from(FILTERED_PATHS)).split("/")[1:]
    seps = ["/"] * len(segs)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(segs) - 1))
        how = draw(st.sampled_from(["sep", "encode", "dots", "upper-encode"]))
        if how == "sep":
            seps[i] = draw(st.sampled_from(SEPARATORS))
        elif how in ("encode", "upper-encode") and segs[i]:
            j = draw(st.integers(0, len(segs[i]) - 1))
            enc = f"%{ord(segs[i][j]):02X}" if how == "upper-encode" else f"%{ord(segs[i][j]):02x}"
            segs[i] = segs[i][:j] + enc + segs[i][j + 1 :]
        else:
            segs[i] = draw(st.sampled_from(["x/..", ".", "%2E", "x/%2E%2E"])) + "/" + segs[i]
    path = "".join(sep + seg for sep, seg in zip(seps, segs, strict=True))
    path += draw(st.sampled_from(["", "", "/", "#frag", "/#", "#", "%23x", "/%2E"]))
    return draw(st.sampled_from(["", "", "http://h", "http://h:1"])) + path


@settings(max_examples=1500, deadline=None)
@given(st.one_of(random_targets(), mutated_targets()), st.sampled_from([[], ["1"], ["true"], ["0", "1"]]))
def test_no_path_reaches_a_filtered_collection_unfiltered(target: str, watch: list[str]) -> None:
    route = classify("GET", target, watch)
    if reaches_a_filtered_collection(target):
        assert route.filtered or route.kind.value == "rejected", (target, route)


def test_the_reference_reading_knows_the_known_escapes() -> None:
    for target in (
        "/api/v1/pods#x",
        "/api/v1/namespaces/a/../../pods",
        "/api%2Fv1/pods",
        "http://h/api/v1/pods",
    ):
        assert reaches_a_filtered_collection(target)
    assert not reaches_a_filtered_collection("/api/v1/nodes")
    assert not reaches_a_filtered_collection("/api/v1/namespaces/mesh-a/pods/p/log")


# -- pass-through watches: knowing where events end, without parsing them ----------------------------


@settings(max_examples=400, deadline=None)
@given(st.lists(events, max_size=10), st.lists(st.integers(0, 3000), max_size=20), st.booleans())
def test_event_boundary_is_known_after_every_chunk(evs: list[Ev], cuts: list[int], protobuf: bool) -> None:
    encoded = [encode_proto(e) if protobuf else encode_json(e) for e in evs]
    data = b"".join(encoded)
    ends, offset = {0}, 0
    for raw in encoded:
        offset += len(raw)
        ends.add(offset)
    boundary = EventBoundary(protobuf=protobuf)
    prev = 0
    for c in [*sorted({c for c in cuts if 0 < c < len(data)}), len(data)]:
        boundary.feed(data[prev:c])
        prev = c
        assert boundary.at_boundary == (c in ends), c
