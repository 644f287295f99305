"""NamespaceResolver: decides the namespaces a stream met before the namespace watch showed them.

A pod of a new namespace can reach the pods watch before the namespace reaches discofilter's namespace
watch (``core.lifecycle``). Its stream then stops at that event (``WatchFilter.blocked``) and waits
here. Deciding it needs facts, never a guess:

1. A lookup: a LIST of that one namespace (``fieldSelector=metadata.name=NS``) with discofilter's own
   credentials. A LIST, not a GET: it needs no RBAC verb beyond the ``list`` the namespace watch already
   has, and its answer carries the resourceVersion it was read at, so the namespace watch's older
   events of that namespace can be told apart (``Membership.learn``). One lookup per namespace at a
   time (single flight), shared by every watch and LIST waiting on it; the result stays in membership.
2. The namespace was not found: it is gone, so the event is of a namespace that was created and deleted
   before the namespace watch showed either. The namespace watch will: wait until it has (a tombstone
   then decides), or until it is past the lookup's resourceVersion.
3. Still undecided (the namespace watch relisted past it, a tombstone was forgotten, the lookup failed,
   or the wait ran out): ``resolve`` returns False and the caller ends the watch with 410, so the
   client relists: the price of today's membership change, paid only where nothing else is exact.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from discofilter.core.membership import Membership, parse_rv
from discofilter.errors import DiscofilterError

log = logging.getLogger("discofilter.resolver")

RawDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResolverSettings:
    wait_seconds: float = 10.0
    """How long a stream waits for the namespace watch to show a namespace that a lookup found gone.
    The namespace watch delivers within milliseconds when healthy; 10 s covers a slow or reconnecting
    one, and stays well under client-go's 30 s backoff cap, so a relist after it costs no more than a
    watch ended by a real membership change would."""
    poll_seconds: float = 0.05
    """How often that wait looks at membership: the path is rare (a namespace created and deleted
    before the namespace watch showed it), and 50 ms is short next to a stream's event rate."""


class NamespaceLookup(Protocol):
    async def lookup(self, name: str) -> tuple[RawDict | None, str]:
        """A consistent read of one namespace: (the object, or None if it does not exist; the read's RV)."""
        ...


class NamespaceLister(Protocol):
    """What a lookup reads through: ``tracker.KubernetesNamespaceSource``, or a test's fake source."""

    async def list(self) -> tuple[list[RawDict], str]: ...


class SelectingLister(Protocol):
    async def list(self, field_selector: str | None = None) -> tuple[list[RawDict], str]: ...


def _named(items: list[RawDict], name: str) -> RawDict | None:
    return next((i for i in items if (i.get("metadata") or {}).get("name") == name), None)


class KubernetesNamespaceLookup:
    """The real lookup: the namespace source's LIST narrowed to one name
    (``fieldSelector=metadata.name=NS``, a quorum read), with the source's error handling."""

    def __init__(self, source: SelectingLister) -> None:
        self._source = source

    async def lookup(self, name: str) -> tuple[RawDict | None, str]:
        items, rv = await self._source.list(field_selector=f"metadata.name={name}")
        return _named(items, name), rv


class ListingLookup:
    """A lookup from any source that can LIST every namespace (``tracker.NamespaceSource``): for tests
    and fakes. A real cluster uses ``KubernetesNamespaceLookup``, which reads one namespace."""

    def __init__(self, source: NamespaceLister) -> None:
        self._source = source

    async def lookup(self, name: str) -> tuple[RawDict | None, str]:
        items, rv = await self._source.list()
        return _named(items, name), rv


class NamespaceResolver:
    def __init__(
        self, membership: Membership, lookup: NamespaceLookup, settings: ResolverSettings | None = None
    ) -> None:
        self.membership = membership
        self.lookup = lookup
        self.settings = settings or ResolverSettings()
        self._inflight: dict[str, asyncio.Future[int | None]] = {}
        self.found = 0
        """Lookups that found the namespace (it became known before the namespace watch showed it)."""
        self.absent = 0
        """Lookups that found it gone."""
        self.failed = 0
        """Lookups that failed (the API server did not answer): the stream relists."""

    async def resolve(self, namespace: str, rv: int | None) -> bool:
        """Wait until membership can decide an event of ``namespace`` at ``rv``; False if it cannot."""
        m = self.membership
        if m.decide_at(namespace, rv) is not None:
            return True
        try:
            read_at = await self._lookup_once(namespace)
        except (DiscofilterError, aiohttp.ClientError, OSError, ValueError) as exc:
            log.warning("namespace %s: lookup failed (%s); the stream waiting on it relists", namespace, exc)
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.wait_seconds
        while m.decide_at(namespace, rv) is None:
            caught_up = read_at is not None and m.last_rv is not None and m.last_rv >= read_at
            if caught_up or loop.time() >= deadline:
                log.info(
                    "namespace %s: an event at rv %s cannot be decided (namespace gone, and the "
                    "namespace watch %s); its stream relists",
                    namespace,
                    rv,
                    "passed it without showing it" if caught_up else "did not show it in time",
                )
                return False
            await asyncio.sleep(self.settings.poll_seconds)
        return True

    async def _lookup_once(self, namespace: str) -> int | None:
        """One lookup of ``namespace`` at a time, shared by every waiter; returns the read's RV."""
        fut = self._inflight.get(namespace)
        if fut is None:
            fut = asyncio.ensure_future(self._lookup(namespace))
            self._inflight[namespace] = fut
            fut.add_done_callback(lambda _: self._inflight.pop(namespace, None))
        return await asyncio.shield(fut)

    async def _lookup(self, namespace: str) -> int | None:
        try:
            obj, read_rv = await self.lookup.lookup(namespace)
        except BaseException:
            self.failed += 1
            raise
        if obj is None:
            self.absent += 1
        else:
            self.found += 1
            if self.membership.learn(namespace, obj, read_rv):
                log.info(
                    "namespace %s resolved on demand at rv %s: %s",
                    namespace,
                    read_rv,
                    "in the mesh" if namespace in self.membership else "not in the mesh",
                )
        return parse_rv(read_rv)


__all__ = [
    "KubernetesNamespaceLookup",
    "ListingLookup",
    "NamespaceLookup",
    "NamespaceResolver",
    "ResolverSettings",
]
