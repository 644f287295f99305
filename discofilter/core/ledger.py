"""ResumeLedger: which membership generation each resourceVersion handed to a client was filtered under.

A client holds state "as of" a resourceVersion that discofilter gave it: a LIST's
``metadata.resourceVersion``, or the last event forwarded on a watch. When it later watches from that
RV, its state is only right if membership has not changed since the filter that produced it ran.

- A complete answer (a one-page LIST, a watch stream's last event) records its generation; a later
  complete answer at the same RV replaces it, since a client that relists gets the newer filtering.
- A paginated LIST is only as fresh as its oldest page: the generation is carried from page to page
  through the ``continue`` tokens, and the final page records the oldest. A page whose incoming token
  is unknown here (another replica, a restart) counts as infinitely old, so the client relists.

Bounded: LRUs of ``max_entries``. An RV not found falls back to ``Membership.resume_is_current``.
Rule 1: no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

# Entries come from LIST answers and watch-stream ends: a few istiod replicas times four resources
# make a handful a minute, so 65,536 covers days of history for any realistic set of clients, at
# well under 20 MB.
DEFAULT_MAX_ENTRIES: Final = 65_536
UNKNOWN_GENERATION: Final = -1


class _LRU(OrderedDict[tuple[str, str], int]):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: tuple[str, str], value: int) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class ResumeLedger:
    __slots__ = ("_entries", "_pages")

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._entries = _LRU(max_entries)
        self._pages = _LRU(max_entries)

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, resource: str, rv: str, generation: int) -> None:
        """A complete answer at ``rv`` was filtered under ``generation``."""
        self._entries.put((resource, rv), generation)

    def record_page(
        self, resource: str, rv: str, generation: int, *, continue_in: str | None, continue_out: str | None
    ) -> None:
        """One LIST page. ``continue_in`` is the token the client sent, ``continue_out`` the one it got."""
        if continue_in:
            generation = min(generation, self._pages.get((resource, continue_in), UNKNOWN_GENERATION))
        if continue_out:
            self._pages.put((resource, continue_out), generation)
        else:
            self.record(resource, rv, generation)

    def generation(self, resource: str, rv: str) -> int | None:
        return self._entries.get((resource, rv))
