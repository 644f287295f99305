"""The checks of the API server's write and list paths, with its messages (Kubernetes 1.28).

Object names (DNS-1123 label/subdomain, DNS-1035 for Services), optimistic-concurrency preconditions,
resourceVersion parsing and ``ValidateListOptions``. Each failure is the ``ApiError`` the real server answers.

Rule: nothing here does I/O.
"""

from __future__ import annotations

import re
from typing import Any, Final

from discofilter.simapi import errors as err
from discofilter.simapi.resources import ResourceType

JsonObj = dict[str, Any]

_DNS_LABEL_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_1035_RE: Final = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_NAME_RULES: Final = {
    "label": (
        _DNS_LABEL_RE,
        63,
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
        "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
        "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
    ),
    "subdomain": (
        _DNS_SUBDOMAIN_RE,
        253,
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
        "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
        "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
    ),
    "dns1035": (
        _DNS_1035_RE,
        63,
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
        "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex "
        "used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
    ),
}
_NAME_RULE_OF: Final = {"namespaces": "label", "services": "dns1035"}


def metadata(obj: JsonObj) -> JsonObj:
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise err.bad_request("metadata must be an object")
    return meta


def namespace_of(rt: ResourceType, meta: JsonObj, namespace: str | None) -> str | None:
    if not rt.namespaced:
        meta.pop("namespace", None)
        return None
    sent = meta.get("namespace")
    if namespace and sent and sent != namespace:
        raise err.bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    ns = namespace or sent
    if not ns:
        raise err.invalid(
            rt.group,
            rt.kind,
            str(meta.get("name", "")),
            [err.FieldError("Required", "metadata.namespace")],
        )
    meta["namespace"] = ns
    return str(ns)


def validate_name(rt: ResourceType, name: str, meta: JsonObj) -> None:
    if not name:
        raise err.invalid(
            rt.group,
            rt.kind,
            "",
            [err.FieldError("Required", "metadata.name", "name or generateName is required")],
        )
    pattern, max_len, rule = _NAME_RULES[_NAME_RULE_OF.get(rt.name, "subdomain")]
    problems = []
    if len(name) > max_len:
        problems.append(f"must be no more than {max_len} characters")
    if not pattern.fullmatch(name):
        problems.append(rule)
    if problems:
        raise err.invalid(
            rt.group,
            rt.kind,
            name,
            [err.FieldError("Invalid", "metadata.name", "; ".join(problems), name)],
        )


def check_preconditions(rt: ResourceType, current: JsonObj, uid: Any, rv: Any) -> None:
    meta = current.get("metadata") or {}
    name = str(meta.get("name", ""))
    if uid and uid != meta.get("uid"):
        raise err.conflict(
            rt.name,
            rt.group,
            name,
            f"Precondition failed: UID in precondition: {uid}, UID in object meta: {meta.get('uid')}",
        )
    if rv and str(rv) != meta.get("resourceVersion"):
        raise err.conflict(
            rt.name,
            rt.group,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )


def parse_resource_version(rt: ResourceType, value: str) -> int:
    """``APIObjectVersioner.ParseResourceVersion``: anything but an unsigned integer is 422 Invalid, named
    after the resource (``pods "" is invalid: resourceVersion: Invalid value: ...``)."""
    if value.isdigit() and value.isascii():
        return int(value)
    problem = f"strconv.ParseUint: parsing {err.go_quote(value)}: invalid syntax"
    raise err.invalid(rt.group, rt.name, "", [err.FieldError("Invalid", "resourceVersion", problem, value)])


def validate_list_options(rv: str | None, match: str | None, continue_token: str | None) -> None:
    """``ValidateListOptions`` for a LIST (1.28); failures are 422 Invalid ListOptions."""
    if not match:
        return
    problems: list[err.FieldError] = []
    if not rv:
        problems.append(
            err.FieldError(
                "Forbidden",
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            )
        )
    if continue_token:
        problems.append(
            err.FieldError(
                "Forbidden",
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden when continue is provided",
            )
        )
    if match not in ("Exact", "NotOlderThan"):
        problems.append(
            err.FieldError(
                "NotSupported", "resourceVersionMatch", 'supported values: "Exact", "NotOlderThan", ""', match
            )
        )
    if match == "Exact" and rv == "0":
        problems.append(
            err.FieldError(
                "Forbidden",
                "resourceVersionMatch",
                'resourceVersionMatch "exact" is forbidden for resourceVersion "0"',
            )
        )
    if problems:
        raise err.invalid("meta.k8s.io", "ListOptions", "", problems)
