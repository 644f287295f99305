"""The benchmark's settings: what ``discofilter bench`` flags map onto. Each default says why."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from discofilter.bench.workload import WorkloadSettings

DECODE_MODELS: Final = ("json", "orjson")
CLIENT_GO_JSON_SECONDS_PER_BYTE: Final = 0.24e-3 / 20_000
"""client-go decodes a ~20 KB pod of JSON in ~0.24 ms (REFERENCE.md, a real 1.28 informer): 12 ns/byte.
The second NET estimate charges this per byte a client receives."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSettings:
    out: Path = Path("bench-out")
    """Where results.json, the PNG plots and the processes' logs go."""
    events: int = 10_000
    """Churn events in the saturation stream: ~72 MB, pods 55% of the events and most of the bytes. Enough
    variety (every stage of ~900 pod lives), and simapi writes and records it in ~3 s; ``loops`` makes the
    replays long. The default run takes about 3 minutes on 2 cores."""
    loops: int = 5
    """Times the recorded stream is played in one saturation replay (~360 MB): long enough (0.5-6 s) that a
    replay's timing is not noise."""
    trials: int = 3
    """Saturation runs per variant, interleaved (each trial runs every variant once, in a rotated order), so
    a noisy neighbour hurts all variants alike; the median is reported."""
    rate: float = 200.0
    """The headline rate: events/s of the latency runs, and the paced rate the verdict reports. ~18 pods
    created and deleted per second (11 events per pod life): a ClusterLoader2 load test churns 10-20
    pods/s, so a busy cluster, not a saturated one; REFERENCE.md's measurements on a real API server
    were taken at 10-160 events/s."""
    paced_rates: tuple[float, ...] = (50.0, 200.0, 1_000.0)
    """The paced runs over TLS, each variant in turn at each rate (``rate`` is always among them): an
    idle-ish cluster, a busy one, and a very busy one. Real API servers deliver events at such rates, one
    per read, so the per-wakeup cost of each reader weighs as it does in production."""
    paced_seconds: float = 3.0
    """Length of each paced run: 150 events at 50/s, 3,000 at 1,000/s (the recorded stream holds 10,000),
    so CPU per event is measured over at least 150 wakeups; 3 rates x 5-6 variants x ~3.5 s is ~60 s."""
    latency_seconds: float = 8.0
    """Length of each proxy's latency run: the first half steady (8,000 events at the default rate, enough
    for a p99), the second half with namespace label flips."""
    flip_every: float = 2.0
    """In the second half of each latency run, a namespace label flip every 2 s (joining, then leaving the
    mesh); discofilter answers each with a 410 and its clients relist."""
    relist_changes: int = 3
    """In the relist phase, each kind of membership change (mesh namespace created, deleted, label flip in,
    out) made 3 times: several of each, at ~1.5 s per flip (client-go's ~1 s backoff, then a relist) and
    well under a second per creation or deletion, ~12 s in all."""
    decode: str = "json"
    """The istiod decode model: the standard library's json.loads of every event (see client.py)."""
    core_seconds: float = 1.0
    """Time budget of each core micro-benchmark measurement (best of the runs within it)."""
    core_events: int = 2_000
    """Pod events per core corpus (~25-40 MB): per-call overheads vanish, and it still fits in memory."""
    quick: bool = False
    """A smoke run that finishes in seconds: small cluster, short stream, one trial."""

    def __post_init__(self) -> None:
        if self.events < 100:
            raise ValueError("--events must be at least 100")
        if self.trials < 1 or self.loops < 1:
            raise ValueError("--trials and --loops must be at least 1")
        if self.rate <= 0 or self.latency_seconds <= 0:
            raise ValueError("--rate and --latency-seconds must be positive")
        if not self.paced_rates or any(r <= 0 for r in self.paced_rates) or self.paced_seconds <= 0:
            raise ValueError("--paced-rates must be positive numbers and --paced-seconds positive")
        if self.relist_changes < 1:
            raise ValueError("--relist-changes must be at least 1")
        if self.flip_every < 0:
            raise ValueError("--flip-every must be 0 (no flips) or positive")
        if self.decode not in DECODE_MODELS:
            raise ValueError(f"--client-decode must be one of {', '.join(DECODE_MODELS)}")
        if self.core_seconds <= 0 or self.core_events < 10:
            raise ValueError("--core-seconds must be positive and core_events at least 10")


QUICK_WORKLOAD: Final = WorkloadSettings(namespaces=50)
QUICK_RUN: Final = {
    "events": 1_500,
    "loops": 2,
    "trials": 1,
    "rate": 200.0,
    "paced_rates": (50.0, 200.0),
    "paced_seconds": 1.0,
    "latency_seconds": 1.5,
    "flip_every": 0.4,
    "relist_changes": 1,
    "core_seconds": 0.1,
    "core_events": 300,
}
"""--quick: 50 namespaces (5 in the mesh), a 1,500-event stream played twice, one trial, short latency
runs, paced runs of one second at two rates, each membership change once."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSettings:
    """The real-cluster mode (``--kubeconfig``)."""

    kubeconfig: str
    """The cluster to churn; discofilter is started with the same file (its own credentials)."""
    context: str | None = None
    """kubeconfig context; the file's current context by default, as kubectl does."""
    namespace: str | None = None
    """Base name of the scratch namespaces; a random one by default. Never an existing namespace."""
    seconds: float = 30.0
    """How long to churn: long enough for a few hundred events at the default rate."""
    pods_per_s: float = 5.0
    """Pods created (and later deleted) per second: gentle on a shared cluster's API server."""
    mesh_fraction: float = 0.1
    """Share of the churned pods that go to the scratch 'mesh' namespace; the rest to the 'plain' one."""

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.pods_per_s <= 0:
            raise ValueError("--cluster-seconds and --cluster-pods-per-s must be positive")
        if not 0.0 < self.mesh_fraction < 1.0:
            raise ValueError("--mesh-fraction must be strictly between 0 and 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchSettings:
    """Everything ``discofilter bench`` was asked to do."""

    workload: WorkloadSettings = field(default_factory=WorkloadSettings)
    """The simulated cluster and its churn (workload.py)."""
    run: RunSettings = field(default_factory=RunSettings)
    """How the run measures it."""
    cluster: ClusterSettings | None = None
    """Set with --kubeconfig: churn a real cluster instead of the simulated one."""
