"""Test helpers shared by the core tests: feeding input split every way (h11's t_body_reader)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def splits(data: bytes, *, seed: int = 0, random_rounds: int = 3) -> Iterator[tuple[str, list[bytes]]]:
    """The ways a stream can arrive: whole, one byte at a time, at random points, in fixed sizes."""
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    for size in (2, 7, 2048, 16 * 1024):
        yield f"size{size}", [data[i : i + size] for i in range(0, len(data), size)]
    rng = random.Random(seed)
    for r in range(random_rounds):
        cuts = (
            sorted(rng.sample(range(1, max(2, len(data))), k=min(len(data) - 1, 40))) if len(data) > 1 else []
        )
        pieces, prev = [], 0
        for c in cuts:
            pieces.append(data[prev:c])
            prev = c
        pieces.append(data[prev:])
        yield f"random{r}", pieces


def feed_every_split(
    data: bytes, make: Callable[[], Callable[[bytes], list[T]]], *, bytewise_limit: int = 200_000
) -> list[T]:
    """Feed ``data`` through a fresh feeder for each split; assert all outputs are identical; return it."""
    reference: list[T] | None = None
    for name, pieces in splits(data):
        if name == "bytewise" and len(data) > bytewise_limit:
            continue
        feed = make()
        out: list[T] = []
        for p in pieces:
            out.extend(feed(p))
        if reference is None:
            reference = out
        else:
            assert out == reference, f"split {name!r} gave a different result"
    assert reference is not None
    return reference


def manifest_entry(name: str) -> dict[str, object]:
    """The manifest.json record of one fixture file."""
    from tests import fixtures

    for entry in fixtures.manifest()["files"]:
        if entry.get("file") == name:
            return dict(entry)
    raise KeyError(name)


def fixture_names(*, kind: str | tuple[str, ...], suffix: str = ".json") -> list[str]:
    from tests import fixtures

    kinds = (kind,) if isinstance(kind, str) else kind
    return [
        e["file"]
        for e in fixtures.manifest()["files"]
        if e.get("type") in kinds and (e.get("file") or "").endswith(suffix)
    ]


def reads(name: str) -> dict[str, list[int]]:
    """The ``*.reads.json`` record of a stream capture: read, chunk and event end offsets."""
    import json

    from tests import fixtures

    data: dict[str, list[int]] = json.loads((fixtures.FIXTURES / (name + ".reads.json")).read_text())
    return data
