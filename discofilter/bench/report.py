"""The report ``discofilter bench`` prints (stdout), from ``results.json``'s content.

Its first line is the verdict (``verdict_line``): the answer an operator runs the bench for, before seven
tables of detail; its last lines say where results.json and the plots are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

JsonObj = dict[str, Any]


def _fmt(x: Any, digits: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(headers))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    return out


def verdict_line(r: JsonObj, pngs: Sequence[Path] = ()) -> str:
    """One line: discofilter's NET at the paced rate (does it save more than it costs), the targets met,
    and where the details are. Every number comes from ``r["verdict"]``, i.e. from this run."""
    v = r["verdict"]
    out = Path(r["run"]["out"])
    details = [str(out / "results.json")] + ([str(out / "*.png")] if pngs else [])
    net, go = v["net_at_rate"], v["net_at_rate_client_go_estimate"]
    where = f"at {v['rate']:,.0f} events/s over {v['transport']}"
    if net is None:
        cost = f"the net CPU cost of discofilter {where} was not measured (no CPU samples of the proxy)"
    else:
        saving = (
            f"saves {1 - net:.0%}" if net < 1 else f"saves nothing: {net - 1:.0%} more CPU than without it"
        )
        estimate = f"; {go:.2f}x against client-go's decode cost" if go is not None else ""
        cost = (
            f"discofilter + an istiod-like client through it cost {net:.2f}x of the client alone {where} "
            f"({saving}{estimate})"
        )
    return f"verdict: {cost}; {v['targets_met']} of {v['targets']} targets met; details: {', '.join(details)}"


_PACED_COLUMNS = (
    ("bare-tls-reader", "bare"),
    ("direct", "direct"),
    ("passthrough", "raw"),
    ("naive", "naive"),
    ("discofilter", "disco"),
    ("discofilter-exclusion", "disco+excl"),
)


def _paced_lines(r: JsonObj) -> list[str]:
    """The headline: the paced TLS runs, CPU per upstream event and NET side by side, by rate."""
    p = r["paced"]
    up = p.get("upstream") or {}
    excl = p["exclusion"]
    lines = [
        f"Paced runs over TLS (the upstream: {up.get('scheme', '?')}, {up.get('tls_version', '?')}, "
        f"{up.get('cipher', '?')}; one event per HTTP chunk; {p['seconds']:g} s per run; client model: "
        f"{p['client_model']}); server-side exclusion: "
        + ("runs as discofilter-exclusion" if excl["available"] else str(excl["note"])),
        "CPU per upstream event, us (the proxy's for the proxies; the reader's own for bare and direct):",
    ]
    rows = []
    for e in p["rates"]:
        v = e["variants"]
        achieved = (v.get("direct") or {}).get("achieved_rate")
        rows.append(
            [
                f"{e['rate']:g}",
                _fmt(achieved),
                *(
                    _fmt((v.get(name) or {}).get("cpu_us_per_upstream_event"), 1)
                    for name, _ in _PACED_COLUMNS
                ),
            ]
        )
    lines += _table(["events/s", "achieved", *(h for _, h in _PACED_COLUMNS)], rows)
    lines += [
        "",
        "NET at each rate (proxy + client through it, over the client direct) and proxy CPU / bare reader:",
    ]
    rows = []
    for e in p["rates"]:
        net, vb = e["net"], e["proxy_cpu_vs_bare_reader"]
        row = [f"{e['rate']:g}"]
        for name, _ in _PACED_COLUMNS[2:]:
            n = net.get(name) or {}
            row.append(f"{_fmt(n.get('measured'), 2)} / {_fmt(n.get('client_go_estimate'), 2)}")
        for name, _ in _PACED_COLUMNS[2:]:
            row.append(_fmt(vb.get(name), 2))
        rows.append(row)
    heads = [f"NET {h} (py/go)" for _, h in _PACED_COLUMNS[2:]] + [f"{h}/bare" for _, h in _PACED_COLUMNS[2:]]
    lines += _table(["events/s", *heads], rows)
    lines.append(
        "  (py: the Python client model measured; go: the client charged client-go's 0.24 ms per 20 KB of "
        "JSON received instead; goal: NET <= 0.25 and disco/bare <= 0.25 at the headline rate)"
    )
    return lines


def _relist_lines(r: JsonObj) -> list[str]:
    """Relists per kind of membership change, as the clients counted them."""
    x = r["relists"]
    lines = [
        f"Relists per membership change ({x['changes_per_kind']} of each kind, against the simulated API "
        f"server; {x['watches_per_client']} watches per client; counted by the clients: LISTs after their "
        "first, 410s received, and the relist LISTs' MB; simapi LISTs from its request log, all clients):",
    ]
    rows = []
    for kind in x["kinds"].values():
        row = [kind["label"], _fmt(kind["changes"])]
        for v in x["variants"]:
            c = kind["variants"][v]
            row += [
                _fmt(c["relists"]),
                _fmt(c["relists_per_watch_per_change"], 2),
                _fmt(c["expired_410"]),
                _fmt(c["relist_bytes"] / 1e6, 2),
            ]
        rows.append([*row, _fmt(kind["simapi_lists"])])
    short = {"discofilter": "disco", "passthrough": "raw"}
    heads = [h for v in x["variants"] for h in (f"{short.get(v, v)} relists", "/watch/change", "410s", "MB")]
    lines += _table(["change", "changes", *heads, "simapi LISTs"], rows)
    return lines


def render(r: JsonObj) -> str:
    w, s, m = r["workload"], r["stream"], r["machine"]
    v = r["variants"]
    lines = [
        f"discofilter bench: {w['namespaces']} namespaces ({w['mesh_namespaces']} in the mesh), "
        f"{w['pods']:,} pods, seed {w['seed']}",
        f"stream: {s['events']:,} events, {s['bytes'] / 1e6:,.1f} MB, {s['mesh_events']:,} "
        f"({s['mesh_events'] / s['events']:.1%}) in mesh namespaces",
        f"machine: {m['cpu_model']}, {m['cores']} cores, Python {m['python']}; client decode model: "
        f"{r['decode_model']}",
        "",
        "Saturation: the recorded stream replayed as fast as each variant takes it (median of "
        f"{r['run']['trials']} trials); proxy and client CPU per event of the stream:",
    ]
    rows = []
    for name in ("direct", "passthrough", "naive", "discofilter"):
        x = v[name]
        rows.append(
            [
                name,
                _fmt(x["events_per_s"]),
                _fmt(x["mb_per_s"], 1),
                _fmt(x["proxy_cpu_us_per_event"], 1),
                _fmt(x["proxy_cpu_util"], 2),
                _fmt(x["client_cpu_util"], 2),
                _fmt(x["peak_rss_mb"], 0),
                _fmt(x["client_events"]),
                _fmt(x["client_bytes"] / 1e6, 1),
                _fmt(x["client_cpu_us_per_event"], 0),
            ]
        )
    headers = ["variant", "events/s", "MB/s", "proxy us/ev", "proxy CPU", "client CPU", "RSS MB"]
    lines += _table([*headers, "client ev", "client MB", "client us/ev"], rows)
    lines += [
        "",
        f"Latency at {r['run']['rate']:g} events/s, one run per proxy beside a direct client: commit in the "
        "API server to arrival at the client in the steady first half; added = minus the same event's "
        "arrival at the direct client; then during namespace label flips:",
    ]
    rows = []
    for name in ("direct", "passthrough", "naive", "discofilter"):
        x = v[name]
        rows.append(
            [
                name,
                _fmt(x["live_rate_achieved"]),
                _fmt(x["latency_p50_ms"], 2),
                _fmt(x["latency_p99_ms"], 2),
                _fmt(x["latency_max_ms"], 1),
                _fmt(x["added_latency_p50_ms"], 2),
                _fmt(x["added_latency_p99_ms"], 2),
                _fmt(x["flip_latency_p99_ms"], 1),
                _fmt(x["flip_latency_max_ms"], 1),
                _fmt(x["live_relists"]),
                _fmt(x["live_list_bytes"] / 1e6, 1),
                _fmt(x["peak_rss_latency_mb"], 0),
            ]
        )
    headers = ["variant", "written/s", "p50 ms", "p99 ms", "max ms", "+p50 ms", "+p99 ms"]
    lines += _table([*headers, "flips p99", "flips max", "relists", "list MB", "RSS MB"], rows)
    lines += ["", *_relist_lines(r)]
    lines += ["", *_paced_lines(r)]
    lines += ["", "Every event kept (selector matching every namespace):"]
    ak = r["all_kept"]
    lines += _table(
        ["variant", "events/s", "MB/s", "proxy us/ev", "client ev"],
        [
            [
                n,
                _fmt(ak[n]["events_per_s"]),
                _fmt(ak[n]["mb_per_s"], 1),
                _fmt(ak[n]["proxy_cpu_us_per_event"], 1),
                _fmt(ak[n]["client_events"]),
            ]
            for n in ("passthrough", "naive", "discofilter")
        ],
    )
    rp = r["receive_path"]
    lines += [
        "",
        "aiohttp receive path alone (the client reading the pump and dropping the bytes): "
        f"{_fmt(rp['events_per_s'])} events/s, {_fmt(rp['mb_per_s'], 1)} MB/s, "
        f"{_fmt(rp['client_cpu_us_per_event'], 1)} us CPU per event (client CPU "
        f"{_fmt(rp['client_cpu_util'], 2)} of a core): no client reading through aiohttp, and so neither "
        "the passthrough nor the naive proxy, gets through the stream faster on this host "
        "(discofilter reads filtered watches with its own reader, discofilter/watchconn.py).",
    ]
    ra, net = r["ratios"], r["net"]
    lines += [
        "",
        "Ratios:",
        f"  events/s discofilter/raw {_fmt(ra['throughput_discofilter_vs_raw'], 2)} (every event kept: "
        f"{_fmt(ra['throughput_all_kept_discofilter_vs_raw'], 2)}), discofilter/naive "
        f"{_fmt(ra['throughput_discofilter_vs_naive'], 2)} (every event kept: "
        f"{_fmt(ra['throughput_all_kept_discofilter_vs_naive'], 2)})",
        f"  proxy CPU per event discofilter/raw {_fmt(ra['cpu_per_event_discofilter_vs_raw'], 2)}, "
        f"discofilter/naive {_fmt(ra['cpu_per_event_discofilter_vs_naive'], 2)}",
        "  NET = (proxy CPU + client CPU through it) / client CPU direct, on the same stream "
        "(goal <= 0.3 at 10% mesh):",
    ]
    for name in ("passthrough", "naive", "discofilter"):
        n = net[name]
        lines.append(
            f"    {name:12s} at saturation: measured {_fmt(n['measured'], 3)}, client-go estimate "
            f"{_fmt(n['client_go_estimate'], 3)};  latency run at {r['run']['rate']:g} events/s (simapi, "
            "CPU sampled by psutil): measured "
            f"{_fmt(n['at_rate_measured'], 3)}, client-go estimate {_fmt(n['at_rate_client_go_estimate'], 3)}"
        )
    lines.append(
        f"    (measured: the Python client's CPU with the {r['decode_model']} decode model; "
        "client-go estimate: 0.24 ms per 20 KB of JSON received, REFERENCE.md)"
    )
    lines += ["", "Core micro-benchmark (WatchFilter.feed_joined alone, 64 KiB reads; best of runs):"]
    core_rows = []
    for name, c in r["core"].items():
        core_rows.append(
            [
                name,
                _fmt(c["mean_event_bytes"] / 1e3, 1),
                _fmt(c["watchfilter"]["events_per_s"]),
                _fmt(c["watchfilter"]["gb_per_s"], 2),
                _fmt(c["orjson_parse"]["events_per_s"]),
                _fmt(c["copy"]["gb_per_s"], 2),
                _fmt(c["scan_copy"]["gb_per_s"], 2),
                _fmt(c["filter_vs_scan_copy"], 2),
                _fmt(c["filter_vs_parse"], 1),
            ]
        )
    lines += _table(
        [
            "corpus",
            "KB/event",
            "filter ev/s",
            "filter GB/s",
            "orjson ev/s",
            "copy GB/s (ceiling)",
            "scan+copy GB/s (floor)",
            "filter/floor",
            "filter/parse",
        ],
        core_rows,
    )
    lines += ["", "Targets:"]
    for t in r["targets"]:
        verdict = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        lines.append(f"  [{verdict:7s}] {t['target']}: {_fmt(t['value'], 3)} (goal {t['goal']})")
    exp = r["expected"]
    lines += [
        "",
        f"Check: discofilter's client got {v['discofilter']['client_events']:,} events; the generator's log "
        f"says {exp['discofilter_client_events']:,} were in mesh namespaces "
        f"({'exact' if exp['discofilter_exact'] else 'MISMATCH'}).",
        f"Run took {r['elapsed_s']:.0f} s.",
    ]
    return "\n".join(lines)
