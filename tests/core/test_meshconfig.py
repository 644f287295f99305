"""Tests for discofilter.core.meshconfig on real Istio mesh configs (tests/data/meshconfig/README.md).

Expected selectors are written by hand in kubectl syntax and parsed by the other parser
(``parse_selector``), so a mistake in the dict path cannot hide behind itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from discofilter.core.meshconfig import EVERY_NAMESPACE, MeshSelectors, parse_mesh_config
from discofilter.core.selectors import SelectorSet, parse_selector
from discofilter.errors import ConfigError, MeshConfigError

DATA = Path(__file__).resolve().parent.parent / "data" / "meshconfig"


def sample(name: str) -> str:
    return (DATA / name).read_text()


def expect(*texts: str) -> SelectorSet:
    return SelectorSet(tuple(parse_selector(t) for t in texts))


def test_the_installers_istio_configmap_has_no_selectors_so_every_namespace() -> None:
    cm = yaml.safe_load(sample("istio-configmap-pilot-default.yaml"))
    got = parse_mesh_config(cm["data"]["mesh"], source="istio-system/istio")
    assert got == EVERY_NAMESPACE
    assert got.selects_everything and not got.configured
    assert got.selectors.matches({}) and got.selectors.matches({"anything": "at-all"})


def test_istio_api_example_with_match_expressions() -> None:
    got = parse_mesh_config(sample("api-config-proto-example.yaml"), source="api")
    assert got.selectors == expect("env=prod,region=us-east1", "app in (cassandra,spark)")
    assert got.configured and not got.selects_everything
    # What the proto comment promises, namespace by namespace.
    assert got.selectors.matches({"env": "prod", "region": "us-east1", "team": "x"})
    assert not got.selectors.matches({"env": "prod"})  # matchLabels are ANDed
    assert got.selectors.matches({"app": "spark"})  # selectors are ORed
    assert not got.selectors.matches({"app": "kafka"})


def test_istio_io_scoping_example_ors_two_match_labels() -> None:
    got = parse_mesh_config(sample("istio-io-configuration-scoping.yaml"), source="docs")
    assert got.selectors == expect("istio-discovery=enabled", "kubernetes.io/metadata.name=kube-system")
    assert got.selectors.matches({"kubernetes.io/metadata.name": "kube-system"})
    assert not got.selectors.matches({"kubernetes.io/metadata.name": "default"})


def test_istio_io_blog_example() -> None:
    got = parse_mesh_config(sample("istio-io-blog-discovery-selectors.yaml"), source="blog")
    assert got.selectors == expect("istio-discovery=enabled")


def test_every_operator_of_match_expressions() -> None:
    text = """
    discoverySelectors:
    - matchLabels: {tier: mesh}
      matchExpressions:
      - {key: env, operator: NotIn, values: [dev, test]}
      - {key: istio.io/rev, operator: Exists}
      - {key: opt-out, operator: DoesNotExist}
    """
    got = parse_mesh_config(text, source="t")
    assert got.selectors == expect("tier=mesh,env notin (dev,test),istio.io/rev,!opt-out")
    assert got.selectors.matches({"tier": "mesh", "istio.io/rev": "canary"})
    assert got.selectors.matches({"tier": "mesh", "istio.io/rev": "", "env": "prod"})
    assert not got.selectors.matches({"tier": "mesh", "istio.io/rev": "1-22", "env": "dev"})
    assert not got.selectors.matches({"tier": "mesh", "istio.io/rev": "1-22", "opt-out": "yes"})
    assert not got.selectors.matches({"tier": "mesh"})


@pytest.mark.parametrize(
    "text",
    ["", "# only a comment\n", "discoverySelectors: []", "discoverySelectors:", "trustDomain: cluster.local"],
)
def test_no_selectors_means_every_namespace(text: str) -> None:
    assert parse_mesh_config(text, source="t") == EVERY_NAMESPACE


def test_an_empty_selector_admits_every_namespace() -> None:
    got = parse_mesh_config("discoverySelectors:\n- {}\n- matchLabels: {a: b}\n", source="t")
    assert got.configured and got.selects_everything
    assert got.selectors.matches({"unrelated": "x"})
    assert "every namespace" in got.describe()


def test_unknown_top_level_fields_are_ignored_as_istiod_does() -> None:
    text = "someFutureIstioField: {x: 1}\ndiscoverySelectors:\n- matchLabels: {a: b}\n"
    assert parse_mesh_config(text, source="t").selectors == expect("a=b")


def test_bytes_are_accepted() -> None:
    assert parse_mesh_config(b"discoverySelectors: [{matchLabels: {a: b}}]", source="t").selectors == expect(
        "a=b"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("discoverySelectors: [", "not valid YAML"),
        ("- a\n- b\n", "must be a YAML map, not a list"),
        ("just a string", "must be a YAML map, not str"),
        ("discoverySelectors: {matchLabels: {a: b}}", "must be a list of label selectors, not a map"),
        ("discoverySelectors:\n-\n", "discoverySelectors[0] must be a map"),
        ("discoverySelectors: [{matchLabel: {a: b}}]", 'unknown field "matchLabel"'),
        ("discoverySelectors: [{matchExpressions: [{key: a, operator: Gt, values: ['1']}]}]", "Gt"),
        ("discoverySelectors: [{matchExpressions: [{key: a, operator: In}]}]", "at least one value"),
        ("discoverySelectors: [{matchExpressions: [{key: a, operator: Exists, values: [x]}]}]", "no values"),
        ("discoverySelectors: [{matchLabels: {'bad key!': x}}]", "bad key!"),
        # YAML 1.1: an unquoted yes is a boolean, which Go's map<string,string> refuses too.
        ("discoverySelectors: [{matchLabels: {enabled: yes}}]", "string to a string"),
    ],
)
def test_invalid_mesh_configs_are_refused_with_the_source_named(text: str, problem: str) -> None:
    with pytest.raises(MeshConfigError) as err:
        parse_mesh_config(text, source="/etc/istio/config/mesh")
    assert isinstance(err.value, ConfigError)
    assert "/etc/istio/config/mesh" in err.value.message
    assert problem in err.value.message
    assert "\n" not in err.value.message


def test_second_selector_error_names_its_index() -> None:
    with pytest.raises(MeshConfigError, match=r"discoverySelectors\[1\]"):
        parse_mesh_config("discoverySelectors: [{matchLabels: {a: b}}, {matchLabels: {a: [x]}}]", source="t")


def test_mesh_selectors_describe() -> None:
    assert "no discoverySelectors" in EVERY_NAMESPACE.describe()
    assert "a=b" in MeshSelectors(expect("a=b"), configured=True).describe()
