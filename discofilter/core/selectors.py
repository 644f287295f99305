"""Kubernetes label selectors: parse, print and match them exactly as the API server does.

discofilter decides mesh membership with the same selectors istiod uses (meshConfig.discoverySelectors),
so a selector here must mean what it means to apimachinery: ``pkg/labels/selector.go`` for the kubectl
text form and ``metav1.LabelSelectorAsSelector`` for the ``matchLabels``/``matchExpressions`` form. A
disagreement would make discofilter hide objects istiod expects, or pass on churn it should drop.

Invariants:
- Rule 1: no I/O; pure functions and frozen dataclasses only.
- Every ``Requirement`` is valid: its constructor checks the key (``IsQualifiedName``), the values
  (``IsValidLabelValue``) and the value count for its operator, and raises ``SelectorError`` otherwise.
- ``LabelSelector.requirements`` is always sorted canonically with duplicates removed, so equal selectors
  compare equal, print equally, and ``parse_selector(str(s)) == s``.
- Every failure to parse or convert raises ``SelectorError`` with a one-line message quoting the input.

Deliberate differences from apimachinery: ``==`` becomes ``=`` (same meaning); the ``<``/``>`` operators
are rejected because ``Operator`` cannot hold them and no mesh selector needs integer comparisons; a NUL
character is rejected, where Go's lexer silently takes it as the end of the string and drops the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, NoReturn, get_args

from discofilter.errors import SelectorError

Operator = Literal["=", "!=", "in", "notin", "exists", "!"]

_OPERATORS: Final = frozenset(get_args(Operator))
# metav1.LabelSelectorOperator spellings; the dict form has no equality operators (matchLabels covers them).
_DICT_OPERATORS: Final[Mapping[str, Operator]] = {
    "In": "in",
    "NotIn": "notin",
    "Exists": "exists",
    "DoesNotExist": "!",
}
# validation.go's qualifiedNameFmt (also the non-empty label value format) and dns1123SubdomainFmt.
_NAME_RE: Final = re.compile(r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_NAME_RULE: Final = "alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
_DNS1123_LABEL: Final = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_RE: Final = re.compile(rf"{_DNS1123_LABEL}(?:\.{_DNS1123_LABEL})*")
# The tokens of selector.go's Lexer. Only these four whitespace characters separate tokens; anything else
# (NUL included) becomes part of a word and is then refused by key or value validation.
_TOKEN_RE: Final = re.compile(r"[ \t\r\n]*(?:(==|!=|[=!(),<>])|([^ \t\r\n=!(),<>]+))")
# A selector can arrive in a client's query string: bound what an error message repeats back.
_MAX_QUOTED: Final = 200

_Fail = Callable[[str], NoReturn]


def _quote(text: str) -> str:
    # JSON escaping keeps messages on one line whatever the input holds.
    return json.dumps(text[:_MAX_QUOTED]) + ("..." if len(text) > _MAX_QUOTED else "")


def _key_problem(key: str) -> str | None:
    """validation.IsQualifiedName: an optional DNS-1123 subdomain prefix and '/', then a name."""
    prefix, slash, name = key.rpartition("/")
    if "/" in prefix:
        reason = "has more than one '/'"
    elif slash and not prefix:
        reason = "has an empty prefix before '/'"
    elif len(prefix) > 253:
        reason = "has a prefix longer than 253 characters"
    elif prefix and not _DNS1123_SUBDOMAIN_RE.fullmatch(prefix):
        reason = "has a prefix that is not a lowercase DNS-1123 subdomain"
    elif not name:
        reason = "has an empty name"
    elif len(name) > 63:
        reason = "has a name longer than 63 characters"
    elif not _NAME_RE.fullmatch(name):
        reason = f"must be {_NAME_RULE}"
    else:
        return None
    return f"key {_quote(key)} {reason}"


def _requirement_problem(key: str, operator: str, values: frozenset[str]) -> str | None:
    """What makes this requirement invalid, as labels.NewRequirement sees it; None when it is valid."""
    if operator not in _OPERATORS:
        return f"unknown operator {_quote(operator)}"
    if (problem := _key_problem(key)) is not None:
        return problem
    if operator in ("exists", "!") and values:
        return f"operator {operator!r} on key {_quote(key)} takes no values"
    if operator in ("=", "!=") and len(values) != 1:
        return f"operator {operator!r} on key {_quote(key)} needs exactly one value"
    if operator in ("in", "notin") and not values:
        return f"operator {operator!r} on key {_quote(key)} needs at least one value"
    for value in sorted(values):
        if len(value) > 63:
            return f"value {_quote(value)} is longer than 63 characters"
        if value and not _NAME_RE.fullmatch(value):
            return f"value {_quote(value)} must be empty or {_NAME_RULE}"
    return None


def _checked(
    key: str, operator: Operator, values: frozenset[str], fail: _Fail, where: str = ""
) -> Requirement:
    # Checking before constructing lets the message name the whole selector, not just one requirement.
    if (problem := _requirement_problem(key, operator, values)) is not None:
        fail(where + problem)
    return Requirement(key, operator, values)


@dataclass(frozen=True, slots=True)
class Requirement:
    """One ``key <operator> values`` condition. ``values`` is empty for ``exists`` and ``!``."""

    key: str
    operator: Operator
    values: frozenset[str]

    def __post_init__(self) -> None:
        if (problem := _requirement_problem(self.key, self.operator, self.values)) is not None:
            raise SelectorError(f"invalid label selector requirement: {problem}")

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "exists":
            return self.key in labels
        if self.operator == "!":
            return self.key not in labels
        value = labels.get(self.key)
        if value is None:
            # apimachinery: a missing key satisfies the negative operators only.
            return self.operator in ("!=", "notin")
        return (value in self.values) == (self.operator in ("=", "in"))

    def __str__(self) -> str:
        if self.operator == "exists":
            return self.key
        if self.operator == "!":
            return "!" + self.key
        if self.operator in ("=", "!="):
            (value,) = self.values
            return f"{self.key}{self.operator}{value}"
        return f"{self.key} {self.operator} ({','.join(sorted(self.values))})"


def _sort_key(requirement: Requirement) -> tuple[str, str, tuple[str, ...]]:
    # apimachinery sorts by key alone; the rest makes the order total so str() is fully deterministic.
    return (requirement.key, requirement.operator, tuple(sorted(requirement.values)))


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """Requirements that must all hold. No requirements matches every label set."""

    requirements: tuple[Requirement, ...]

    def __post_init__(self) -> None:
        # Canonical order is what lets equality and str() ignore how the selector was written.
        object.__setattr__(self, "requirements", tuple(sorted(set(self.requirements), key=_sort_key)))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)


@dataclass(frozen=True, slots=True)
class SelectorSet:
    """ORed list of selectors, same semantics as Istio meshConfig.discoverySelectors.

    An empty list selects every namespace, as istiod does when discoverySelectors is unset.
    """

    selectors: tuple[LabelSelector, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return not self.selectors or any(selector.matches(labels) for selector in self.selectors)

    def __str__(self) -> str:
        return " | ".join(str(selector) for selector in self.selectors)


_Token = tuple[str, str]  # (kind, literal); kind is the symbol itself, "id", "in", "notin" or "end"


class _Parser:
    """A port of selector.go's Parser, so that odd inputs such as ``k in (a,,)`` fail or pass as there."""

    def __init__(self, text: str) -> None:
        self._text = text
        # Every character is whitespace, a symbol or part of a word, so findall skips only whitespace.
        self._tokens: list[_Token] = [
            (symbol, symbol) if symbol else (word if word in ("in", "notin") else "id", word)
            for symbol, word in _TOKEN_RE.findall(text)
        ]
        self._tokens.append(("end", ""))
        self._pos = 0

    def _fail(self, problem: str) -> NoReturn:
        raise SelectorError(f"invalid label selector {_quote(self._text)}: {problem}")

    def _unexpected(self, token: _Token, expected: str) -> NoReturn:
        found = "end of string" if token[0] == "end" else _quote(token[1])
        self._fail(f"found {found}, expected {expected}")

    def _peek(self) -> _Token:
        # Outside operator position "in" and "notin" are plain words, e.g. the value in "x=in".
        kind, literal = self._tokens[self._pos]
        return ("id" if kind in ("in", "notin") else kind), literal

    def _take(self) -> _Token:
        token = self._peek()
        self._pos += 1
        return token

    def parse(self) -> list[Requirement]:
        if self._peek()[0] == "end":
            return []
        requirements: list[Requirement] = []
        while True:
            requirements.append(self._requirement())
            token = self._take()
            if token[0] == "end":
                return requirements
            if token[0] != ",":
                self._unexpected(token, "',' or end of string")

    def _requirement(self) -> Requirement:
        token = self._take()
        negated = token[0] == "!"
        if negated:
            token = self._take()
        if token[0] != "id":
            self._unexpected(token, "a label key")
        key = token[1]
        if (problem := _key_problem(key)) is not None:
            self._fail(problem)
        if negated or self._peek()[0] in (",", "end"):
            return Requirement(key, "!" if negated else "exists", frozenset())
        kind, literal = self._tokens[self._pos]  # raw: here "in" and "notin" are operators
        self._pos += 1
        operator: Operator
        if kind in ("in", "notin"):
            operator = "in" if kind == "in" else "notin"
            values = self._value_list()
        elif kind in ("=", "==", "!="):
            operator = "!=" if kind == "!=" else "="
            values = self._exact_value()
        elif kind in ("<", ">"):
            self._fail(f"operator {kind!r} is not supported")
        else:
            self._unexpected((kind, literal), "one of 'in', 'notin', '=', '==', '!='")
        return _checked(key, operator, values, self._fail)

    def _value_list(self) -> frozenset[str]:
        if (token := self._take())[0] != "(":
            self._unexpected(token, "'('")
        if (token := self._peek())[0] == ")":
            # apimachinery reads "k in ()" as the single empty value.
            self._pos += 1
            return frozenset({""})
        if token[0] not in ("id", ","):
            self._unexpected(token, "',', ')' or a value")
        # A literal port of parseIdentifiersList, whose comma handling decides where "" is a value.
        values: set[str] = set()
        while True:
            token = self._take()
            following = self._peek()
            if token[0] == "id":
                values.add(token[1])
                if following[0] == ")":
                    break
                if following[0] != ",":
                    self._unexpected(following, "',' or ')'")
            elif token[0] == ",":
                if not values or following[0] in (")", ","):
                    values.add("")
                if following[0] == ")":
                    break
                if following[0] == ",":
                    self._pos += 1
            else:
                self._unexpected(token, "',' or a value")
        self._pos += 1  # the ')' seen above
        return frozenset(values)

    def _exact_value(self) -> frozenset[str]:
        token = self._peek()
        if token[0] in (",", "end"):
            return frozenset({""})
        self._pos += 1
        if token[0] != "id":
            self._unexpected(token, "a value")
        return frozenset({token[1]})


def parse_selector(text: str) -> LabelSelector:
    """Parse the kubectl / ``labelSelector=`` text form. The empty string selects everything."""
    return LabelSelector(tuple(_Parser(text).parse()))


def selector_from_dict(obj: Mapping[str, object]) -> LabelSelector:
    """Convert a metav1.LabelSelector (``matchLabels`` and ``matchExpressions``) as decoded from JSON/YAML.

    Absent, null or empty fields add nothing, so ``{}`` selects everything, as in LabelSelectorAsSelector.
    Unknown fields are refused rather than ignored: a misspelt field would otherwise widen the selector.
    """

    def fail(problem: str) -> NoReturn:
        try:
            shown = json.dumps(obj, separators=(",", ":"), default=repr)
        except (TypeError, ValueError):  # non-string keys, cycles
            shown = repr(obj)
        if len(shown) > _MAX_QUOTED:
            shown = shown[:_MAX_QUOTED] + "..."
        raise SelectorError(f"invalid label selector {shown}: {problem}")

    for field in obj:
        if field not in ("matchLabels", "matchExpressions"):
            fail(f"unknown field {_quote(str(field))}, expected matchLabels or matchExpressions")
    requirements: list[Requirement] = []
    match_labels = obj.get("matchLabels")
    if match_labels is not None:
        if not isinstance(match_labels, Mapping):
            fail("matchLabels must be a map of strings to strings")
        for key, value in match_labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                fail(f"matchLabels entry {_quote(str(key))} must map a string to a string")
            requirements.append(_checked(key, "=", frozenset({value}), fail, "matchLabels: "))
    expressions = obj.get("matchExpressions")
    if expressions is not None:
        if not isinstance(expressions, list | tuple):
            fail("matchExpressions must be a list")
        for index, expression in enumerate(expressions):
            where = f"matchExpressions[{index}]"
            if not isinstance(expression, Mapping):
                fail(f"{where} must be a map with key, operator and values")
            for field in expression:
                if field not in ("key", "operator", "values"):
                    fail(f"{where} has unknown field {_quote(str(field))}")
            key, operator = expression.get("key"), expression.get("operator")
            values = expression.get("values")
            values = [] if values is None else values
            if not isinstance(key, str):
                fail(f"{where}.key must be a string")
            if not isinstance(operator, str) or operator not in _DICT_OPERATORS:
                fail(f"{where}.operator {_quote(str(operator))} is not In, NotIn, Exists or DoesNotExist")
            if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
                fail(f"{where}.values must be a list of strings")
            operator = _DICT_OPERATORS[operator]
            requirements.append(_checked(key, operator, frozenset(values), fail, f"{where}: "))
    return LabelSelector(tuple(requirements))


DEFAULT_MESH_SELECTORS: Final = SelectorSet(
    (parse_selector("istio-injection=enabled"), parse_selector("istio.io/rev")),
)
