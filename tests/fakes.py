"""FakeNamespaceSource: an in-memory namespace list/watch, as client-go's FakeControllerSource.

Every add/modify/delete bumps the resourceVersion and reaches open watches. It stands in for the
API server only in tests of the tracker and of the proxy's watch handling; end-to-end tests use the
real kubernetes-asyncio source against the simulated API server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

RawDict = dict[str, Any]


class FakeNamespaceSource:
    def __init__(self, rv: int = 100) -> None:
        self.rv = rv
        self.items: dict[str, RawDict] = {}
        self.history: list[tuple[int, str, RawDict]] = []
        self.oldest_rv = rv
        self._queues: list[asyncio.Queue[tuple[str, RawDict] | None]] = []
        self.lists = 0
        self.watches = 0
        self.fail_next: list[BaseException] = []

    def _emit(self, etype: str, obj: RawDict) -> None:
        self.history.append((self.rv, etype, obj))
        for q in self._queues:
            q.put_nowait((etype, obj))

    def _obj(self, name: str, labels: dict[str, str]) -> RawDict:
        self.rv += 1
        return {"metadata": {"name": name, "resourceVersion": str(self.rv), "labels": dict(labels)}}

    def add(self, name: str, **labels: str) -> None:
        obj = self._obj(name, labels)
        self.items[name] = obj
        self._emit("ADDED", obj)

    def modify(self, name: str, **labels: str) -> None:
        obj = self._obj(name, labels)
        self.items[name] = obj
        self._emit("MODIFIED", obj)

    def delete(self, name: str) -> None:
        old = self.items.pop(name)
        self.rv += 1
        obj = {"metadata": {**old["metadata"], "resourceVersion": str(self.rv)}}
        self._emit("DELETED", obj)

    def bookmark(self) -> None:
        for q in self._queues:
            q.put_nowait(("BOOKMARK", {"metadata": {"resourceVersion": str(self.rv)}}))

    def expire(self) -> None:
        """Forget history, as etcd compaction does: watches from older RVs get 410."""
        self.oldest_rv = self.rv
        self.history.clear()
        for q in self._queues:
            q.put_nowait(
                ("ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})
            )

    @property
    def open_watches(self) -> int:
        """Watches that are streaming now (a generator body runs only once it is first awaited)."""
        return len(self._queues)

    def end_watches(self) -> None:
        for q in self._queues:
            q.put_nowait(None)

    async def list(self) -> tuple[list[RawDict], str]:
        self.lists += 1
        if self.fail_next:
            raise self.fail_next.pop(0)
        # A consistent LIST answers at the current revision, never one that is already compacted.
        self.rv = max(self.rv, self.oldest_rv)
        return list(self.items.values()), str(self.rv)

    async def watch(self, resource_version: str, timeout_seconds: int) -> AsyncIterator[tuple[str, RawDict]]:
        self.watches += 1
        if self.fail_next:
            raise self.fail_next.pop(0)
        start = int(resource_version)
        if start < self.oldest_rv:
            yield "ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
            return
        q: asyncio.Queue[tuple[str, RawDict] | None] = asyncio.Queue()
        for rv, etype, obj in self.history:
            if rv > start:
                q.put_nowait((etype, obj))
        self._queues.append(q)
        try:
            while True:
                item = await q.get()
                if item is None:
                    return
                yield item
        finally:
            self._queues.remove(q)
