"""The real namespace source against simapi's real error answers: an error status is an error.

kubernetes-asyncio raises ApiException on an error status only when it decodes the body itself; with
``_preload_content=False`` (how the source reads, see tracker.py) it hands back the raw response of a
401 or 403 like any other. A Status body read as a namespace list has no items: membership would sync
as "no namespace is in the mesh" and every filtered answer would be empty, a mesh-wide outage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from discofilter.errors import UpstreamError
from discofilter.simapi import SimSettings, Store
from discofilter.tracker import KubernetesNamespaceSource
from tests.harness import running_discofilter, serving_simapi, write_kubeconfig

OWN = "discofilter-token"


@pytest.fixture
async def sim() -> AsyncIterator[tuple[str, Store]]:
    store = Store(seed=3)
    store.create("namespaces", {"metadata": {"name": "mesh-a", "labels": {"istio-injection": "enabled"}}})
    async with serving_simapi(store, SimSettings(tokens={OWN: "discofilter"})) as url:
        yield url, store


async def _source(kubeconfig: Path) -> tuple[KubernetesNamespaceSource, object]:
    from kubernetes_asyncio.client import ApiClient, Configuration
    from kubernetes_asyncio.config.kube_config import load_kube_config

    cfg = Configuration()
    await load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    api = ApiClient(cfg)
    return KubernetesNamespaceSource(api), api


@pytest.mark.parametrize("token", [None, "not-a-known-token"], ids=["anonymous-403", "bad-token-401"])
async def test_an_error_status_on_the_namespace_list_and_watch_raises(
    sim: tuple[str, Store], tmp_path: Path, token: str | None
) -> None:
    url, _ = sim
    source, api = await _source(write_kubeconfig(tmp_path / "kc", url, token=token))
    code = 403 if token is None else 401
    try:
        with pytest.raises(UpstreamError) as listed:
            await source.list()
        assert listed.value.status == code
        assert str(code) in str(listed.value)
        with pytest.raises(UpstreamError) as watched:
            async for _ in source.watch("1", 30):
                pass
        assert watched.value.status == code
    finally:
        await api.close()  # type: ignore[attr-defined]


async def test_the_source_still_lists_and_watches_with_a_good_token(
    sim: tuple[str, Store], tmp_path: Path
) -> None:
    url, store = sim
    source, api = await _source(write_kubeconfig(tmp_path / "kc", url, token=OWN))
    try:
        items, rv = await source.list()
        assert [i["metadata"]["name"] for i in items] == ["mesh-a"] and rv
        stream = source.watch(rv, 30)
        assert (await anext(stream))[0] == "OPEN"
        store.create("namespaces", {"metadata": {"name": "mesh-b", "labels": {"istio-injection": "enabled"}}})
        etype, obj = await asyncio.wait_for(anext(stream), 5)
        assert (etype, obj["metadata"]["name"]) == ("ADDED", "mesh-b")
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await api.close()  # type: ignore[attr-defined]


async def test_a_forbidden_namespace_list_never_syncs_membership(
    sim: tuple[str, Store], tmp_path: Path
) -> None:
    """discofilter without rights to list namespaces answers filtered reads 503, never an empty list."""
    url, _ = sim
    kubeconfig = write_kubeconfig(tmp_path / "kc", url)  # no token: simapi answers 403
    async with running_discofilter(kubeconfig, wait_ready=False) as df:
        await asyncio.sleep(0.5)  # several list attempts at the tracker's first backoff steps
        assert not df.runtime.tracker.ready.is_set()
        assert df.runtime.membership.synced is False
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{df.url}/api/v1/pods", headers={"Authorization": f"Bearer {OWN}"}) as resp,
        ):
            assert resp.status == 503, await resp.text()


@pytest.mark.parametrize("token", [None, "not-a-known-token"], ids=["anonymous-403", "bad-token-401"])
async def test_an_error_status_on_the_mesh_configmap_list_and_watch_raises(
    sim: tuple[str, Store], tmp_path: Path, token: str | None
) -> None:
    """Read as a list, a 403 Status has no items: "no ConfigMap", which is istiod's default of every
    namespace in the mesh. It must be an error instead."""
    from kubernetes_asyncio.client import ApiClient, Configuration
    from kubernetes_asyncio.config.kube_config import load_kube_config

    from discofilter.meshwatch import KubernetesConfigMapSource

    url, _ = sim
    cfg = Configuration()
    await load_kube_config(
        config_file=str(write_kubeconfig(tmp_path / "kc", url, token=token)), client_configuration=cfg
    )
    api = ApiClient(cfg)
    source = KubernetesConfigMapSource(api, "istio-system", "istio")
    code = 403 if token is None else 401
    try:
        with pytest.raises(UpstreamError) as listed:
            await source.list()
        assert listed.value.status == code
        with pytest.raises(UpstreamError) as watched:
            async for _ in source.watch("1", 30):
                pass
        assert watched.value.status == code
        if code == 403:
            assert "needs list and watch on configmaps" in str(listed.value)
    finally:
        await api.close()
