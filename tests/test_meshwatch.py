"""discoverySelectors taken from Istio's mesh config, file or ConfigMap, followed while running.

The namespace side runs on the in-memory FakeNamespaceSource where only the mesh config is under test;
the ConfigMap side and the end-to-end tests use the real kubernetes-asyncio client against simapi, and
informers through discofilter, as tests/test_e2e.py does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from kubernetes_asyncio import client as aclient

from discofilter.cli import build_parser, settings_from_args
from discofilter.core.membership import Membership
from discofilter.core.meshconfig import parse_mesh_config
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS, SelectorSet, parse_selector
from discofilter.errors import ConfigError, MeshConfigError
from discofilter.meshwatch import KubernetesConfigMapSource, MeshWatcher
from discofilter.settings import MeshConfigSettings, NamespaceWatchSettings, Settings
from discofilter.simapi import REQUEST_LOG, SimSettings, Store, build_app
from discofilter.tracker import NamespaceTracker
from tests.fakes import FakeNamespaceSource
from tests.harness import running_discofilter, write_kubeconfig
from tests.informer import Informer, running
from tests.test_e2e import ADMIN, OWN, api_client, pod, seeded

DATA = Path(__file__).resolve().parent / "data" / "meshconfig"
FAST = NamespaceWatchSettings(backoff_initial_seconds=0.01, backoff_max_seconds=0.05, short_watch_seconds=0.0)
TEAM_A = "discoverySelectors:\n- matchLabels: {team: a}\n"
TEAMS_AB = "discoverySelectors:\n- matchExpressions:\n  - {key: team, operator: In, values: [a, b]}\n"


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async def wait() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout)


def kubelet_write(mount: Path, text: str) -> None:
    """Update a mounted ConfigMap as kubelet does: a new timestamped dir, then swap the ..data symlink."""
    mount.mkdir(exist_ok=True)
    version = mount / f"..2026_{len(list(mount.glob('..2026_*'))):04d}"
    version.mkdir()
    (version / "mesh").write_text(text)
    tmp = mount / "..data_tmp"
    tmp.symlink_to(version.name)
    tmp.replace(mount / "..data")
    if not (mount / "mesh").is_symlink():
        (mount / "mesh").symlink_to("..data/mesh")


class Harness:
    """Tracker over a fake namespace source plus a MeshWatcher, wired as app.tracker_running does."""

    def __init__(self, settings: MeshConfigSettings, flags: SelectorSet = DEFAULT_MESH_SELECTORS) -> None:
        self.src = FakeNamespaceSource()
        self.membership = Membership(flags)
        self.changes: list[frozenset[str]] = []
        self.tracker = NamespaceTracker(self.membership, self.src, FAST, self.changes.append)
        self.mesh = MeshWatcher(self.membership, settings, FAST, self.changes.append)
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Harness:
        if self.mesh.settings.path is not None:
            self.mesh.load_file()

        async def track() -> None:
            await self.mesh.ready.wait()
            await self.tracker.run()

        self.tasks = [asyncio.create_task(track()), asyncio.create_task(self.mesh.run())]
        await asyncio.wait_for(self.tracker.ready.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


def file_settings(path: Path, **kw: Any) -> MeshConfigSettings:
    return MeshConfigSettings(path=str(path), poll_seconds=0.02, check_seconds=0.02, **kw)


async def test_file_selectors_drive_membership_and_follow_kubelet_updates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mount = tmp_path / "config"
    kubelet_write(mount, TEAM_A)
    h = Harness(file_settings(mount / "mesh"))
    h.src.add("a", team="a")
    h.src.add("b", team="b")
    h.src.add("c")
    async with h:
        assert h.membership.members == {"a"}
        assert h.changes == []
        await until(lambda: h.src.open_watches == 1)
        kubelet_write(mount, TEAMS_AB)
        await until(lambda: "b" in h.membership)
        assert h.changes == [frozenset({"b"})]
        # Label changes still work under the mesh config's selectors.
        h.src.modify("c", team="a")
        await until(lambda: "c" in h.membership)
        # An invalid version keeps the last good selectors and says so at ERROR.
        with caplog.at_level(logging.ERROR, "discofilter.meshwatch"):
            kubelet_write(mount, "discoverySelectors: [{matchLabel: {team: a}}]\n")
            await until(lambda: h.mesh.versions_rejected == 1)
        assert h.membership.members == {"a", "b", "c"}
        assert any("matchLabel" in r.message and "keeping the last good" in r.message for r in caplog.records)
        # Unreadable (the symlink target is gone): kept, logged once however many polls pass.
        caplog.clear()
        with caplog.at_level(logging.ERROR, "discofilter.meshwatch"):
            (mount / "..data").unlink()
            await asyncio.sleep(0.2)
        assert len([r for r in caplog.records if "cannot read" in r.message]) == 1
        assert h.membership.members == {"a", "b", "c"}
        kubelet_write(mount, TEAM_A)
        await until(lambda: h.membership.members == {"a", "c"})
        assert h.changes[-1] == frozenset({"b"})


async def test_no_discovery_selectors_keeps_every_namespace_and_says_it_saves_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cm = yaml.safe_load((DATA / "istio-configmap-pilot-default.yaml").read_text())
    path = tmp_path / "mesh"
    path.write_text(cm["data"]["mesh"])
    h = Harness(file_settings(path))
    h.src.add("plain")
    h.src.add("labelled", **{"istio-injection": "enabled"})
    with caplog.at_level(logging.WARNING, "discofilter.meshwatch"):
        async with h:
            assert h.membership.members == {"plain", "labelled"}
    assert any("saves istiod nothing" in r.message for r in caplog.records)


async def test_invalid_or_missing_file_at_start_up_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "mesh"
    bad.write_text("discoverySelectors: {matchLabels: {a: b}}\n")
    with pytest.raises(MeshConfigError, match="must be a list"):
        Harness(file_settings(bad)).mesh.load_file()
    with pytest.raises(ConfigError, match="cannot read mesh config"):
        Harness(file_settings(tmp_path / "absent")).mesh.load_file()


def test_the_command_stops_with_one_line_on_an_invalid_mesh_config(tmp_path: Path) -> None:
    bad = tmp_path / "mesh"
    bad.write_text("discoverySelectors: [{matchExpressions: [{key: a, operator: Gt, values: ['1']}]}]\n")
    kc = write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:9")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOFILTER_")}
    proc = subprocess.run(
        [sys.executable, "-m", "discofilter", "serve", "--kubeconfig", str(kc), "--mesh-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "DISCOFILTER_LISTEN": "127.0.0.1:0", "DISCOFILTER_HEALTH_LISTEN": "127.0.0.1:0"},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("discofilter: error: mesh config ") and '"Gt"' in lines[-1]
    assert "Traceback" not in proc.stderr


async def test_flags_win_and_each_namespace_istiod_would_miss_is_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "mesh"
    path.write_text(TEAMS_AB)
    flags = SelectorSet((parse_selector("team=a"),))
    h = Harness(file_settings(path, namespace_selectors_given=True), flags=flags)
    h.src.add("a", team="a")
    h.src.add("b", team="b")
    h.src.add("other")

    def warned() -> list[str]:
        return [r.getMessage().split(":")[0] for r in caplog.records if r.levelno == logging.WARNING]

    with caplog.at_level(logging.WARNING, "discofilter.meshwatch"):
        async with h:
            assert h.mesh.ready.is_set()
            await until(lambda: h.mesh.istiod_only_namespaces == 1)
            assert h.membership.members == {"a"}  # the flags decide
            assert warned() == ["namespace b"]
            await asyncio.sleep(0.1)  # rechecks without a change warn nothing new
            assert warned() == ["namespace b"]
            h.src.add("b2", team="b")
            await until(lambda: h.mesh.istiod_only_namespaces == 2)
            assert warned() == ["namespace b", "namespace b2"]
            # istiod's selectors change: a new view, so every mismatch is reported again.
            path.write_text("discoverySelectors:\n- {}\n")
            await until(lambda: h.mesh.istiod_only_namespaces == 3)
            assert sorted(warned()[2:]) == ["namespace b", "namespace b2", "namespace other"]
            assert h.membership.members == {"a"} and h.changes == []


def test_cli_maps_mesh_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    settings, _ = settings_from_args(parser.parse_args(["serve", "--mesh-configmap", "istio-system/istio"]))
    assert settings.mesh == MeshConfigSettings(configmap=("istio-system", "istio"))
    settings, _ = settings_from_args(
        parser.parse_args(["serve", "--mesh-config", "/m", "--namespace-selector", "x=y"])
    )
    assert settings.mesh.path == "/m" and settings.mesh.namespace_selectors_given
    for bad in (["--mesh-configmap", "istio"], ["--mesh-config", "/m", "--mesh-configmap", "a/b"]):
        with pytest.raises(ConfigError):
            settings_from_args(parser.parse_args(["serve", *bad]))
    monkeypatch.setenv("DISCOFILTER_MESH_CONFIG", "/etc/istio/config/mesh")
    settings, _ = settings_from_args(build_parser().parse_args(["serve"]))
    assert settings.mesh.path == "/etc/istio/config/mesh" and not settings.mesh.namespace_selectors_given


# --- the ConfigMap, over the real client and simapi -----------------------------------------------------


def configmap(mesh: str, name: str = "istio") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "istio-system"}, "data": {"mesh": mesh}}


@dataclass
class Sim:
    store: Store
    url: str
    app: web.Application


@contextlib.asynccontextmanager
async def simapi(store: Store) -> AsyncIterator[Sim]:
    settings = SimSettings(
        bookmark_interval=0.5, bookmark_lead=0.2, tokens={ADMIN: "admin", OWN: "discofilter"}
    )
    app = build_app(store, settings)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Sim(store, f"http://127.0.0.1:{runner.addresses[0][1]}", app)
    finally:
        await runner.cleanup()


def istio_store() -> Store:
    store = seeded()
    store.create("namespaces", {"metadata": {"name": "istio-system"}})
    return store


async def test_configmap_watch_follows_updates_resumes_and_deletion(tmp_path: Path) -> None:
    store = istio_store()
    store.create("configmaps", configmap(TEAM_A), namespace="istio-system")
    store.create(
        "configmaps", configmap("discoverySelectors: [{}]", name="istio-canary"), namespace="istio-system"
    )
    async with simapi(store) as sim:
        api = await api_client(write_kubeconfig(tmp_path / "kc", sim.url, token=OWN))
        membership = Membership(DEFAULT_MESH_SELECTORS)
        changes: list[frozenset[str]] = []
        settings = MeshConfigSettings(configmap=("istio-system", "istio"))
        watch = replace(FAST, timeout_seconds=1)  # short watches: resume and 410 paths get exercised
        mesh = MeshWatcher(
            membership,
            settings,
            watch,
            changes.append,
            source=KubernetesConfigMapSource(api, "istio-system", "istio"),
        )
        task = asyncio.create_task(mesh.run())
        try:
            await asyncio.wait_for(mesh.ready.wait(), 5)
            assert membership.selectors == SelectorSet((parse_selector("team=a"),))
            cm = store.get("configmaps", "istio-system", "istio")
            store.update("configmaps", {**cm, "data": {"mesh": TEAMS_AB}})
            await until(lambda: str(membership.selectors) == "team in (a,b)")
            # The server ends each watch after timeoutSeconds=1; the watcher resumes and still follows.
            await asyncio.sleep(1.5)
            cm = store.get("configmaps", "istio-system", "istio")
            store.update(
                "configmaps", {**cm, "data": {"mesh": "discoverySelectors: [{matchLabels: {x: y}}]"}}
            )
            await until(lambda: str(membership.selectors) == "x=y", timeout=10)
            # A bad version keeps the last good one; a deleted ConfigMap is istiod's default again.
            cm = store.get("configmaps", "istio-system", "istio")
            store.update("configmaps", {**cm, "data": {"meshh": TEAM_A}})
            await until(lambda: mesh.versions_rejected == 1)
            assert str(membership.selectors) == "x=y"
            store.delete("configmaps", "istio-system", "istio")
            await until(lambda: not membership.selectors.selectors)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await api.close()
        reads = [r for r in sim.app[REQUEST_LOG] if r.path == "/api/v1/namespaces/istio-system/configmaps"]
        assert reads and all("fieldSelector=metadata.name%3Distio" in r.query for r in reads)
        assert sum("watch=" in r.query for r in reads) >= 2  # resumed at least once


async def test_a_missing_configmap_at_start_is_istiods_default_every_namespace(tmp_path: Path) -> None:
    async with simapi(istio_store()) as sim:
        api = await api_client(write_kubeconfig(tmp_path / "kc", sim.url, token=OWN))
        membership = Membership(DEFAULT_MESH_SELECTORS)
        mesh = MeshWatcher(
            membership,
            MeshConfigSettings(configmap=("istio-system", "istio")),
            FAST,
            lambda _: None,
            source=KubernetesConfigMapSource(api, "istio-system", "istio"),
        )
        task = asyncio.create_task(mesh.run())
        try:
            await asyncio.wait_for(mesh.ready.wait(), 5)
            assert membership.selectors == SelectorSet(())
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await api.close()


class ScriptedSource:
    """A ConfigMap source that answers from a script, for the reflector branches simapi cannot force."""

    def __init__(
        self, lists: list[list[dict[str, Any]]], watches: list[list[tuple[str, dict[str, Any]]]]
    ) -> None:
        self.lists, self.watches = lists, watches
        self.listed = 0
        self.watched: list[str] = []

    async def list(self) -> tuple[list[dict[str, Any]], str]:
        self.listed += 1
        return self.lists.pop(0) if self.lists else [], str(100 + self.listed)

    async def watch(
        self, resource_version: str, timeout_seconds: int
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self.watched.append(resource_version)
        for event in self.watches.pop(0) if self.watches else []:
            yield event
        await asyncio.sleep(3600)


async def test_configmap_watch_relists_after_410_and_backs_off_on_errors() -> None:
    expired = ("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"})
    broken = ("ERROR", {"kind": "Status", "code": 500, "message": "etcd is sad"})
    src = ScriptedSource(
        lists=[[configmap(TEAM_A)], [configmap(TEAMS_AB)]],
        watches=[[("BOOKMARK", {"metadata": {"resourceVersion": "150"}}), expired], [broken]],
    )
    membership = Membership(DEFAULT_MESH_SELECTORS)
    mesh = MeshWatcher(
        membership, MeshConfigSettings(configmap=("istio-system", "istio")), FAST, lambda _: None, source=src
    )
    task = asyncio.create_task(mesh.run())
    try:
        await until(lambda: str(membership.selectors) == "team in (a,b)")
        await until(lambda: len(src.watched) == 3)
        # Listed, watched from the list RV, expired after a bookmark: relisted; then an error: resumed.
        assert src.listed == 2 and src.watched == ["101", "102", "102"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- end to end: informers through discofilter converge when the mesh config changes -----------------

V1 = """discoverySelectors:
- matchLabels: {environment: prod}
  matchExpressions:
  - {key: team, operator: NotIn, values: [catalog]}
"""
V2 = """discoverySelectors:
- matchExpressions:
  - {key: istio.io/rev, operator: Exists}
- matchLabels: {team: catalog}
"""


def truth(store: Store, mesh_text: str, resource: str) -> set[tuple[str, str, str]]:
    selectors = parse_mesh_config(mesh_text, source="test").selectors
    members = {
        ns["metadata"]["name"]
        for ns in store.objects("namespaces")
        if selectors.matches(ns["metadata"].get("labels") or {})
    }
    return {
        (o["metadata"]["namespace"], o["metadata"]["name"], o["metadata"]["resourceVersion"])
        for o in store.objects(resource)
        if o["metadata"]["namespace"] in members
    }


async def converge(store: Store, mesh_text: str, informers: dict[str, Informer]) -> None:
    try:
        await until(lambda: all(i.view() == truth(store, mesh_text, r) for r, i in informers.items()), 10)
    except TimeoutError:
        for r, i in informers.items():
            assert i.view() == truth(store, mesh_text, r), r


@pytest.mark.parametrize("via", ["file", "configmap"])
async def test_informers_converge_when_discovery_selectors_change(tmp_path: Path, via: str) -> None:
    store = istio_store()
    mount = tmp_path / "config"
    if via == "file":
        kubelet_write(mount, V1)
        mesh = MeshConfigSettings(path=str(mount / "mesh"), poll_seconds=0.05)
    else:
        store.create("configmaps", configmap(V1), namespace="istio-system")
        mesh = MeshConfigSettings(configmap=("istio-system", "istio"))
    async with simapi(store) as sim:
        own = write_kubeconfig(tmp_path / "own.kc", sim.url, token=OWN)
        async with running_discofilter(own, settings=Settings(mesh=mesh)) as df:
            assert df.runtime.membership.members == {"mesh-a", "plain-1"}
            api = await api_client(write_kubeconfig(tmp_path / "client.kc", df.url, token=ADMIN))
            core, disc = aclient.CoreV1Api(api), aclient.DiscoveryV1Api(api)
            informers = {
                "pods": Informer(core.list_pod_for_all_namespaces),
                "endpointslices": Informer(disc.list_endpoint_slice_for_all_namespaces),
            }
            try:
                async with running(list(informers.values())):
                    await converge(store, V1, informers)
                    # Change under open watches (a LIST alone already matches the truth).
                    await until(lambda: len(df.runtime.proxy.registry.watches) == 2)
                    if via == "file":
                        kubelet_write(mount, V2)
                    else:
                        cm = store.get("configmaps", "istio-system", "istio")
                        store.update("configmaps", {**cm, "data": {"mesh": V2}})
                    await until(lambda: df.runtime.membership.members == {"mesh-b", "mesh-rev"})
                    await converge(store, V2, informers)
                    assert {ns for ns, _, _ in informers["pods"].view()} == {"mesh-b", "mesh-rev"}
                    assert all(i.expired >= 1 for i in informers.values())
                    # Churn after the change follows the new selectors.
                    store.create("pods", pod("after", "mesh-b"))
                    store.create("pods", pod("after", "mesh-a"))
                    await converge(store, V2, informers)
            finally:
                await api.close()
