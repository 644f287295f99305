"""A client-go-style informer in kubernetes-asyncio: LIST, then WATCH from its resourceVersion with
bookmarks, resume from the last RV, relist on 410. It keeps a cache, as istiod's informers do, so the
tests can compare what a client ends up believing with the truth."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client, watch

Key = tuple[str, str]


class Informer:
    def __init__(self, list_fn: Callable[..., Any]) -> None:
        self.list_fn = list_fn
        self.cache: dict[Key, dict[str, Any]] = {}
        self.rv = ""
        self.lists = 0
        self.expired = 0
        self.events = 0
        self.bookmarks = 0

    @staticmethod
    def key(obj: dict[str, Any]) -> Key:
        meta = obj["metadata"]
        return meta.get("namespace", ""), meta["name"]

    async def relist(self) -> None:
        # client-go lists from the watch cache ("0") first and reads consistently ("") after a 410.
        resp = await self.list_fn(resource_version="0" if self.lists == 0 else "", _preload_content=False)
        doc = await resp.json()
        self.cache = {self.key(o): o for o in doc["items"]}
        self.rv = doc["metadata"]["resourceVersion"]
        self.lists += 1

    async def run(self) -> None:
        await self.relist()
        while True:
            w = watch.Watch()
            try:
                async for ev in w.stream(
                    self.list_fn, resource_version=self.rv, allow_watch_bookmarks=True, timeout_seconds=30
                ):
                    obj = ev["raw_object"]
                    self.rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] == "BOOKMARK":
                        self.bookmarks += 1
                        continue
                    self.events += 1
                    if ev["type"] == "DELETED":
                        self.cache.pop(self.key(obj), None)
                    else:
                        self.cache[self.key(obj)] = obj
            except client.ApiException as exc:
                if exc.status != 410:
                    raise
                self.expired += 1
                await asyncio.sleep(0.05)  # client-go backs off before relisting; keep it short here
                await self.relist()
            finally:
                await w.close()

    def view(self) -> set[tuple[str, str, str]]:
        return {(ns, name, o["metadata"]["resourceVersion"]) for (ns, name), o in self.cache.items()}


@contextlib.asynccontextmanager
async def running(informers: list[Informer]):  # type: ignore[no-untyped-def]
    tasks = [asyncio.create_task(i.run()) for i in informers]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


def istiod_informers(api: client.ApiClient) -> dict[str, Informer]:
    """One cluster-wide informer per filtered kind, as istiod runs them (JSON)."""
    core, disc = client.CoreV1Api(api), client.DiscoveryV1Api(api)
    return {
        "pods": Informer(core.list_pod_for_all_namespaces),
        "services": Informer(core.list_service_for_all_namespaces),
        "endpoints": Informer(core.list_endpoints_for_all_namespaces),
        "endpointslices": Informer(disc.list_endpoint_slice_for_all_namespaces),
    }
