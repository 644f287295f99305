"""core.exclusion alone: the plan's bounds, never a mesh namespace, the query text, the re-open rules."""

from __future__ import annotations

from urllib.parse import parse_qs

from hypothesis import given
from hypothesis import strategies as st

from discofilter.core.exclusion import (
    Bounds,
    PageMemory,
    Planner,
    ReopenPolicy,
    excluded_by,
    may_reopen,
    requirement_bytes,
    rewrite_query,
)
from discofilter.core.watchfilter import WatchFilter

NAMES = st.sampled_from([f"ns-{i}" for i in range(30)])


@given(
    candidates=st.sets(NAMES),
    weights=st.dictionaries(NAMES, st.integers(0, 10_000)),
    members=st.sets(NAMES),
    k=st.integers(1, 40),
    budget=st.integers(0, 2000),
)
def test_the_plan_is_bounded_and_never_excludes_a_member(
    candidates: set[str], weights: dict[str, int], members: set[str], k: int, budget: int
) -> None:
    planner = Planner(Bounds(k, budget))
    planner.tally = {ns.encode(): w for ns, w in weights.items()}
    planner.replan(candidates)
    plan = planner.current
    assert set(plan) <= candidates and len(plan) <= k
    assert sum(map(requirement_bytes, plan)) <= budget
    # Membership moved after the plan: a request built now never excludes a member.
    assert not set(planner.for_request(members)) & members


def test_all_fit_then_the_heaviest_and_no_flapping() -> None:
    planner = Planner(Bounds(2, 10_000))
    assert planner.replan({"a", "b"}) and planner.current == ("a", "b")
    planner.replan({"a", "b", "c"})  # no drops seen yet: by name
    planner.tally = {b"c": 1000, b"a": 10}
    planner.replan({"a", "b", "c"})
    assert "c" in planner.current
    before = planner.current
    planner.tally = {}  # excluded namespaces send nothing to drop; their scores stay
    assert not planner.replan({"a", "b", "c"}) and planner.current == before


@given(events=st.lists(st.tuples(NAMES, st.integers(1, 9))), members=st.sets(NAMES), excluded=st.sets(NAMES))
def test_excluding_non_members_never_changes_what_the_filter_keeps(
    events: list[tuple[str, int]], members: set[str], excluded: set[str]
) -> None:
    lines = [
        b'{"type":"MODIFIED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p%d",'
        b'"namespace":"%s","resourceVersion":"%d"}}}\n' % (n, ns.encode(), i + 1)
        for i, (ns, n) in enumerate(events)
    ]
    excluded -= members  # what Planner.for_request guarantees
    everything = WatchFilter(members).feed(b"".join(lines))
    server_side = [ln for ln, (ns, _) in zip(lines, events, strict=True) if ns not in excluded]
    assert WatchFilter(members).feed(b"".join(server_side)) == everything


def test_the_query_ands_the_exclusion_into_the_clients_selector() -> None:
    q = rewrite_query(
        "fieldSelector=status.phase%21%3DFailed&watch=1&resourceVersion=5&sendInitialEvents=true",
        exclude=("a", "b"),
        set_params={"resourceVersion": "9", "sendInitialEvents": None, "allowWatchBookmarks": "true"},
    )
    got = parse_qs(q)
    assert got["fieldSelector"] == ["status.phase!=Failed,metadata.namespace!=a,metadata.namespace!=b"]
    assert excluded_by(got["fieldSelector"][0]) == {"a", "b"}
    assert got["resourceVersion"] == ["9"] and "sendInitialEvents" not in got
    assert got["watch"] == ["1"] and got["allowWatchBookmarks"] == ["true"]
    assert rewrite_query("limit=5", exclude=()) == "limit=5"


def test_reopen_rules() -> None:
    p = ReopenPolicy(min_interval_seconds=60, fresh_seconds=45)
    base = {"now": 100.0, "wanted": ("a",), "active": (), "ordered": True, "last_rv": "7", "last_rv_at": 90.0}
    assert may_reopen(p, **base, last_reopen_at=None) is None  # type: ignore[arg-type]
    assert may_reopen(p, **{**base, "wanted": ()}, last_reopen_at=None) == "same"  # type: ignore[arg-type]
    assert may_reopen(p, **{**base, "ordered": False}, last_reopen_at=None) == "unordered"  # type: ignore[arg-type]
    assert may_reopen(p, **{**base, "last_rv_at": 50.0}, last_reopen_at=None) == "stale"  # type: ignore[arg-type]
    assert may_reopen(p, **base, last_reopen_at=70.0) == "rate_limited"  # type: ignore[arg-type]


def test_pages_keep_their_exclusion_or_expire() -> None:
    pages = PageMemory(capacity=2)
    pages.remember("t1", ("a", "b"))
    assert pages.for_continue("t1", set()) == ("a", "b")
    assert pages.for_continue("t1", {"b"}) == "expired"
    assert pages.for_continue("unknown", set()) is None
    pages.remember("t2", ("c",))
    pages.remember("t3", ("c",))
    assert pages.for_continue("t1", set()) is None  # bounded
