"""WatchFilter's in-place hot loop (listperf): escapes and quotes in the head never fool it.

The fast path matches name/generateName/namespace values with ``[^"]*`` and then refuses any head with a
backslash; these cases put escaped quotes, backslashes and fake ``"namespace":"`` keys into every value
the head holds, split the stream anywhere, and hold the fast path to the slow one and to the truth.
"""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discofilter.core.watchfilter import WatchFilter

pieces = st.sampled_from([*'a"\\,:{}n', "namespace", '"namespace":"', "mesh-a", '\\"', "\u00e9", "\n"])
tricky = st.lists(pieces, max_size=8).map("".join)


def run(data: bytes, cuts: list[int], fast: bool) -> bytes:
    wf = WatchFilter({"mesh-a"}, use_fast_path=fast)
    out: list[bytes] = []
    prev = 0
    for c in [*sorted(cuts), len(data)]:
        out += wf.feed(data[prev:c])
        prev = max(prev, c)
    wf.feed_eof()
    assert wf.events_in == 3
    assert wf.events_kept + wf.events_dropped == 3
    return b"".join(out)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    tricky, tricky, st.sampled_from(["mesh-a", "plain"]), tricky, st.lists(st.integers(0, 600), max_size=4)
)
def test_escapes_in_the_head_never_fool_the_fast_path(
    name: str, generate: str, ns: str, label: str, cuts: list[int]
) -> None:
    meta = {"name": name, "generateName": generate, "namespace": ns, "labels": {"namespace": label}}
    event = {"type": "ADDED", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": meta}}
    data = (orjson.dumps(event) + b"\n") * 3
    expected = data if ns == "mesh-a" else b""
    assert run(data, cuts, fast=True) == expected
    assert run(data, cuts, fast=False) == expected
