"""Server-side exclusion: which non-mesh namespaces the API server is asked to leave out, and when.

discofilter adds ``metadata.namespace!=NAME`` requirements to the fieldSelector of its *upstream*
cluster-wide LISTs and WATCHes of pods, services, endpoints and endpointslices. kube-apiserver evaluates
them in its watch cache, before serializing (REFERENCE.md, "Field selectors on metadata.namespace":
200 with 42 and 2,042 requirements, JSON and protobuf), so an excluded namespace's events cost neither
the API server's encoding and sending nor discofilter's reading and dropping. The client's request and
view do not change: the client-side filter still runs on everything that arrives, and only
namespaces outside the mesh are ever excluded, so excluding one more only removes events the filter
would have dropped.

Rule 1: no I/O here, and no clock: callers pass ``now``. Everything a request needs is decided here
(which namespaces, the bounds, the selector text, when an open watch may switch) and tested alone.

The invariant the shell relies on: ``Planner.for_request(members)`` never returns a namespace that is
in ``members`` at the moment of the call. A namespace that joins the mesh therefore leaves every
request built after the membership change, before any of its objects can be kept: the relist the
change causes is never excluded from it, whatever the plan says and however stale the plan is.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import quote, unquote

REQUIREMENT: Final = "metadata.namespace!="
# What one requirement costs in the query string: the fieldSelector value is percent-encoded ('!' and
# '=' as %21 and %3D, the joining ',' as %2C); namespace names are DNS labels and need no escaping.
_ENCODED_OVERHEAD: Final = len(quote(REQUIREMENT, safe="")) + len("%2C")


def requirement_bytes(namespace: str) -> int:
    """Bytes that excluding ``namespace`` adds to an upstream request line."""
    return _ENCODED_OVERHEAD + len(quote(namespace, safe=""))


def selector_text(namespaces: Iterable[str]) -> str:
    """The requirements, ANDed with commas (``fields.ParseSelector``), in the given order."""
    return ",".join(REQUIREMENT + ns for ns in namespaces)


def combine(client_selector: str | None, namespaces: Iterable[str]) -> str:
    """The client's own fieldSelector (e.g. istiod's ``status.phase!=Failed``) AND the exclusion."""
    ours = selector_text(namespaces)
    if not client_selector:
        return ours
    return f"{client_selector},{ours}" if ours else client_selector


def excluded_by(field_selector: str) -> frozenset[str]:
    """The namespaces a fieldSelector excludes with plain ``metadata.namespace!=`` requirements (tests,
    and the metrics of what was sent)."""
    return frozenset(
        term[len(REQUIREMENT) :] for term in field_selector.split(",") if term.startswith(REQUIREMENT)
    )


@dataclass(frozen=True, slots=True)
class Bounds:
    max_namespaces: int
    """K: requirements per request at most (each costs the API server ~85 ns per event per watcher)."""
    max_selector_bytes: int
    """Encoded bytes the requirements may add to a request line."""


class Planner:
    """Chooses the exclusion set from what the filters dropped, per namespace, over recent windows.

    ``tally`` is filled by the watch filters as they drop events (namespace as bytes -> dropped bytes);
    ``replan`` folds it into a decaying score per namespace and chooses at most K namespaces within the
    byte bound. A namespace that is excluded sends nothing to drop, so its score is frozen while it is
    excluded (otherwise it would decay, be swapped out, produce drops again, come back: a flap that
    re-opens every watch twice). A challenger replaces the weakest excluded namespace only when it
    scores ``margin`` higher, for the same reason.

    The start, before anything was dropped: every non-mesh namespace when they fit in the bounds, else
    the ones with the highest scores so far (initial LIST tallies), then by name. That is the "known
    set to start from": a fresh process excludes at once.
    """

    __slots__ = ("_current", "bounds", "decay", "margin", "scores", "tally", "version")

    MAX_TALLY: Final = 16_384
    """Namespaces tallied at most between plans, whatever the upstream sends (a cluster has at most 10k)."""

    def __init__(self, bounds: Bounds, *, decay: float = 0.5, margin: float = 0.5) -> None:
        self.bounds = bounds
        self.decay = decay
        self.margin = margin
        self.tally: dict[bytes, int] = {}
        self.scores: dict[str, float] = {}
        self._current: tuple[str, ...] = ()
        self.version = 0
        """Bumped whenever the planned set changes: open watches compare it to re-open."""

    @property
    def current(self) -> tuple[str, ...]:
        """The planned set, sorted (so equal sets give equal selectors), mesh namespaces not removed."""
        return self._current

    def replan(self, candidates: Iterable[str]) -> bool:
        """Fold the tally into the scores and choose again among ``candidates`` (the namespaces that
        exist and are outside the mesh now). Returns whether the planned set changed."""
        cands = set(candidates)
        tally, self.tally = self.tally, {}
        excluded = set(self._current)
        scores = self.scores
        for key, dropped in tally.items():
            try:
                ns = key.decode()
            except UnicodeDecodeError:
                continue
            scores[ns] = scores.get(ns, 0.0) * (1.0 if ns in excluded else self.decay) + dropped
        for ns in list(scores):
            if ns not in cands:
                del scores[ns]  # deleted, or joined the mesh: forget it
            elif ns not in excluded and ns.encode() not in tally:
                scores[ns] *= self.decay
        chosen = self._choose(cands, excluded)
        if chosen == self._current:
            return False
        self._current = chosen
        self.version += 1
        return True

    def _choose(self, cands: set[str], excluded: set[str]) -> tuple[str, ...]:
        k, budget = self.bounds.max_namespaces, self.bounds.max_selector_bytes
        if k <= 0 or budget <= 0:
            return ()
        if len(cands) <= k and sum(map(requirement_bytes, cands)) <= budget:
            return tuple(sorted(cands))
        score = self.scores.get

        def rank(ns: str) -> tuple[float, str]:
            return (-score(ns, 0.0), ns)

        keep = sorted((ns for ns in excluded if ns in cands), key=rank)[:k]
        challengers = sorted((ns for ns in cands if ns not in excluded), key=rank)
        i = 0
        while len(keep) < k and i < len(challengers):
            keep.append(challengers[i])
            i += 1
        keep.sort(key=rank)
        while i < len(challengers) and keep:
            weakest, best = keep[-1], challengers[i]
            if score(best, 0.0) <= score(weakest, 0.0) * (1.0 + self.margin):
                break
            keep[-1] = best
            keep.sort(key=rank)
            i += 1
        out: list[str] = []
        used = 0
        for ns in keep:  # strongest first: the byte bound drops the weakest
            cost = requirement_bytes(ns)
            if used + cost > budget:
                continue
            out.append(ns)
            used += cost
        return tuple(sorted(out))

    def for_request(self, members: Container[str]) -> tuple[str, ...]:
        """The namespaces to exclude on a request built now: the plan minus the live mesh members."""
        return tuple(ns for ns in self._current if ns not in members)


def tally_drop(tally: dict[bytes, int], namespace: bytes, size: int) -> None:
    """Count ``size`` dropped bytes of ``namespace`` (bounded by ``Planner.MAX_TALLY`` entries)."""
    if namespace in tally:
        tally[namespace] += size
    elif len(tally) < Planner.MAX_TALLY:
        tally[namespace] = size


# -- open watches ------------------------------------------------------------------------------------

Refusal = Literal["same", "stopped", "unordered", "no_rv", "stale", "rate_limited"]


@dataclass(frozen=True, slots=True)
class ReopenPolicy:
    min_interval_seconds: float
    """Re-opens of one watch at most this often."""
    fresh_seconds: float
    """The last processed resourceVersion is used only this long after it arrived."""


def may_reopen(
    policy: ReopenPolicy,
    *,
    now: float,
    wanted: tuple[str, ...],
    active: tuple[str, ...],
    ordered: bool,
    last_rv: str | None,
    last_rv_at: float | None,
    last_reopen_at: float | None,
) -> Refusal | None:
    """Whether an open watch may re-open its upstream now with ``wanted`` instead of ``active``
    (None: yes; else why not).

    - ordered: events so far came in resourceVersion order, so "everything up to the last processed
      one" is a point in the stream. Not so during a watch's initial state (``resourceVersion`` "" or
      "0", or ``sendInitialEvents``: synthetic ADDED events in no order); the shell sets it after the
      first BOOKMARK (for streaming lists, the ``k8s.io/initial-events-end`` one).
    - fresh: the API server's watch cache answers a watch from a resourceVersion only while it still
      holds the events after it (1.28 cacher: at least ``eventFreshDuration`` = 75 s of history, then
      410 Gone). A BOOKMARK comes about every 60 s, so a quiet watch is fresh again within a minute.
    """
    if wanted == active:
        return "same"
    if not ordered:
        return "unordered"
    if last_rv is None or last_rv_at is None:
        return "no_rv"
    if now - last_rv_at > policy.fresh_seconds:
        return "stale"
    if last_reopen_at is not None and now - last_reopen_at < policy.min_interval_seconds:
        return "rate_limited"
    return None


def remaining_timeout(timeout_seconds: str | None, elapsed: float) -> int | None:
    """The client's ``timeoutSeconds`` left after ``elapsed`` seconds, for a re-opened upstream watch
    (at least 1: the API server treats 0 as "no timeout given")."""
    if not timeout_seconds:
        return None
    try:
        total = int(timeout_seconds)
    except ValueError:
        return None
    if total <= 0:
        return None
    return max(1, int(total - elapsed))


# -- paginated LISTs ---------------------------------------------------------------------------------


class PageMemory:
    """continue token -> the exclusion its page was read with, so every page of one LIST carries the
    same requirements.

    The safe answers when a later page comes:
    - token known, and none of its excluded namespaces joined the mesh since: the same exclusion.
    - token known, and one of them joined: a 410 Expired for the token, as the API server answers an
      expired continue. Going on with the old exclusion would hide the new member's objects; dropping
      it would change the selector mid-list. client-go's pager then lists again without paging, and
      the client's informer relists after a membership change anyway.
    - token unknown (another replica, a restart, evicted here): no exclusion. The client-side filter
      keeps the client's view exact; an API server that binds the token to the first page's selector
      answers it with its own error, as it would to any client.
    """

    __slots__ = ("_pages", "capacity")

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._pages: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    def remember(self, token: str, namespaces: tuple[str, ...]) -> None:
        self._pages[token] = namespaces
        self._pages.move_to_end(token)
        while len(self._pages) > self.capacity:
            self._pages.popitem(last=False)

    def for_continue(
        self, token: str, members: Container[str]
    ) -> tuple[str, ...] | Literal["expired"] | None:
        """The exclusion for the page after ``token``: a tuple, None when unknown, "expired" (see above)."""
        got = self._pages.get(token)
        if got is None:
            return None
        if any(ns in members for ns in got):
            return "expired"
        return got


# -- the query ---------------------------------------------------------------------------------------


def rewrite_query(
    query: str,
    *,
    exclude: tuple[str, ...] = (),
    set_params: Mapping[str, str | None] | None = None,
) -> str:
    """``query`` (raw, percent-encoded, without '?') with the exclusion ANDed into its first
    ``fieldSelector`` (the one Go's ``url.Values.Get`` reads) and ``set_params`` replacing (a value) or
    removing (None) parameters. Every other parameter stays exactly as the client encoded it."""
    set_params = dict(set_params or {})
    out: list[str] = []
    field_done = not exclude
    for part in query.split("&") if query else []:
        name = unquote(part.partition("=")[0])
        if name in set_params:
            continue
        if name == "fieldSelector" and not field_done:
            client = unquote(part.partition("=")[2].replace("+", " "))
            out.append("fieldSelector=" + quote(combine(client, exclude), safe=""))
            field_done = True
            continue
        out.append(part)
    if not field_done:
        out.append("fieldSelector=" + quote(selector_text(exclude), safe=""))
    for name, value in set_params.items():
        if value is not None:
            out.append(f"{quote(name, safe='')}={quote(value, safe='')}")
    return "&".join(out)


__all__ = [
    "REQUIREMENT",
    "Bounds",
    "PageMemory",
    "Planner",
    "ReopenPolicy",
    "combine",
    "excluded_by",
    "may_reopen",
    "remaining_timeout",
    "requirement_bytes",
    "rewrite_query",
    "selector_text",
    "tally_drop",
]
