"""The analysis report: counts and membership in, a JSON-able dict and its text table out.

The CPU figures are estimates from rates measured elsewhere (``DecodeRates``; REFERENCE.md, "Measured
here"), not measurements of istiod: the report says so, and names the rates it used.

Rule 1: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Final

from discofilter.analyze.accounting import KINDS, Tally

TOP: Final = 10


@dataclass(frozen=True, slots=True)
class DecodeRates:
    """istiod-side CPU per object, measured with a real client-go 1.28 informer against a real
    kube-apiserver 1.28 (2,558 objects; mesh pods ~20 KB of JSON, plain pods ~11 KB)."""

    json_event_ms: float = 1.10
    """client-go CPU per JSON watch event."""
    protobuf_event_ms: float = 0.44
    """client-go CPU per protobuf watch event (2.5x cheaper than JSON)."""
    json_list_object_ms: float = 0.24
    """client-go CPU per JSON object at LIST time."""
    protobuf_list_object_ms: float = 0.08
    """client-go CPU per protobuf object at LIST time (3.1x cheaper than JSON)."""
    informer_event_us: float = 590.0
    """A client-go informer's CPU per watch event it receives, decode and store included (protobuf,
    2,000 realistic pods, 50 patches/s)."""
    json_reference_bytes: int = 12_000
    """The JSON event size the per-event rates were measured at: ~11 KB plain pods, one in ten a
    ~20 KB mesh pod. Per-byte rates are the per-event rates over this size."""
    protobuf_reference_bytes: int = 8_700
    """The same objects in protobuf: 0.73 of the JSON size (the 1.28 captures' pods, 14,723 against
    20,187 bytes)."""


@dataclass(frozen=True, slots=True)
class ServerSideBound:
    k: int = 100
    """Field-selector requirements per request for server-side exclusion. Each costs the API server
    ~85 ns per event per watcher (measured on 1.28: 5.43 s of API server CPU with none, 5.68 s with
    100, 7.48 s with 1,000), so 100 adds ~8.5 us per event per watcher, less than sending the event
    costs; 1,000 costs more than it saves."""


@dataclass(frozen=True, slots=True)
class Context:
    """What the report needs besides the counts."""

    server: str
    selectors: str
    """discofilter's selectors, as ``serve`` would apply them."""
    mesh_config: str | None
    """Where istiod's discoverySelectors came from and what they are, if a mesh config was given."""
    planned_seconds: float
    seconds: float
    ended_early: bool
    members: frozenset[str]
    """Mesh namespaces at the end of the window."""
    known_namespaces: int
    istiod_only: frozenset[str] = frozenset()
    """Namespaces istiod's discoverySelectors admit but discofilter's selectors exclude."""
    discofilter_only: frozenset[str] = frozenset()
    """Namespaces discofilter keeps but istiod's discoverySelectors exclude."""
    mesh_selects_everything: bool = False
    self_usage: dict[str, float] | None = None


def _share(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole else 0.0


def build_report(
    tally: Tally, ctx: Context, rates: DecodeRates | None = None, bound: ServerSideBound | None = None
) -> dict[str, Any]:
    rates = rates or DecodeRates()
    bound = bound or ServerSideBound()
    nss = tally.namespaces
    events = sum(c.total_events for c in nss.values())
    wire = sum(c.total_bytes for c in nss.values())
    outside_events = sum(c.outside_events for c in nss.values())
    outside_bytes = sum(c.outside_bytes for c in nss.values())
    list_objects = sum(sum(c.list_objects.values()) for c in nss.values())
    list_bytes = sum(sum(c.list_bytes.values()) for c in nss.values())
    out_list_objects = sum(k.outside_list_objects for k in tally.kinds.values())
    out_list_bytes = sum(k.outside_list_bytes for k in tally.kinds.values())

    per_ns: dict[str, Any] = {}
    for name in sorted(nss):
        c = nss[name]
        per_ns[name] = {
            "mesh": name in ctx.members,
            "events": {k: dict(sorted(t.items())) for k, t in sorted(c.events.items())},
            "events_total": c.total_events,
            "bytes": dict(sorted(c.bytes.items())),
            "bytes_total": c.total_bytes,
            "outside_events": c.outside_events,
            "outside_bytes": c.outside_bytes,
            "list_objects": dict(sorted(c.list_objects.items())),
            "list_bytes": dict(sorted(c.list_bytes.items())),
            "gateway_pods": sorted(c.gateways),
        }
    kinds: dict[str, Any] = {}
    for kind in KINDS:
        k = tally.kinds[kind]
        kinds[kind] = {
            "watch_format": sorted(k.watch_formats),
            "list_format": sorted(k.list_formats),
            "events": sum(sum(c.events.get(kind, {}).values()) for c in nss.values()),
            "bytes": sum(c.bytes.get(kind, 0) for c in nss.values()),
            "bookmark_and_error_events": dict(sorted(k.other_events.items())),
            "bookmark_and_error_bytes": k.other_bytes,
            "list_objects": sum(c.list_objects.get(kind, 0) for c in nss.values()),
            "list_body_bytes": k.list_body_bytes,
            "lists": k.lists,
            "relists": max(0, k.lists - 1),
            "relist_bytes": k.relist_bytes,
            "watches": k.watches,
        }
    active = [n for n in nss if nss[n].total_events]
    by_events = sorted(active, key=lambda n: (-nss[n].total_events, n))[:TOP]
    by_bytes = sorted(active, key=lambda n: (-nss[n].total_bytes, n))[:TOP]
    return {
        "server": ctx.server,
        "window": {
            "planned_seconds": ctx.planned_seconds,
            "seconds": round(ctx.seconds, 3),
            "ended_early": ctx.ended_early,
        },
        "selectors": ctx.selectors,
        "mesh_config": ctx.mesh_config,
        "namespaces": {"known": ctx.known_namespaces, "mesh": len(ctx.members)},
        "totals": {
            "events": events,
            "outside_events": outside_events,
            "outside_event_share": _share(outside_events, events),
            "bytes": wire,
            "outside_bytes": outside_bytes,
            "outside_byte_share": _share(outside_bytes, wire),
            "list_objects": list_objects,
            "outside_list_objects": out_list_objects,
            "list_bytes": list_bytes,
            "outside_list_bytes": out_list_bytes,
            "outside_list_byte_share": _share(out_list_bytes, list_bytes),
            "namespace_watch_events": sum(tally.namespace_events.values()),
        },
        "kinds": kinds,
        "top_by_events": [{"namespace": n, "mesh": n in ctx.members, **_brief(tally, n)} for n in by_events],
        "top_by_bytes": [{"namespace": n, "mesh": n in ctx.members, **_brief(tally, n)} for n in by_bytes],
        "cpu_estimate": _cpu(tally, ctx.seconds, rates),
        "server_side_exclusion": _server_side(tally, ctx.members, bound),
        "warnings": list(_warnings(tally, ctx)),
        "self": ctx.self_usage or {},
        "per_namespace": per_ns,
    }


def _brief(tally: Tally, name: str) -> dict[str, int]:
    c = tally.namespaces[name]
    return {"events": c.total_events, "bytes": c.total_bytes, "outside_events": c.outside_events}


def _cpu(tally: Tally, seconds: float, rates: DecodeRates) -> dict[str, Any]:
    ev_ms = {"json": rates.json_event_ms, "protobuf": rates.protobuf_event_ms}
    ref = {"json": rates.json_reference_bytes, "protobuf": rates.protobuf_reference_bytes}
    per_event = per_byte = 0.0
    n = 0
    for c in tally.namespaces.values():
        for fmt, count in c.outside_events_by_format.items():
            per_event += count * ev_ms[fmt]
            per_byte += c.outside_event_bytes.get(fmt, 0) * ev_ms[fmt] / ref[fmt]
            n += count
    informer = n * rates.informer_event_us / 1000.0
    list_ms = {"json": rates.json_list_object_ms, "protobuf": rates.protobuf_list_object_ms}
    relist = sum(
        count * list_ms[fmt]
        for k in tally.kinds.values()
        for fmt, count in k.outside_list_objects_by_format.items()
    )

    def millicores(ms: float) -> float:
        return round(ms / seconds, 2) if seconds > 0 else 0.0  # ms of CPU per s = millicores

    return {
        "is_estimate": True,
        "note": "an estimate from client-go decode rates measured elsewhere (kube-apiserver and client-go "
        "1.28), not a measurement of this cluster's istiod",
        "outside_watch_events": n,
        "watch_cpu_seconds_per_event_rate": round(per_event / 1000.0, 4),
        "watch_cpu_seconds_per_byte_rate": round(per_byte / 1000.0, 4),
        "watch_cpu_seconds_informer_rate": round(informer / 1000.0, 4),
        "watch_millicores": {
            "per_event_rate": millicores(per_event),
            "per_byte_rate": millicores(per_byte),
            "informer_rate": millicores(informer),
        },
        "relist_cpu_seconds_saved_per_relist": round(relist / 1000.0, 4),
        "rates": asdict(rates),
    }


def _server_side(tally: Tally, members: frozenset[str], bound: ServerSideBound) -> dict[str, Any]:
    outside = {
        n: c.outside_events for n, c in tally.namespaces.items() if n not in members and c.outside_events
    }
    chosen = sorted(outside, key=lambda n: (-outside[n], n))[: bound.k]
    covered = sum(outside[n] for n in chosen)
    total = sum(c.outside_events for c in tally.namespaces.values())
    return {
        "k": bound.k,
        "namespaces": chosen,
        "namespaces_with_outside_events": len(outside),
        "outside_events_covered": covered,
        "share_of_outside_events": _share(covered, total),
        "note": f"one fieldSelector metadata.namespace!=NS per namespace, at most {bound.k} per request "
        "(~85 ns per requirement per event per watcher at the API server); istiod's pod watch already "
        "carries status.phase!=Failed",
    }


def _warnings(tally: Tally, ctx: Context) -> Iterable[str]:
    for name in sorted(tally.namespaces):
        gws = tally.namespaces[name].gateways
        if gws and name not in ctx.members:
            yield (
                f"gateway pods in namespace {name!r}, which discofilter would not keep: "
                f"{', '.join(sorted(gws)[:5])}{' ...' if len(gws) > 5 else ''}; istiod would never see "
                "them, so label the namespace into the mesh (or widen the selectors)"
            )
    if ctx.istiod_only:
        names = sorted(ctx.istiod_only)
        yield (
            f"istiod's discoverySelectors admit {len(names)} namespace(s) that discofilter's selectors "
            f"exclude ({', '.join(names[:10])}{' ...' if len(names) > 10 else ''}): istiod would believe "
            "them in the mesh yet never receive their objects; make the selectors agree"
        )
    if ctx.discofilter_only:
        names = sorted(ctx.discofilter_only)
        yield (
            f"discofilter's selectors keep {len(names)} namespace(s) istiod's discoverySelectors exclude "
            f"({', '.join(names[:10])}{' ...' if len(names) > 10 else ''}): istiod still receives and "
            "drops their churn; make the selectors agree"
        )
    if ctx.mesh_selects_everything:
        yield (
            "the mesh config has no discoverySelectors (or an empty one): istiod discovers every namespace, "
            "so discofilter following it would keep everything and save nothing"
        )
    mesh_total = sum(c.total_events for n, c in tally.namespaces.items() if n in ctx.members)
    for name in sorted(tally.namespaces):
        own = tally.namespaces[name].total_events
        rest = mesh_total - own if name in ctx.members else mesh_total
        if own > 0 and rest > 0 and own > rest:
            where = "in the mesh" if name in ctx.members else "outside the mesh"
            yield (
                f"namespace {name!r} ({where}) alone produced {own} events, more than the rest of the mesh "
                f"({rest})"
            )
    relists = {k: v.lists - 1 for k, v in tally.kinds.items() if v.lists > 1}
    if relists:
        yield (
            "relists forced by 410 Expired during the window: "
            + ", ".join(f"{k} {n}" for k, n in relists.items())
            + " (each moves the whole collection to every istiod again)"
        )


# -- text -----------------------------------------------------------------------------------------------


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover (the loop always returns)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render_text(report: dict[str, Any]) -> str:
    t = report["totals"]
    w = report["window"]
    lines = [
        f"discofilter analyze: {report['server']}, {w['seconds']:.0f} s window"
        + (" (ended early)" if w["ended_early"] else ""),
        f"selectors: {report['selectors']}",
    ]
    if report["mesh_config"]:
        lines.append(f"mesh config: {report['mesh_config']}")
    ns = report["namespaces"]
    lines += [
        f"namespaces: {ns['known']} known, {ns['mesh']} in the mesh",
        "",
        f"{'':24}{'total':>14}{'outside mesh':>16}{'share':>9}",
        f"{'watch events':24}{t['events']:>14}{t['outside_events']:>16}{_pct(t['outside_event_share']):>9}",
        f"{'watch bytes':24}{_size(t['bytes']):>14}{_size(t['outside_bytes']):>16}"
        f"{_pct(t['outside_byte_share']):>9}",
        f"{'LIST objects':24}{t['list_objects']:>14}{t['outside_list_objects']:>16}"
        f"{_pct(_share(t['outside_list_objects'], t['list_objects'])):>9}",
        f"{'LIST bytes':24}{_size(t['list_bytes']):>14}{_size(t['outside_list_bytes']):>16}"
        f"{_pct(t['outside_list_byte_share']):>9}",
        "",
        f"{'kind':16}{'format':>10}{'events':>9}{'bytes':>12}{'LIST objs':>11}{'LIST body':>12}"
        f"{'relists':>9}",
    ]
    for kind, k in report["kinds"].items():
        fmt = "/".join(sorted(set(k["watch_format"]) | set(k["list_format"]))) or "-"
        lines.append(
            f"{kind:16}{fmt:>10}{k['events']:>9}{_size(k['bytes']):>12}{k['list_objects']:>11}"
            f"{_size(k['list_body_bytes']):>12}{k['relists']:>9}"
        )
    for title, key in (
        ("top namespaces by events", "top_by_events"),
        ("top namespaces by bytes", "top_by_bytes"),
    ):
        lines += ["", f"{title}:", f"  {'namespace':32}{'mesh':>6}{'events':>9}{'bytes':>12}"]
        for row in report[key]:
            lines.append(
                f"  {row['namespace']:32}{'yes' if row['mesh'] else 'no':>6}{row['events']:>9}"
                f"{_size(row['bytes']):>12}"
            )
    cpu = report["cpu_estimate"]
    m = cpu["watch_millicores"]
    r = cpu["rates"]
    lo, hi = sorted((m["per_event_rate"], m["per_byte_rate"]))
    lines += [
        "",
        "istiod CPU discofilter would save (ESTIMATE, not measured on this cluster):",
        f"  watch decode: {lo:.1f}-{hi:.1f} millicores ({cpu['outside_watch_events']} events outside the "
        f"mesh; per-event and per-byte rates)",
        f"  a protobuf informer incl. its store: {m['informer_rate']:.1f} millicores",
        f"  each relist or istiod restart: {cpu['relist_cpu_seconds_saved_per_relist']:.3f} CPU-s of decode",
        f"  rates used: JSON {r['json_event_ms']} ms/event vs protobuf {r['protobuf_event_ms']} ms/event; "
        f"LIST {r['json_list_object_ms']} vs {r['protobuf_list_object_ms']} ms/object; informer "
        f"{r['informer_event_us']:.0f} us/event (client-go 1.28, measured against kube-apiserver 1.28)",
    ]
    s = report["server_side_exclusion"]
    chosen = s["namespaces"]
    lines += [
        "",
        f"server-side exclusion at K={s['k']}: {len(chosen)} of {s['namespaces_with_outside_events']} "
        f"namespaces with churn outside the mesh, carrying {_pct(s['share_of_outside_events'])} of it"
        + (f" ({', '.join(chosen[:8])}{' ...' if len(chosen) > 8 else ''})" if chosen else ""),
    ]
    lines += ["", "warnings:" if report["warnings"] else "warnings: none"]
    lines += [f"  - {text}" for text in report["warnings"]]
    me = report.get("self") or {}
    if me:
        lines += [
            "",
            f"analyze itself: {me.get('cpu_seconds', 0):.2f} CPU-s in the window "
            f"({me.get('cpu_seconds_total', 0):.2f} with start-up and LISTs), "
            f"max RSS {me.get('max_rss_mib', 0):.0f} MiB, "
            f"{me.get('cpu_us_per_event', 0):.0f} us CPU per event received",
        ]
    return "\n".join(lines) + "\n"
