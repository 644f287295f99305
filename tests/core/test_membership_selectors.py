"""Membership when its selectors change (Istio's discoverySelectors edited): the change has no RV."""

from __future__ import annotations

from discofilter.core.membership import Membership
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS, SelectorSet, parse_selector


def ns(name: str, rv: int, **labels: str) -> dict[str, object]:
    return {"metadata": {"name": name, "resourceVersion": str(rv), "labels": labels}}


def test_a_selectors_change_makes_every_earlier_unknown_rv_stale() -> None:
    m = Membership(DEFAULT_MESH_SELECTORS)
    m.replace([ns("a", 1, team="x"), ns("b", 2, **{"istio-injection": "enabled"})], "5")
    gen = m.generation
    assert m.resume_is_current("900", None) and m.resume_is_current("900", "a")
    assert m.set_selectors(SelectorSet((parse_selector("team=x"),))) == {"a", "b"}
    assert m.changed_since(gen, None) and m.changed_since(gen, "a")
    # Pods' RVs run far ahead of the last namespace RV (5): a client at 900 got its state under the
    # old selectors, so it must relist, cluster-wide and in both flipped namespaces.
    assert not m.resume_is_current("900", None)
    assert not m.resume_is_current("900", "a") and not m.resume_is_current("900", "b")
    # A later namespace flip carries a real RV again for what it touches.
    m.apply("MODIFIED", ns("b", 950, team="x"))
    assert m.resume_is_current("960", None) and not m.resume_is_current("940", None)
    assert m.resume_is_current("960", "b")


def test_swapping_in_equal_selectors_changes_nothing() -> None:
    m = Membership(DEFAULT_MESH_SELECTORS)
    m.replace([ns("a", 1, **{"istio-injection": "enabled"})], "5")
    gen = m.generation
    assert m.set_selectors(DEFAULT_MESH_SELECTORS) == frozenset()
    assert m.generation == gen and m.resume_is_current("900", None)
