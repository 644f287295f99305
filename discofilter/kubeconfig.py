"""Which kubeconfig discofilter reads, in kubectl's order, and a check of it that names file and fault.

Order, as kubectl (client-go ``tools/clientcmd``: ``NewDefaultClientConfigLoadingRules`` and
``DeferredLoadingClientConfig``, which falls back to in-cluster when nothing else is configured):

1. ``--kubeconfig`` (or ``DISCOFILTER_KUBECONFIG``): one file, which must exist.
2. ``KUBECONFIG``: a ``:``-separated list, merged. Files that do not exist are skipped, as kubectl skips
   them, but at least one must exist: a ``KUBECONFIG`` that names nothing is a mistake worth a line, not
   a silent fall-back (kubectl does not fall back to ``~/.kube/config`` either once ``KUBECONFIG`` is set).
   Empty files in the list are skipped too (kubectl reads them as empty configs).
3. ``~/.kube/config``, if it exists (``HOME`` from the environment).
4. The in-cluster ServiceAccount, when ``KUBERNETES_SERVICE_HOST`` is set.

istiod's order (istio ``pkg/kube/util.go``) has no step 3; a newcomer on a laptop expects kubectl's.

Merging follows kubectl: the first file to define a cluster, user or context name wins, and the first
file to set ``current-context`` wins. kubernetes-asyncio's ``KubeConfigMerger`` agrees on names but lets
the *last* ``current-context`` win, so the merge is done here into the same ``ConfigNode`` tree that
merger builds (each entry remembers its file, so a relative certificate path resolves against it), and
kubernetes-asyncio's ``KubeConfigLoader`` does the rest: authentication (tokens, token files, exec
plugins, auth providers) and certificates.

Why check at all: the loader indexes into whatever YAML it is handed, so a file that is a string, a
list or empty ends in ``TypeError: 'str' object does not support item assignment``, and a context that
names a missing cluster in a bare ``assert``, neither naming the file. Every shape is checked here
first and refused with a ``ConfigError`` of one line that names the file and the fault.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from kubernetes_asyncio.config.kube_config import ConfigNode

from discofilter.core.meshconfig import kind, yaml_problem
from discofilter.errors import ConfigError

SECTIONS: Final = (("clusters", "cluster"), ("contexts", "context"), ("users", "user"))
"""The named lists of a kubeconfig and the key of each entry's body."""

FILES: Final = {
    "cluster": ("certificate-authority",),
    "user": ("client-certificate", "client-key", "tokenFile"),
}
"""File references a cluster or user may carry (each but tokenFile with a ``-data`` twin in base64)."""


@dataclass(frozen=True, slots=True)
class KubeconfigChoice:
    """The kubeconfig files to read, and where their names came from."""

    paths: tuple[str, ...]
    """Existing files, in merge order."""
    origin: str
    """How the choice was made, for messages and the start-up log: ``--kubeconfig``, ``KUBECONFIG``..."""

    def describe(self) -> str:
        return f"kubeconfig {':'.join(self.paths)} ({self.origin})"


def choose(explicit: str | None, explicit_from: str, environ: Mapping[str, str]) -> KubeconfigChoice | None:
    """The kubeconfig to read, in kubectl's order; None means in-cluster (or nothing configured)."""
    if explicit:
        path = os.path.expanduser(explicit)
        if not os.path.exists(path):
            raise ConfigError(f"kubeconfig {explicit} ({explicit_from}) does not exist")
        return KubeconfigChoice((path,), explicit_from)
    listed = environ.get("KUBECONFIG") or ""
    if listed:
        named = [os.path.expanduser(p) for p in listed.split(os.pathsep) if p]
        existing = tuple(p for p in named if os.path.exists(p))
        if not existing:
            raise ConfigError(f"KUBECONFIG={listed} names no file that exists")
        # Empty files only when every one is empty: that is worth a line, a stray empty one is not.
        filled = tuple(p for p in existing if not _is_empty(p))
        return KubeconfigChoice(filled or existing, "KUBECONFIG")
    home = environ.get("HOME") or os.path.expanduser("~")
    default = os.path.join(home, ".kube", "config")
    if os.path.exists(default):
        return KubeconfigChoice((default,), "~/.kube/config")
    return None


def _is_empty(path: str) -> bool:
    try:
        return not Path(path).read_bytes().strip()
    except OSError:
        return False  # read_document words the error


def read_document(path: str, origin: str) -> dict[str, Any]:
    """One kubeconfig file as a map whose clusters, contexts and users are lists of named maps."""
    where = f"kubeconfig {path} ({origin})"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror or exc}") from exc
    if b"\0" in data:
        raise ConfigError(f"{where} is not YAML: it holds NUL bytes (a binary file?)")
    try:
        doc: Any = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {yaml_problem(exc)}") from exc
    if doc is None:
        raise ConfigError(f"{where} is empty")
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} must be a YAML map with clusters, contexts and users, not {kind(doc)}")
    for section, body in SECTIONS:
        entries = doc.get(section)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise ConfigError(f"{where}: {section} must be a list, not {kind(entries)}")
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
                raise ConfigError(f"{where}: {section}[{index}] must be a map with a name, not {kind(entry)}")
            if not isinstance(entry.get(body), dict):
                raise ConfigError(
                    f"{where}: {section}[{index}] ({entry['name']}) has no {body} map "
                    f"(it is {kind(entry.get(body))})"
                )
    current = doc.get("current-context")
    if current is not None and not isinstance(current, str):
        raise ConfigError(f"{where}: current-context must be a context name, not {kind(current)}")
    return doc


@dataclass(frozen=True, slots=True)
class CheckedConfig:
    """A merged, checked kubeconfig tree for ``KubeConfigLoader``, and the context to activate."""

    tree: ConfigNode
    context: str


def checked_config(choice: KubeconfigChoice, context: str | None) -> CheckedConfig:
    """Merge the chosen files (kubectl's rules) and check the active context's cluster and user."""
    merged: dict[str, Any] = {section: [] for section, _ in SECTIONS}
    home: dict[tuple[str, str], str] = {}  # (section, name) -> file that defined it
    current: str | None = None
    for path in choice.paths:
        doc = read_document(path, choice.origin)
        for section, _ in SECTIONS:
            for entry in doc.get(section) or []:
                if (section, entry["name"]) not in home:
                    home[section, entry["name"]] = path
                    merged[section].append(ConfigNode(f"{path}/{section}[{entry['name']}]", entry, path))
        if current is None and doc.get("current-context"):
            current = doc["current-context"]
    where = choice.describe()
    names = [node.value["name"] for node in merged["contexts"]]
    have = f" (it has: {', '.join(names)})" if names else " (it has no contexts)"
    name = context or current
    if not name:
        raise ConfigError(f"{where} sets no current-context; pass --context{have}")
    ctx = _find(merged, "contexts", name)
    if ctx is None:
        raise ConfigError(f"{where} has no context {name!r}{have}")
    cluster_name = ctx["context"].get("cluster")
    if not isinstance(cluster_name, str) or not cluster_name:
        raise ConfigError(f"{where}: context {name!r} names no cluster")
    cluster = _find(merged, "clusters", cluster_name)
    if cluster is None:
        raise ConfigError(f"{where}: context {name!r} names cluster {cluster_name!r}, which is not defined")
    cluster_file = f"kubeconfig {home['clusters', cluster_name]}"
    server = cluster["cluster"].get("server")
    if not isinstance(server, str) or not server:
        raise ConfigError(f"{cluster_file}: cluster {cluster_name!r} has no server")
    _check_files(cluster["cluster"], "cluster", cluster_name, home["clusters", cluster_name])
    user_name = ctx["context"].get("user")
    if not user_name:
        _lend_empty_user(merged, name, home["contexts", name])
    else:
        user = _find(merged, "users", user_name)
        if user is None:
            # kubectl refuses this too (clientcmd validation: 'user "u" was not found for context "x"');
            # kubernetes-asyncio would go on without credentials.
            raise ConfigError(f"{where}: context {name!r} names user {user_name!r}, which is not defined")
        _check_files(user["user"], "user", user_name, home["users", user_name])
    tree = ConfigNode(choice.paths[0], {**merged, "current-context": name}, choice.paths[0])
    return CheckedConfig(tree, name)


ANONYMOUS: Final = "discofilter:no-user"
"""Name of the empty user given to a context without one (see ``_lend_empty_user``)."""


def _lend_empty_user(merged: dict[str, Any], context: str, path: str) -> None:
    """Give a context without a user an empty one: kubernetes-asyncio 36 reads client certificates
    from the context's user for every https server, user or not (``FileOrData(None, ...)`` ends in
    ``TypeError: argument of type 'NoneType' is not iterable``). No user means no credentials, as in
    kubectl."""
    merged["users"].append(ConfigNode(f"{path}/users[{ANONYMOUS}]", {"name": ANONYMOUS, "user": {}}, path))
    contexts = merged["contexts"]
    for index, node in enumerate(contexts):
        if node.value["name"] == context:
            value = {**node.value, "context": {**node.value["context"], "user": ANONYMOUS}}
            contexts[index] = ConfigNode(node.name, value, node.path)


def _find(merged: dict[str, Any], section: str, name: str) -> dict[str, Any] | None:
    for node in merged[section]:
        if node.value["name"] == name:
            value: dict[str, Any] = node.value
            return value
    return None


def _check_files(body: dict[str, Any], what: str, name: str, path: str) -> None:
    """Referenced files exist and ``-data`` twins are base64, as the loader will need them."""
    where = f"kubeconfig {path}: {what} {name!r}"
    for key in FILES[what]:
        data = body.get(f"{key}-data") if key != "tokenFile" else None
        if data is not None:
            try:
                base64.standard_b64decode(data.encode() if isinstance(data, str) else data)
            except (binascii.Error, ValueError, TypeError) as exc:
                raise ConfigError(f"{where}: {key}-data is not base64 ({exc})") from exc
            continue
        ref = body.get(key)
        if ref is None:
            continue
        if not isinstance(ref, str) or not ref:
            raise ConfigError(f"{where}: {key} must be a file name, not {kind(ref)}")
        # Relative to the kubeconfig's own folder, as kubectl and kubernetes-asyncio resolve it.
        full = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), ref))
        if not os.path.isfile(full):
            raise ConfigError(f"{where}: {key} {full} does not exist")
