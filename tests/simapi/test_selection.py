"""Selectors as the API server reads them: Go's label-selector syntax errors, field selectors."""

from __future__ import annotations

import pytest

from discofilter.simapi import ApiError
from discofilter.simapi.resources import RESOURCES
from discofilter.simapi.selection import label_selector_syntax_error, make_filter, parse_field_selector
from tests.simapi.conftest import capture

PODS = RESOURCES["pods"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # The captured answer (error-400-labelselector.json).
        ("app in (a", "unable to parse requirement: found '', expected: ',' or ')'"),
        # The other branches of selector.go's parser (Kubernetes 1.28), read off its source.
        ("a,,b", "found ',', expected: identifier after ','"),
        ("=x", "found '=', expected: !, identifier, or 'end of string'"),
        ("app in a", "unable to parse requirement: found 'a' expected: '('"),
        ("app x", "unable to parse requirement: found 'x', expected: in, notin, =, ==, !=, gt, lt"),
        ("!a=b", "found '=', expected: ',' or 'end of string'"),
        ("app==x y", "found 'y', expected: ',' or 'end of string'"),
        ("app in (a b)", "unable to parse requirement: found 'b', expected: ',' or ')'"),
        ("app=(", "unable to parse requirement: found '(', expected: identifier"),
    ],
)
def test_label_selector_syntax_errors_read_like_go(text: str, message: str) -> None:
    assert label_selector_syntax_error(text) == message
    with pytest.raises(ApiError) as refused:
        make_filter(PODS, text, None)
    assert refused.value.code == 400 and refused.value.message == message


@pytest.mark.parametrize(
    "text", ["app=checkout", "app in (a,b),!x", "tier notin (x),env", "app==a,b!=c", "a=", ""]
)
def test_valid_label_selectors(text: str) -> None:
    assert label_selector_syntax_error(text) is None
    make_filter(PODS, text, None)


def test_semantic_errors_come_from_the_core_parser() -> None:
    with pytest.raises(ApiError) as refused:
        make_filter(PODS, "-bad-key=x", None)
    assert refused.value.message.startswith("unable to parse requirement: ")


def test_field_selectors() -> None:
    pods = capture("list-pods.json")["items"]
    running = make_filter(PODS, None, "status.phase!=Failed,spec.nodeName=ip-10-0-1-11.ec2.internal")
    assert sum(running.matches(p) for p in pods) == 5
    named = make_filter(PODS, "app=checkout", "metadata.namespace==mesh-a")
    assert [p["metadata"]["name"] for p in pods if named.matches(p)] == [
        "checkout-d8fdjt9jxq-6sfbt",
        "checkout-d8fdjt9jxq-gcf2n",
    ]
    assert parse_field_selector(r"metadata.name=a\,b", PODS)[0].value == "a,b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("spec.foo=bar", "field label not supported: spec.foo"),
        ("metadata.name", "invalid selector: 'metadata.name'; can't understand 'metadata.name'"),
        (r"metadata.name=a\x", r"invalid field selector: invalid escape sequence: \x"),
        ("metadata.name=a=b", "invalid field selector: unescaped character in value: 61"),
    ],
)
def test_field_selector_errors(text: str, message: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_field_selector(text, PODS)
    assert refused.value.message == message


def test_each_type_has_its_own_field_labels() -> None:
    parse_field_selector("status.phase=Active", RESOURCES["namespaces"])
    parse_field_selector("type=Opaque", RESOURCES["secrets"])
    with pytest.raises(ApiError):
        parse_field_selector("status.phase=Running", RESOURCES["services"])
