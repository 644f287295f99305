"""Tests for discofilter.core.selectors.

Parse cases are taken from apimachinery's own ``pkg/labels/selector_test.go`` (TestSelectorParse,
TestSetSelectorParser, TestSelectorMatches) and from the API server captures in ``tests/data/``, so
that "same as Kubernetes" is checked against Kubernetes rather than against our reading of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from discofilter.core.selectors import (
    DEFAULT_MESH_SELECTORS,
    LabelSelector,
    Operator,
    Requirement,
    SelectorSet,
    parse_selector,
    selector_from_dict,
)
from discofilter.errors import SelectorError

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "apiserver-1.28"


def _req(key: str, operator: Operator, *values: str) -> Requirement:
    return Requirement(key, operator, frozenset(values))


# --- matching -------------------------------------------------------------------------------------------

MATCH_CASES: list[tuple[str, dict[str, str], bool]] = [
    # everything
    ("", {}, True),
    ("", {"x": "y"}, True),
    # = and ==
    ("x=y", {"x": "y"}, True),
    ("x==y", {"x": "y"}, True),
    ("x=y", {"x": "z"}, False),
    ("x=z", {}, False),
    ("x=", {"x": ""}, True),
    ("x=", {}, False),
    ("notin=in", {"notin": "in"}, True),
    # !=: a missing key matches
    ("x!=y", {"x": "z"}, True),
    ("x!=y", {}, True),
    ("x!=y", {"x": "y"}, False),
    ("x!=y,z!=w", {"x": "z", "z": "a"}, True),
    ("x!=y,z!=w", {"x": "z", "z": "w"}, False),
    # in: the key must be present
    ("x in (a,b)", {"x": "b"}, True),
    ("x in (a,b)", {"x": "c"}, False),
    ("x in (a,b)", {}, False),
    ("x in ()", {"x": ""}, True),
    ("x in ()", {"y": "baz"}, False),
    # notin: a missing key matches
    ("x notin (a,b)", {"x": "c"}, True),
    ("x notin (a,b)", {}, True),
    ("x notin (a,b)", {"x": "a"}, False),
    ("x notin ()", {"x": ""}, False),
    ("x notin ()", {"x": "v"}, True),
    # exists and does-not-exist
    ("x", {"x": "z"}, True),
    ("x", {"x": ""}, True),
    ("x", {"y": "z"}, False),
    ("!x", {"y": "z"}, True),
    ("!x", {"x": "z"}, False),
    ("!x", {"x": ""}, False),
    # ANDed requirements (TestSelectorMatches' labelset)
    ("foo=bar,baz=blah", {"foo": "bar", "baz": "blah"}, True),
    ("foo=bar,foobar=bar,baz=blah", {"foo": "bar", "baz": "blah"}, False),
    ("x in (foo),y notin (alpha)", {"x": "foo", "y": "baz"}, True),
    ("x in (foo),y in (alpha)", {"x": "foo", "y": "baz"}, False),
    ("x notin (),y", {"y": ""}, True),
    ("x notin (),!y", {"y": ""}, False),
    # the apimachinery doc example "x in (foo,,baz),y,z notin ()"
    ("x in (foo,,baz),y,z notin ()", {"x": "foo", "y": "any"}, True),
    ("x in (foo,,baz),y,z notin ()", {"x": "", "y": "any"}, True),
    ("x in (foo,,baz),y,z notin ()", {"x": "foo", "y": "any", "z": "v"}, True),
    ("x in (foo,,baz),y,z notin ()", {"x": "foo", "y": "any", "z": ""}, False),
    ("x in (foo,,baz),y,z notin ()", {"x": "other", "y": "any"}, False),
    ("x in (foo,,baz),y,z notin ()", {"x": "foo"}, False),
]


@pytest.mark.parametrize(("text", "labels", "expected"), MATCH_CASES)
def test_matches(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


@pytest.mark.parametrize(
    ("requirement", "labels", "expected"),
    [
        (_req("k", "=", "v"), {"k": "v"}, True),
        (_req("k", "=", "v"), {"k": "w"}, False),
        (_req("k", "!=", "v"), {"k": "w"}, True),
        (_req("k", "!=", "v"), {}, True),
        (_req("k", "!=", "v"), {"k": "v"}, False),
        (_req("k", "in", "v", "w"), {"k": "w"}, True),
        (_req("k", "in", "v", "w"), {}, False),
        (_req("k", "notin", "v", "w"), {}, True),
        (_req("k", "notin", "v", "w"), {"k": "v"}, False),
        (_req("k", "exists"), {"k": ""}, True),
        (_req("k", "exists"), {"j": "k"}, False),
        (_req("k", "!"), {"j": "k"}, True),
        (_req("k", "!"), {"k": ""}, False),
    ],
)
def test_requirement_matches(requirement: Requirement, labels: dict[str, str], expected: bool) -> None:
    assert requirement.matches(labels) is expected


def test_selector_set_is_an_or_and_empty_matches_everything() -> None:
    a, b = parse_selector("a=1"), parse_selector("b")
    both = SelectorSet((a, b))
    assert both.matches({"a": "1"})
    assert both.matches({"b": ""})
    assert not both.matches({"a": "2"})
    assert SelectorSet(()).matches({})
    assert SelectorSet(()).matches({"anything": "x"})
    assert SelectorSet((parse_selector(""),)).matches({"x": "y"})
    assert str(both) == "a=1 | b"


# --- parsing ----------------------------------------------------------------------------------------------

# (input, canonical str) for inputs apimachinery accepts.
PARSE_GOOD: list[tuple[str, str]] = [
    ("", ""),
    ("   ", ""),
    ("x=a,y=b,z=c", "x=a,y=b,z=c"),
    ("x!=a,y=b", "x!=a,y=b"),
    ("x=", "x="),
    ("x= ", "x="),
    ("x=,z= ", "x=,z="),
    ("x= ,z= ", "x=,z="),
    ("!x", "!x"),
    ("! x", "!x"),
    ("x==a", "x=a"),
    ("\rx", "x"),
    ("a ", "a"),
    ("this-is-a-dns.domain.com/key-with-dash", "this-is-a-dns.domain.com/key-with-dash"),
    (
        "this-is-another-dns.domain.com/key-with-dash in (so,what)",
        "this-is-another-dns.domain.com/key-with-dash in (so,what)",
    ),
    (
        "0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)",
        "0.1.2.domain/99 notin (10.10.100.1,tick.tack.clock)",
    ),
    ("foo  in\t (abc)", "foo in (abc)"),
    ("x notin\n (abc)", "x notin (abc)"),
    ("x  notin\t\t\t(abc,def)", "x notin (abc,def)"),
    ("x in (abc,)", "x in (,abc)"),
    ("x in ()", "x in ()"),
    ("x notin ( )", "x notin ()"),
    ("x in (,)", "x in ()"),
    ("x notin (, a)", "x notin (,a)"),
    ("x in (a,,b)", "x in (,a,b)"),
    ("x in (a,,,b)", "x in (,a,b)"),
    ("x notin (abc,,def),bar,z in (),w", "bar,w,x notin (,abc,def),z in ()"),
    ("x,y in (a)", "x,y in (a)"),
    ("x=a,y!=b,z in (h,i,j)", "x=a,y!=b,z in (h,i,j)"),
    ("a in (x,y,notin, z,in)", "a in (in,notin,x,y,z)"),
    ("x=in", "x=in"),
    ("in", "in"),
    ("!notin", "!notin"),
    ("in in (in)", "in in (in)"),
    ("x=a,a=x", "a=x,x=a"),
    ("b,a=1,a", "a=1,a,b"),
    ("a=b,a=b", "a=b"),
    ("a in (b,c), a in (c,b)", "a in (b,c)"),
    ("a in (b,b)", "a in (b)"),
    ("x in (foo,,baz),y,z notin ()", "x in (,baz,foo),y,z notin ()"),
    (f"k={'v' * 63}", f"k={'v' * 63}"),
    (f"{'p' * 253}/{'n' * 63}", f"{'p' * 253}/{'n' * 63}"),
    ("Upper_Case.and-dash=V_1.2-3", "Upper_Case.and-dash=V_1.2-3"),
    ("istio-injection=enabled,istio.io/rev", "istio-injection=enabled,istio.io/rev"),
]


@pytest.mark.parametrize(("text", "canonical"), PARSE_GOOD)
def test_parse_good(text: str, canonical: str) -> None:
    selector = parse_selector(text)
    assert str(selector) == canonical
    assert parse_selector(canonical) == selector


PARSE_BAD: list[str] = [
    # apimachinery TestSelectorParse / TestSetSelectorParser bad strings
    "x=a||y=b",
    "x==a==b",
    "!x=a",
    "x,,y",
    ",x,y",
    "x nott in (y)",
    "a in (xyz),",
    "a in (xyz)b notin ()",
    "a in (xyz abc)",
    "a notin(",
    "a (",
    "(",
    # from the brief and the API server captures
    "app in (a",
    "a b",
    "a,",
    "a in",
    "a in b",
    "a in (a",
    "a in (a,,)",
    "a in (,,)",
    "a=(b)",
    "a=!b",
    "a!==b",
    "!",
    "!!a",
    "=a",
    "===",
    ")",
    "a=b=c",
    # keys: IsQualifiedName
    "A/b",
    "a/b/c",
    "/a",
    "a/",
    "-a",
    "a-",
    "a b/c",
    "k@y",
    "ключ",
    "a\x00b",
    f"{'n' * 64}",
    f"{'p' * 254}/n",
    "bad_prefix/name",
    "Prefix.com/name",
    # values: IsValidLabelValue
    f"k={'v' * 64}",
    f"k in (a,{'v' * 64})",
    "k=-v",
    "k=v-",
    "k=a/b",
    "k=v@",
    "k notin (ok,no!)",
    # comparison operators: valid in apimachinery, deliberately unsupported here
    "x>1",
    "x<5",
    "x>1,z<5",
]


@pytest.mark.parametrize("text", PARSE_BAD)
def test_parse_bad(text: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    message = info.value.message
    # Long inputs are cut short in the message, so compare only the head of the quoted selector.
    assert message.startswith(f"invalid label selector {json.dumps(text)[:100]}")
    assert "\n" not in message
    assert info.value.status_hint == 400


def test_error_message_names_the_problem() -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector("app in (a")
    assert (
        str(info.value) == """invalid label selector "app in (a": found end of string, expected ',' or ')'"""
    )
    with pytest.raises(SelectorError, match=r"found \"b\", expected one of 'in'"):
        parse_selector("a b")
    with pytest.raises(SelectorError, match="longer than 63 characters"):
        parse_selector(f"k={'v' * 64}")
    with pytest.raises(SelectorError, match="operator '>' is not supported"):
        parse_selector("x>1")
    with pytest.raises(SelectorError, match="not a lowercase DNS-1123 subdomain"):
        parse_selector("Example.com/x")


def test_error_message_stays_one_short_line_for_hostile_input() -> None:
    text = "a=\n" + "x" * 10_000
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    assert "\n" not in info.value.message
    assert len(info.value.message) < 600


# --- API server captures -------------------------------------------------------------------------------


def _manifest() -> dict[str, Any]:
    # A missing fixtures folder must fail the run: these tests are the link to the real API server.
    assert FIXTURES.is_dir(), f"fixtures folder missing: {FIXTURES}"
    manifest: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
    return manifest


def test_default_mesh_selectors_agree_with_fixture_namespaces() -> None:
    namespaces = _manifest()["namespaces"]
    assert {name for name, ns in namespaces.items() if ns["mesh"]} == {"mesh-a", "mesh-b", "mesh-rev"}
    assert any(not ns["mesh"] for ns in namespaces.values())
    for name, ns in namespaces.items():
        assert DEFAULT_MESH_SELECTORS.matches(ns["labels"]) is ns["mesh"], name
    assert str(DEFAULT_MESH_SELECTORS) == "istio-injection=enabled | istio.io/rev"


def test_api_server_verdicts_on_captured_label_selectors() -> None:
    captured = [
        (entry["request"]["query"]["labelSelector"], entry["response"]["status"])
        for entry in _manifest()["files"]
        if "labelSelector" in (entry.get("request", {}).get("query") or {})
    ]
    assert {status for _, status in captured} == {200, 400}
    for text, status in captured:
        if status == 400:
            with pytest.raises(SelectorError):
                parse_selector(text)
        else:
            parse_selector(text)


# --- Requirement / LabelSelector construction ---------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "operator", "values"),
    [
        ("x", "in", ()),
        ("x", "notin", ()),
        ("x", "=", ()),
        ("x", "=", ("a", "b")),
        ("x", "!=", ()),
        ("x", "exists", ("a",)),
        ("x", "!", ("a",)),
        ("x", "~", ("a",)),
        ("a" * 254, "exists", ()),
        ("", "exists", ()),
        ("x", "in", ("ok", "not ok")),
    ],
)
def test_requirement_constructor_rejects_invalid(key: str, operator: Any, values: tuple[str, ...]) -> None:
    with pytest.raises(SelectorError, match=r"^invalid label selector requirement: "):
        Requirement(key, operator, frozenset(values))


def test_requirement_constructor_accepts_valid() -> None:
    assert str(_req("1234", "in", "bar")) == "1234 in (bar)"
    assert str(_req("x", "in", "")) == "x in ()"
    assert str(_req("x", "notin", "b", "a", "")) == "x notin (,a,b)"
    assert str(_req("x", "!=", "")) == "x!="
    assert str(_req("x", "!")) == "!x"


def test_label_selector_is_canonical() -> None:
    r1, r2, r3 = _req("b", "exists"), _req("a", "=", "1"), _req("a", "!=", "2")
    s = LabelSelector((r1, r2, r3, r1))
    assert s.requirements == (r3, r2, r1)
    assert s == LabelSelector((r3, r1, r2)) == parse_selector("b, a!=2, a=1")
    assert str(s) == "a!=2,a=1,b"
    assert hash(s) == hash(parse_selector(str(s)))
    assert str(LabelSelector(())) == ""


# --- selector_from_dict ----------------------------------------------------------------------------------

ISTIO_MESH_CONFIG = """
discoverySelectors:
  - matchLabels:
      istio-injection: enabled
  - matchExpressions:
      - key: istio.io/rev
        operator: Exists
  - matchLabels:
      env: prod
    matchExpressions:
      - key: team
        operator: In
        values: [payments, catalog]
      - key: tier
        operator: NotIn
        values:
          - batch
      - key: legacy
        operator: DoesNotExist
"""


def test_selector_from_dict_istio_discovery_selectors() -> None:
    config = yaml.safe_load(ISTIO_MESH_CONFIG)
    selectors = SelectorSet(tuple(selector_from_dict(item) for item in config["discoverySelectors"]))
    assert str(selectors) == (
        "istio-injection=enabled | istio.io/rev"
        " | env=prod,!legacy,team in (catalog,payments),tier notin (batch)"
    )
    assert selectors.matches({"istio-injection": "enabled"})
    assert selectors.matches({"istio.io/rev": "canary"})
    assert selectors.matches({"env": "prod", "team": "payments"})
    assert selectors.matches({"env": "prod", "team": "catalog", "tier": "web"})
    assert not selectors.matches({"env": "prod", "team": "catalog", "tier": "batch"})
    assert not selectors.matches({"env": "prod", "team": "catalog", "legacy": "true"})
    assert not selectors.matches({"env": "prod", "team": "search"})
    assert not selectors.matches({"istio-injection": "disabled"})
    namespaces = _manifest()["namespaces"]
    two = SelectorSet(tuple(selector_from_dict(item) for item in config["discoverySelectors"][:2]))
    assert two == DEFAULT_MESH_SELECTORS
    for ns in namespaces.values():
        assert two.matches(ns["labels"]) is ns["mesh"]


@pytest.mark.parametrize(
    ("obj", "text"),
    [
        ({}, ""),
        ({"matchLabels": {}}, ""),
        ({"matchLabels": None, "matchExpressions": None}, ""),
        ({"matchExpressions": []}, ""),
        ({"matchLabels": {"b": "2", "a": "1"}}, "a=1,b=2"),
        ({"matchLabels": {"a": ""}}, "a="),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x", "x", ""]}]}, "a in (,x)"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": []}]}, "a"),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": None}]}, "!a"),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ("x",)}]}, "a notin (x)"),
    ],
)
def test_selector_from_dict_good(obj: Mapping[str, object], text: str) -> None:
    assert selector_from_dict(obj) == parse_selector(text)


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        ({"matchLabel": {"a": "b"}}, 'unknown field "matchLabel"'),
        ({"matchLabels": ["a"]}, "matchLabels must be a map"),
        ({"matchLabels": {"a": 1}}, 'matchLabels entry "a" must map a string to a string'),
        ({"matchLabels": {"a": None}}, "must map a string to a string"),
        ({"matchLabels": {"A/b": "c"}}, "matchLabels: key"),
        ({"matchLabels": {"a": "x" * 64}}, "longer than 63 characters"),
        ({"matchExpressions": {"key": "a"}}, "matchExpressions must be a list"),
        ({"matchExpressions": ["a"]}, "matchExpressions[0] must be a map"),
        ({"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]}, 'operator "in" is not In'),
        ({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}, "is not In"),
        ({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}, "is not In"),
        ({"matchExpressions": [{"key": "a"}]}, 'operator "None" is not In'),
        ({"matchExpressions": [{"operator": "Exists"}]}, "key must be a string"),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "needs at least one value"),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}, "needs at least one value"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "takes no values"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]}, "values must be a list"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]}, "values must be a list"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "value": "x"}]}, 'unknown field "value"'),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists"}, {"key": "-", "operator": "Exists"}]},
            'matchExpressions[1]: key "-"',
        ),
    ],
)
def test_selector_from_dict_bad(obj: Mapping[str, object], problem: str) -> None:
    with pytest.raises(SelectorError) as info:
        selector_from_dict(obj)
    assert info.value.message.startswith("invalid label selector {")
    assert problem in info.value.message
    assert "\n" not in info.value.message


# --- properties -----------------------------------------------------------------------------------------

# Small pools so that generated labels and selectors collide often; "in"/"notin" exercise the keyword rules.
KEYS = ["a", "b", "in", "notin", "istio.io/rev", "x-1_y.z"]
VALUES = ["", "v", "w", "in", "notin", "enabled"]

OPERATORS: list[Operator] = ["=", "!=", "in", "notin", "exists", "!"]


@st.composite
def requirements(draw: st.DrawFn) -> Requirement:
    key, operator = draw(st.sampled_from(KEYS)), draw(st.sampled_from(OPERATORS))
    count = {"=": (1, 1), "!=": (1, 1), "in": (1, 4), "notin": (1, 4), "exists": (0, 0), "!": (0, 0)}[
        operator
    ]
    values = draw(st.sets(st.sampled_from(VALUES), min_size=count[0], max_size=count[1]))
    return Requirement(key, operator, frozenset(values))


selectors = st.lists(requirements(), max_size=5).map(lambda rs: LabelSelector(tuple(rs)))
label_maps = st.dictionaries(st.sampled_from(KEYS), st.sampled_from([*VALUES, "other"]))

_ABSENT = object()


def reference_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """The selector as set logic: each requirement names the set of allowed observations for its key,
    where an observation is the label's value or _ABSENT; the selector is the intersection."""
    universe: set[object] = {*VALUES, "other", _ABSENT}
    for r in selector.requirements:
        chosen: set[object] = set(r.values)
        allowed_by_operator: dict[str, set[object]] = {
            "=": chosen,
            "in": chosen,
            "!=": universe - chosen,
            "notin": universe - chosen,
            "exists": universe - {_ABSENT},
            "!": {_ABSENT},
        }
        if labels.get(r.key, _ABSENT) not in allowed_by_operator[r.operator]:
            return False
    return True


@given(selectors, label_maps)
def test_round_trip_through_text_keeps_meaning(selector: LabelSelector, labels: dict[str, str]) -> None:
    again = parse_selector(str(selector))
    assert again == selector
    assert str(again) == str(selector)
    assert again.matches(labels) == selector.matches(labels)


@given(selectors, label_maps)
def test_matches_agrees_with_set_logic_reference(selector: LabelSelector, labels: dict[str, str]) -> None:
    assert selector.matches(labels) == reference_matches(selector, labels)


@given(st.lists(selectors, max_size=3), label_maps)
def test_selector_set_agrees_with_reference(members: list[LabelSelector], labels: dict[str, str]) -> None:
    expected = not members or any(reference_matches(s, labels) for s in members)
    assert SelectorSet(tuple(members)).matches(labels) == expected


@given(selectors, st.randoms(use_true_random=False))
def test_any_spelling_parses_to_the_same_selector(selector: LabelSelector, rnd: Any) -> None:
    # Reorder requirements, pad with the whitespace kubectl allows, and use "==" where "=" was printed.
    def ws() -> str:
        return "".join(rnd.choice(" \t\r\n") for _ in range(rnd.randint(0, 2)))

    parts: list[str] = []
    for r in rnd.sample(list(selector.requirements), len(selector.requirements)):
        if r.operator in ("=", "!="):
            op = rnd.choice(["=", "=="]) if r.operator == "=" else "!="
            parts.append(f"{ws()}{r.key}{ws()}{op}{ws()}{next(iter(r.values))}{ws()}")
        elif r.operator in ("in", "notin"):
            values = f"{ws()},{ws()}".join(rnd.sample(sorted(r.values), len(r.values)))
            parts.append(f"{ws()}{r.key} {ws()}{r.operator}{ws()}({ws()}{values}{ws()}){ws()}")
        else:
            parts.append(f"{ws()}{'!' if r.operator == '!' else ''}{ws()}{r.key}{ws()}")
    assert parse_selector(",".join(parts)) == selector


def _as_dict(selector: LabelSelector) -> dict[str, object]:
    names = {"=": "In", "in": "In", "!=": "NotIn", "notin": "NotIn", "exists": "Exists", "!": "DoesNotExist"}
    return {
        "matchExpressions": [
            {"key": r.key, "operator": names[r.operator], "values": sorted(r.values)}
            for r in selector.requirements
        ]
    }


@given(selectors, label_maps)
def test_dict_form_means_the_same(selector: LabelSelector, labels: dict[str, str]) -> None:
    assert selector_from_dict(_as_dict(selector)).matches(labels) == selector.matches(labels)


TOKENS = [
    "a",
    "b",
    "in",
    "notin",
    "=",
    "==",
    "!=",
    "!",
    "(",
    ")",
    ",",
    " ",
    "\t",
    "x.y/z",
    "A/",
    "-",
    ">",
    "1",
]


@given(st.lists(st.sampled_from(TOKENS), max_size=12).map("".join))
def test_arbitrary_text_parses_canonically_or_raises_selector_error(text: str) -> None:
    try:
        selector = parse_selector(text)
    except SelectorError as error:
        assert error.message.startswith("invalid label selector ")
        return
    assert parse_selector(str(selector)) == selector
