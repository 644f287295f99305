"""labelSelector and fieldSelector of LIST and WATCH requests, with the real server's error messages.

Matching labels is ``discofilter.core.selectors``'s job (the same code discofilter filters with). What this
module adds is the API server's side of it:

* the *syntax* errors of apimachinery's ``labels.Parse`` (``pkg/labels/selector.go``, 1.28), word for word,
  because a refused selector is a 400 whose message clients show (``error-400-labelselector.json``:
  ``unable to parse requirement: found '', expected: ',' or ')'``). A small replica of Go's lexer and parser
  finds them; the core parser then does the semantic checks. Where only the core parser objects (invalid
  key or value, the ``<``/``>`` operators it does not support) the message is the core's, prefixed like Go's;
* field selectors (``fields.ParseSelector`` and each type's ``ConvertFieldLabel``): ``=``, ``==`` and ``!=``
  on the fields a type supports, ``field label not supported: <field>`` (400) for the rest.

Rule: nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from discofilter.core.selectors import LabelSelector, parse_selector
from discofilter.errors import SelectorError
from discofilter.simapi.errors import bad_request
from discofilter.simapi.resources import ResourceType

JsonObj = dict[str, Any]

# Token kinds of selector.go's lexer.
_END, _ID, _IN, _NOTIN, _EQ, _DEQ, _NEQ, _GT, _LT, _NOT, _OPEN, _CLOSE, _COMMA = range(13)
_SPECIAL: Final = {
    "!": _NOT,
    "!=": _NEQ,
    "(": _OPEN,
    ")": _CLOSE,
    ",": _COMMA,
    "=": _EQ,
    "==": _DEQ,
    ">": _GT,
    "<": _LT,
}
_SPECIAL_CHARS: Final = frozenset("=!(),><")
_WHITESPACE: Final = frozenset(" \t\r\n")
_BINARY_OPERATORS: Final = "in, notin, =, ==, !=, gt, lt"


def _lex(text: str) -> list[tuple[int, str]]:
    """selector.go's ``Lexer``: every token up to and including the end of the string."""
    tokens: list[tuple[int, str]] = []
    pos, size = 0, len(text)
    while True:
        while pos < size and text[pos] in _WHITESPACE:
            pos += 1
        # Go's lexer reads bytes and stops at a NUL as if the string ended there.
        if pos >= size or text[pos] == "\x00":
            tokens.append((_END, ""))
            return tokens
        if text[pos] in _SPECIAL_CHARS:
            start = pos
            while pos < size and text[pos] in _SPECIAL_CHARS and text[start : pos + 1] in _SPECIAL:
                pos += 1
            literal = text[start:pos]
            tokens.append((_SPECIAL[literal], literal))
            continue
        start = pos
        while (
            pos < size
            and text[pos] not in _WHITESPACE
            and text[pos] not in _SPECIAL_CHARS
            and text[pos] != "\x00"
        ):
            pos += 1
        word = text[start:pos]
        tokens.append(({"in": _IN, "notin": _NOTIN}.get(word, _ID), word))


class _GoSyntax:
    """The control flow of selector.go's ``Parser``, keeping only what decides the error message."""

    def __init__(self, text: str) -> None:
        self.items = _lex(text)
        self.pos = 0

    def peek(self, values: bool) -> tuple[int, str]:
        tok, lit = self.items[self.pos]
        if values and tok in (_IN, _NOTIN):
            tok = _ID  # in the Values context the keywords are plain identifiers
        return tok, lit

    def take(self, values: bool) -> tuple[int, str]:
        item = self.peek(values)
        self.pos += 1
        return item

    def error(self) -> str | None:
        while True:
            tok, lit = self.peek(True)
            if tok in (_ID, _NOT):
                problem = self.requirement()
                if problem is not None:
                    return f"unable to parse requirement: {problem}"
                tok, lit = self.take(True)
                if tok == _END:
                    return None
                if tok == _COMMA:
                    tok2, lit2 = self.peek(True)
                    if tok2 not in (_ID, _NOT):
                        return f"found '{lit2}', expected: identifier after ','"
                    continue
                return f"found '{lit}', expected: ',' or 'end of string'"
            if tok == _END:
                return None
            return f"found '{lit}', expected: !, identifier, or 'end of string'"

    def requirement(self) -> str | None:
        tok, lit = self.take(True)
        does_not_exist = tok == _NOT
        if does_not_exist:
            tok, lit = self.take(True)
        if tok != _ID:
            return f"found '{lit}', expected: identifier"
        if does_not_exist or self.peek(True)[0] in (_END, _COMMA):
            # Exists / DoesNotExist: Go returns here; for "!key" whatever follows is the caller's problem.
            return None
        tok, lit = self.take(False)
        if tok in (_IN, _NOTIN):
            return self.values()
        if tok in (_EQ, _DEQ, _NEQ, _GT, _LT):
            return self.exact_value()
        return f"found '{lit}', expected: {_BINARY_OPERATORS}"

    def values(self) -> str | None:
        tok, lit = self.take(True)
        if tok != _OPEN:
            return f"found '{lit}' expected: '('"
        tok, lit = self.peek(True)
        if tok in (_ID, _COMMA):
            problem = self.identifier_list()
            if problem is not None:
                return problem
            if self.take(True)[0] != _CLOSE:
                return f"found '{lit}', expected: ')'"
            return None
        if tok == _CLOSE:
            self.take(True)
            return None
        return f"found '{lit}', expected: ',', ')' or identifier"

    def identifier_list(self) -> str | None:
        seen = 0
        while True:
            tok, lit = self.take(True)
            if tok == _ID:
                seen += 1
                tok2, lit2 = self.peek(True)
                if tok2 == _COMMA:
                    continue
                if tok2 == _CLOSE:
                    return None
                return f"found '{lit2}', expected: ',' or ')'"
            if tok == _COMMA:
                seen += 1
                tok2, _ = self.peek(True)
                if tok2 == _CLOSE:
                    return None
                if tok2 == _COMMA:
                    self.take(True)
                continue
            return f"found '{lit}', expected: ',' or ')'"

    def exact_value(self) -> str | None:
        tok, _ = self.peek(True)
        if tok in (_END, _COMMA):
            return None
        tok, lit = self.take(True)
        if tok == _ID:
            return None
        return f"found '{lit}', expected: identifier"


def label_selector_syntax_error(text: str) -> str | None:
    """The message ``labels.Parse`` of Kubernetes 1.28 fails with on a syntax error, or None."""
    return _GoSyntax(text).error()


def parse_label_selector(text: str) -> LabelSelector | None:
    """A labelSelector query parameter; None when empty (matches everything). Raises a 400 ApiError."""
    if not text.strip(" \t\r\n"):
        return None
    problem = label_selector_syntax_error(text)
    if problem is not None:
        raise bad_request(problem)
    try:
        return parse_selector(text)
    except SelectorError as err:
        raise bad_request(f"unable to parse requirement: {err.message}") from err


@dataclass(frozen=True, slots=True)
class FieldTerm:
    """One ``field=value`` or ``field!=value`` term of a fieldSelector."""

    field: str
    value: str
    negated: bool

    def matches(self, fields: Mapping[str, str]) -> bool:
        return (fields.get(self.field, "") == self.value) != self.negated


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _split_term(term: str) -> tuple[str, str, str] | None:
    # fields.splitTerm: the first unescaped operator, trying != and == before =.
    i = 0
    while i < len(term):
        if term[i] == "\\":
            i += 2
            continue
        for op in ("!=", "==", "="):
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op) :]
        i += 1
    return None


def _unescape(value: str) -> str:
    out, escaped = [], False
    for ch in value:
        if escaped:
            if ch not in "\\,=":
                raise bad_request(f"invalid field selector: invalid escape sequence: \\{ch}")
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in ",=":
            # Go prints the rune with %v, i.e. as a number.
            raise bad_request(f"invalid field selector: unescaped character in value: {ord(ch)}")
        else:
            out.append(ch)
    if escaped:
        raise bad_request("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


def parse_field_selector(
    text: str, rt: ResourceType, unsupported: frozenset[str] = frozenset()
) -> tuple[FieldTerm, ...]:
    """A fieldSelector query parameter for ``rt``; empty means everything. Raises a 400 ApiError."""
    terms: list[FieldTerm] = []
    for part in sorted(_split_unescaped(text, ",")):
        if not part:
            continue
        split = _split_term(part)
        if split is None:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        lhs, op, rhs = split
        terms.append(FieldTerm(lhs, _unescape(rhs), op == "!="))
    for term in terms:
        if term.field not in rt.field_labels or term.field in unsupported:
            raise bad_request(f"field label not supported: {term.field}")
    return tuple(terms)


def selectable_fields(rt: ResourceType, obj: Mapping[str, Any]) -> dict[str, str]:
    """The ``fields.Set`` the registry builds for ``obj`` (``PodToSelectableFields`` and friends)."""
    meta = obj.get("metadata") or {}
    fields = {
        "metadata.name": str(meta.get("name", "")),
        "metadata.namespace": str(meta.get("namespace", "")),
    }
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if rt.name == "pods":
        pod_ips = status.get("podIPs") or []
        fields.update(
            {
                "spec.nodeName": str(spec.get("nodeName", "")),
                "spec.restartPolicy": str(spec.get("restartPolicy", "")),
                "spec.schedulerName": str(spec.get("schedulerName", "")),
                "spec.serviceAccountName": str(spec.get("serviceAccountName", "")),
                "spec.hostNetwork": "true" if spec.get("hostNetwork") else "false",
                "status.phase": str(status.get("phase", "")),
                "status.podIP": str(status.get("podIP", "")),
                "status.podIPs": str(pod_ips[0].get("ip", "")) if pod_ips else "",
                "status.nominatedNodeName": str(status.get("nominatedNodeName", "")),
            }
        )
    elif rt.name == "namespaces":
        fields["status.phase"] = str(status.get("phase", ""))
    elif rt.name == "nodes":
        fields["spec.unschedulable"] = "true" if spec.get("unschedulable") else "false"
    elif rt.name == "secrets":
        fields["type"] = str(obj.get("type", ""))
    elif rt.name == "events":
        involved = obj.get("involvedObject") or {}
        for key in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath"):
            fields[f"involvedObject.{key}"] = str(involved.get(key, ""))
        source = obj.get("source") or {}
        fields["reason"] = str(obj.get("reason", ""))
        fields["reportingComponent"] = str(obj.get("reportingComponent", ""))
        fields["source"] = str(source.get("component", ""))
        fields["type"] = str(obj.get("type", ""))
    return fields


@dataclass(frozen=True, slots=True)
class ObjectFilter:
    """A watch's or list's predicate (the apiserver's ``SelectionPredicate``): labels AND fields."""

    rt: ResourceType
    labels: LabelSelector | None = None
    fields: tuple[FieldTerm, ...] = ()

    @property
    def everything(self) -> bool:
        """True when nothing is filtered; only then may a paged list report ``remainingItemCount``."""
        return self.labels is None and not self.fields

    def matches(self, obj: Mapping[str, Any]) -> bool:
        if self.labels is not None:
            meta = obj.get("metadata") or {}
            if not self.labels.matches(meta.get("labels") or {}):
                return False
        if self.fields:
            values = selectable_fields(self.rt, obj)
            return all(term.matches(values) for term in self.fields)
        return True


def make_filter(
    rt: ResourceType,
    label_selector: str | None,
    field_selector: str | None,
    unsupported: frozenset[str] = frozenset(),
) -> ObjectFilter:
    """Parse both selectors (labels first, as the query decoding does). Raises a 400 ApiError."""
    labels = parse_label_selector(label_selector) if label_selector else None
    fields = parse_field_selector(field_selector, rt, unsupported) if field_selector else ()
    return ObjectFilter(rt, labels, fields)
