"""Istio mesh config text -> the ``discoverySelectors`` istiod applies, with istiod's own semantics.

The input is what istiod reads: the ``mesh`` key of the ``istio`` ConfigMap, mounted at
``/etc/istio/config/mesh`` or read from the API server. Only ``discoverySelectors`` matters here; every
other field is ignored, as istiod itself ignores fields it does not know (``protomarshal.ApplyYAML``
falls back to ``AllowUnknownFields``, istio ``pkg/util/protomarshal``), so a newer Istio's mesh config
never stops discofilter.

Semantics, as read in istio ``pkg/kube/namespace/filter.go`` (commit 0098d99f) and the field's
documentation in istio/api ``mesh/v1alpha1/config.proto``:
- The list is ORed; inside one selector ``matchLabels`` and ``matchExpressions`` are ANDed
  (``LabelSelectorAsSelector``, operators In, NotIn, Exists, DoesNotExist).
- No ``discoverySelectors``, or an empty list, means every namespace (``len(selectors) == 0``).
- An empty selector ``{}`` is ``labels.Everything()``: one such entry admits every namespace.
- istiod's own namespace gets no exception: the filter admits it only if a selector matches it.
  Cluster-scoped objects always pass, which concerns discofilter not at all (it filters namespaced
  collections only).
- An invalid selector makes istiod log an error and keep its previous filter state (``selectorsChanged``
  returns early); at start-up that state is "no selectors", i.e. every namespace.

Deliberate difference: an unknown field inside a selector (``matchLabel:``) is refused here. istiod would
drop it silently and so widen that selector to ``{}``, every namespace; that is almost surely a typo, so
discofilter stops with a message (at start-up) or keeps its last good selectors (while running) rather
than guess. See ``core.selectors.selector_from_dict``.

Rule 1: no I/O. Every failure raises ``MeshConfigError`` with a one-line message naming the source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from discofilter.core.selectors import SelectorSet, selector_from_dict
from discofilter.errors import MeshConfigError, SelectorError

FIELD: Final = "discoverySelectors"


@dataclass(frozen=True, slots=True)
class MeshSelectors:
    """The discoverySelectors of one mesh config version, and whether that version set any."""

    selectors: SelectorSet
    """As written, in order; empty when the field is absent or empty (istiod: every namespace)."""
    configured: bool
    """Whether the mesh config had a non-empty ``discoverySelectors`` list."""

    @property
    def selects_everything(self) -> bool:
        """True when istiod discovers every namespace: no selectors, or one empty selector ``{}``."""
        return not self.selectors.selectors or any(not s.requirements for s in self.selectors.selectors)

    def describe(self) -> str:
        if not self.configured:
            return "no discoverySelectors (istiod discovers every namespace)"
        if self.selects_everything:
            return f"discoverySelectors {self.selectors} (an empty selector: every namespace)"
        return f"discoverySelectors {self.selectors}"


EVERY_NAMESPACE: Final = MeshSelectors(SelectorSet(()), configured=False)
"""istiod's default mesh config (no ConfigMap at all, ``kubemesh.ReadConfigMap(nil)``): no selectors."""


def parse_mesh_config(text: str | bytes, *, source: str) -> MeshSelectors:
    """Read ``discoverySelectors`` out of mesh config YAML. ``source`` names the input in errors."""
    try:
        doc: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MeshConfigError(f"mesh config {source} is not valid YAML: {yaml_problem(exc)}") from exc
    if doc is None:
        # An empty document: istiod applies its defaults, which have no discoverySelectors.
        return EVERY_NAMESPACE
    if not isinstance(doc, Mapping):
        raise MeshConfigError(f"mesh config {source} must be a YAML map, not {kind(doc)}")
    raw = doc.get(FIELD)
    if raw is None:
        return EVERY_NAMESPACE
    if not isinstance(raw, list):
        raise MeshConfigError(
            f"mesh config {source}: {FIELD} must be a list of label selectors, not {kind(raw)}"
        )
    selectors = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            # A null entry is labels.Nothing() to istiod's converter but has no clear meaning in YAML
            # (a stray "-"); refuse it rather than guess.
            raise MeshConfigError(
                f"mesh config {source}: {FIELD}[{index}] must be a map with matchLabels and/or "
                f"matchExpressions, not {kind(entry)}"
            )
        try:
            selectors.append(selector_from_dict(entry))
        except SelectorError as exc:
            raise MeshConfigError(f"mesh config {source}: {FIELD}[{index}]: {exc.message}") from exc
    return MeshSelectors(SelectorSet(tuple(selectors)), configured=bool(selectors))


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message on one line: the problem and where. Its own text spans lines (problem, then a
    mark with a code snippet) and names the input ``<byte string>``, which the caller names better."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{exc.problem}{at}"
    if isinstance(exc, yaml.reader.ReaderError):
        return f"{exc.reason} (byte {exc.position})"
    return " ".join(str(exc).split())


def kind(value: object) -> str:
    """What a YAML value is, in words, for messages."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a map"
    return f"{type(value).__name__} {value!r:.60}"
