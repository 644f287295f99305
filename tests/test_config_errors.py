"""Bad configuration, as a newcomer meets it: the real ``discofilter serve`` process, one line, exit 2.

Every kubeconfig and mesh config fault must give one stderr line that names the file and the fault (no
traceback); the kubeconfig is found in kubectl's order; namespace-watch refusals and unreachable API
servers are told in words.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from kubernetes_asyncio.client import ApiClient, Configuration

from discofilter.errors import UpstreamError
from discofilter.settings import UpstreamSettings
from discofilter.simapi import SimSettings, Store
from discofilter.tracker import KubernetesNamespaceSource
from discofilter.upstream import load_upstream
from tests import fixtures
from tests.harness import running_discofilter, serving_simapi, write_kubeconfig
from tests.test_proxy import namespace_source

PORTS = {"DISCOFILTER_LISTEN": "127.0.0.1:0"} | {
    f"DISCOFILTER_{n}_LISTEN": "127.0.0.1:0" for n in ("HEALTH", "METRICS")
}
"""Every port picked by the kernel, through the environment so that a test can override one."""


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without anything that points discofilter at a cluster."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DISCOFILTER_") and k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "HOME")
    }
    return {**base, "HOME": str(home), **PORTS, **extra}


async def serve_fails(home: Path, *args: str, **env: str) -> str:
    """Run ``discofilter serve``; assert it stops with exit 2 and one line; return that line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "discofilter", "serve", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=clean_env(home, **env),
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    text = err.decode()
    assert proc.returncode == 2, text
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("discofilter: error: "), text
    return lines[0]


def kubeconfig_doc(server: Any = "http://127.0.0.1:9", **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not None}


def with_cluster(**fields: Any) -> dict[str, Any]:
    return kubeconfig_doc(clusters=[{"name": "c", "cluster": {"server": "https://127.0.0.1:9", **fields}}])


# (content of the kubeconfig: bytes, or a YAML document; extra flags; what the line must say)
KUBECONFIG_FAULTS: list[tuple[str, bytes | dict[str, Any], list[str], str]] = [
    ("unclosed flow", b"a: [b", [], "not valid YAML: expected ',' or ']', but got '<stream end>' at line 1"),
    ("NUL byte", b"apiVersion: v1\0\n", [], "is not YAML: it holds NUL bytes"),
    ("a string", b"hello world\n", [], "must be a YAML map with clusters, contexts and users, not str"),
    ("a list", b"- a\n- b\n", [], "must be a YAML map with clusters, contexts and users, not a list"),
    ("empty", b"", [], "is empty"),
    ("clusters a map", kubeconfig_doc(clusters={"c": {}}), [], "clusters must be a list, not a map"),
    ("entry without name", kubeconfig_doc(users=[{"user": {}}]), [], "users[0] must be a map with a name"),
    ("no clusters", kubeconfig_doc(clusters=None), [], "context 'x' names cluster 'c', which is not defined"),
    ("no contexts", kubeconfig_doc(contexts=None), [], "has no context 'x' (it has no contexts)"),
    ("no users", kubeconfig_doc(users=None), [], "context 'x' names user 'u', which is not defined"),
    ("no current-context", kubeconfig_doc(**{"current-context": None}), [], "sets no current-context"),
    ("unknown --context", kubeconfig_doc(), ["--context", "nope"], "has no context 'nope' (it has: x)"),
    ("cluster without server", kubeconfig_doc(clusters=[{"name": "c", "cluster": {}}]), [], "has no server"),
    ("CA data not base64", with_cluster(**{"certificate-authority-data": "not-base64!"}), [],
     "cluster 'c': certificate-authority-data is not base64"),
    ("CA data not a certificate", with_cluster(**{"certificate-authority-data": "aGVsbG8="}), [],
     "cannot load its certificate-authority: no certificate or crl found"),
    ("CA file missing", with_cluster(**{"certificate-authority": "ca.pem"}), [],
     "cluster 'c': certificate-authority {dir}/ca.pem does not exist"),
    ("client cert missing",
     kubeconfig_doc(users=[{"name": "u", "user": {"client-certificate": "c.pem", "client-key": "k.pem"}}]),
     [],
     "user 'u': client-certificate {dir}/c.pem does not exist"),
    ("token file missing", kubeconfig_doc(users=[{"name": "u", "user": {"tokenFile": "/nonexistent/t"}}]), [],
     "user 'u': tokenFile /nonexistent/t does not exist"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "flags", "cause"), [f[1:] for f in KUBECONFIG_FAULTS],
                         ids=[f[0] for f in KUBECONFIG_FAULTS])  # fmt: skip
async def test_every_kubeconfig_fault_is_one_line_naming_file_and_cause(
    tmp_path: Path, content: bytes | dict[str, Any], flags: list[str], cause: str
) -> None:
    kc = tmp_path / "kc.yaml"
    kc.write_bytes(content if isinstance(content, bytes) else yaml.safe_dump(content).encode())
    line = await serve_fails(tmp_path, "--kubeconfig", str(kc), *flags)
    assert str(kc) in line
    assert cause.format(dir=tmp_path) in line


async def test_missing_or_unreadable_kubeconfig(tmp_path: Path) -> None:
    line = await serve_fails(tmp_path, "--kubeconfig", str(tmp_path / "nope"))
    assert f"kubeconfig {tmp_path / 'nope'} (--kubeconfig) does not exist" in line
    line = await serve_fails(tmp_path, DISCOFILTER_KUBECONFIG=str(tmp_path))
    assert f"cannot read kubeconfig {tmp_path} (DISCOFILTER_KUBECONFIG): Is a directory" in line


MESH_FAULTS: list[tuple[str, bytes, str]] = [
    ("unclosed flow", b"discoverySelectors: [", "is not valid YAML: expected the node content"),
    ("NUL byte", b"a\0", "is not valid YAML: special characters are not allowed (byte 1)"),
    ("a string", b"hello world", "must be a YAML map, not str 'hello world'"),
    ("a list", b"- a", "must be a YAML map, not a list"),
    (
        "selectors a map",
        b"discoverySelectors: {a: b}",
        "discoverySelectors must be a list of label selectors",
    ),
    ("bad selector", b"discoverySelectors: [{matchLabel: {a: b}}]", "discoverySelectors[0]"),
]


@pytest.mark.parametrize(("content", "cause"), [f[1:] for f in MESH_FAULTS], ids=[f[0] for f in MESH_FAULTS])
async def test_every_mesh_config_fault_is_one_line(tmp_path: Path, content: bytes, cause: str) -> None:
    kc = tmp_path / "kc.yaml"
    kc.write_text(yaml.safe_dump(kubeconfig_doc()))
    mesh = tmp_path / "mesh"
    mesh.write_bytes(content)
    line = await serve_fails(tmp_path, "--kubeconfig", str(kc), "--mesh-config", str(mesh))
    assert f"mesh config {mesh}" in line
    assert cause in line
    line = await serve_fails(tmp_path, "--kubeconfig", str(kc), "--mesh-config", str(tmp_path / "none"))
    assert f"cannot read mesh config {tmp_path / 'none'}: No such file or directory" in line


FLAG_FAULTS: list[tuple[list[str], dict[str, str], str]] = [
    (["--listen", "127.0.0.1:99999"], {}, "--listen '127.0.0.1:99999': port 99999 out of range 0-65535"),
    ([], {"DISCOFILTER_LISTEN": "bogus"}, "DISCOFILTER_LISTEN 'bogus' is not HOST:PORT"),
    ([], {"DISCOFILTER_HEALTH_LISTEN": "[::1:80"}, "DISCOFILTER_HEALTH_LISTEN '[::1:80': unbalanced []"),
    ([], {"DISCOFILTER_METRICS_LISTEN": "h:70000"}, "DISCOFILTER_METRICS_LISTEN 'h:70000': port 70000 out"),
    ([], {"DISCOFILTER_UPSTREAM_CREDENTIALS": "maybe"},
     "DISCOFILTER_UPSTREAM_CREDENTIALS='maybe' is neither true nor false"),
    # "TRUE" is true: the refusal to lend credentials on 0.0.0.0 shows it was read so.
    ([], {"DISCOFILTER_LISTEN": "0.0.0.0:0", "DISCOFILTER_UPSTREAM_CREDENTIALS": "TRUE"},
     "--upstream-credentials refused"),
    ([], {"DISCOFILTER_LOG_LEVEL": "verbose"}, "DISCOFILTER_LOG_LEVEL='verbose' is not one of debug, info"),
    ([], {"DISCOFILTER_LOG_FORMAT": "yaml"}, "DISCOFILTER_LOG_FORMAT='yaml' is not one of text, json"),
    ([], {"DISCOFILTER_WIRE_FORMAT": "xml"}, "DISCOFILTER_WIRE_FORMAT='xml' is not one of native, json"),
    ([], {"DISCOFILTER_SHUTDOWN_GRACE_SECONDS": "nan"},
     "DISCOFILTER_SHUTDOWN_GRACE_SECONDS must be a positive number, not 'nan'"),
    (["--upstream-pool-size", "many"], {}, "--upstream-pool-size wants a number, not 'many'"),
    (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
    (["--tls-cert-file", "/nonexistent/c.pem", "--tls-key-file", "/nonexistent/k.pem"], {},
     "cannot read --tls-cert-file /nonexistent/c.pem: No such file or directory"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "env", "cause"), FLAG_FAULTS)
async def test_flag_and_env_faults_are_one_line(
    tmp_path: Path, flags: list[str], env: dict[str, str], cause: str
) -> None:
    kc = tmp_path / "kc.yaml"
    kc.write_text(yaml.safe_dump(kubeconfig_doc()))
    line = await serve_fails(tmp_path, "--kubeconfig", str(kc), *flags, **env)
    assert cause in line


async def test_tls_file_that_is_not_a_certificate_names_both_files(tmp_path: Path) -> None:
    kc = tmp_path / "kc.yaml"
    kc.write_text(yaml.safe_dump(kubeconfig_doc()))
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    line = await serve_fails(
        tmp_path, "--kubeconfig", str(kc), "--tls-cert-file", str(tmp_path / "c.pem"),
        "--tls-key-file", str(tmp_path / "k.pem"),
    )  # fmt: skip
    assert f"cannot load the serving certificate {tmp_path / 'c.pem'} with key {tmp_path / 'k.pem'}" in line


# --- Which kubeconfig: kubectl's order, against the simulated API server ---------------------------


def simapi(tokens: dict[str, str] | None = None) -> AbstractAsyncContextManager[str]:
    store = Store(seed=7)
    store.load_list("namespaces", orjson.loads(fixtures.body("list-namespaces.json")))
    return serving_simapi(store, SimSettings(bookmark_interval=0.2, tokens=tokens or {}))


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def serve_until(home: Path, text: str, *args: str, **env: str) -> list[str]:
    """Run ``discofilter serve`` until a stderr line holds ``text``; stop it; return its lines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "discofilter", "serve", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=clean_env(home, **env),
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        while not lines or text not in lines[-1]:
            raw = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert raw, f"discofilter ended before logging {text!r}: {lines}"
            lines.append(raw.decode().rstrip("\n"))
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        lines += (await asyncio.wait_for(proc.stderr.read(), 30)).decode().splitlines()
        await asyncio.wait_for(proc.wait(), 30)
    assert "Traceback" not in "\n".join(lines)
    return lines


def started_from(lines: list[str]) -> str:
    """The source named by the start-up line that also gives the version."""
    line = next(x for x in lines if "discofilter 0." in x and "API server" in x)
    return line.split(" from ", 1)[1]


def config_file(path: Path, clusters: dict[str, str], contexts: dict[str, str], current: str | None) -> Path:
    doc = {
        "clusters": [{"name": n, "cluster": {"server": s}} for n, s in clusters.items()],
        "contexts": [{"name": n, "context": {"cluster": c}} for n, c in contexts.items()],
        **({"current-context": current} if current else {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_home_kube_config_is_used_without_flag_or_KUBECONFIG(tmp_path: Path) -> None:
    async with simapi() as url:
        home_kc = config_file(tmp_path / ".kube" / "config", {"sim": url}, {"here": "sim"}, "here")
        lines = await serve_until(tmp_path, "namespace membership synced")
    assert started_from(lines) == f"kubeconfig {home_kc} (~/.kube/config), context here"


async def test_KUBECONFIG_list_is_merged_as_kubectl_does_and_beats_home(tmp_path: Path) -> None:
    async with simapi() as url:
        config_file(tmp_path / ".kube" / "config", {"sim": dead_url()}, {"here": "sim"}, "here")
        # a: the first current-context ("a-ctx") and the first definition of cluster "c" win, as in
        # kubectl; kubernetes-asyncio's own merger would take b's current-context ("b-ctx", dead).
        a = config_file(tmp_path / "a.yaml", {"c": url}, {"a-ctx": "c"}, "a-ctx")
        b = config_file(tmp_path / "b.yaml", {"c": dead_url(), "d": dead_url()}, {"b-ctx": "d"}, "b-ctx")
        listed = f"{tmp_path / 'missing.yaml'}:{a}:{b}"  # a missing file is skipped, as kubectl does
        lines = await serve_until(tmp_path, "namespace membership synced", KUBECONFIG=listed)
    assert started_from(lines) == f"kubeconfig {a}:{b} (KUBECONFIG), context a-ctx"


async def test_flag_beats_KUBECONFIG_and_env_var_is_named(tmp_path: Path) -> None:
    async with simapi() as url:
        other = config_file(tmp_path / "other.yaml", {"c": dead_url()}, {"x": "c"}, "x")
        mine = config_file(tmp_path / "mine.yaml", {"c": url}, {"x": "c"}, "x")
        lines = await serve_until(
            tmp_path, "namespace membership synced", KUBECONFIG=str(other), DISCOFILTER_KUBECONFIG=str(mine)
        )
    assert started_from(lines) == f"kubeconfig {mine} (DISCOFILTER_KUBECONFIG), context x"


async def test_KUBECONFIG_naming_no_file_and_nothing_configured(tmp_path: Path) -> None:
    config_file(tmp_path / ".kube" / "config", {"c": dead_url()}, {"x": "c"}, "x")  # not used: KUBECONFIG set
    line = await serve_fails(tmp_path, KUBECONFIG=f"{tmp_path}/a:{tmp_path}/b")
    assert f"KUBECONFIG={tmp_path}/a:{tmp_path}/b names no file that exists" in line
    line = await serve_fails(tmp_path / "empty-home")
    assert "no API server configured: pass --kubeconfig, set KUBECONFIG, create ~/.kube/config" in line


async def test_https_context_without_user_loads(tmp_path: Path) -> None:
    """kubernetes-asyncio 36 alone fails on this with a TypeError (a user-less context, https)."""
    kc = tmp_path / "kc"
    kc.write_text(
        yaml.safe_dump({**with_cluster(), "contexts": [{"name": "x", "context": {"cluster": "c"}}]})
    )
    upstream = await load_upstream(UpstreamSettings(kubeconfig=str(kc)))
    assert upstream.base_url == "https://127.0.0.1:9"
    assert await upstream.authorization() is None


# --- Refusals and unreachable servers, in words -------------------------------------------------


async def test_namespace_list_and_watch_refused_with_401_say_so(tmp_path: Path) -> None:
    async with simapi(tokens={"good": "admin"}) as url:
        cfg = Configuration(
            host=url, api_key={"BearerToken": "wrong"}, api_key_prefix={"BearerToken": "Bearer"}
        )
        async with ApiClient(cfg) as client:
            source = KubernetesNamespaceSource(client)
            with pytest.raises(
                UpstreamError, match=r"namespace list refused: 401 Unauthorized: Unauthorized"
            ):
                await source.list()
            with pytest.raises(
                UpstreamError, match=r"namespace watch refused: 401 Unauthorized: Unauthorized"
            ):
                await anext(source.watch("1", 5))
        kc = write_kubeconfig(tmp_path / "kc", url, token="wrong")
        lines = await serve_until(tmp_path, "namespace list", "--kubeconfig", str(kc))
    assert any("namespace list refused: 401 Unauthorized: Unauthorized" in x for x in lines), lines
    assert not [x for x in lines if "malformed" in x or "membership synced" in x]


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_unreachable_api_server_502_says_what_failed(tmp_path: Path, scheme: str) -> None:
    dead = dead_url().replace("http", scheme)
    address = dead.split("//")[1]
    kc = write_kubeconfig(tmp_path / "kc", dead)
    async with (
        running_discofilter(kc, source=namespace_source()) as df,
        aiohttp.ClientSession() as s,
        s.get(df.url + "/version") as r,
    ):
        status, body = r.status, await r.json()
    assert status == 502
    assert body["message"] == f"API server unreachable: cannot connect to {address}: connection refused"
