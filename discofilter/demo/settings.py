"""Settings of ``discofilter simapi`` and ``discofilter demo``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from discofilter.bench.workload import WorkloadSettings

DEMO_WORKLOAD = WorkloadSettings(namespaces=12, mesh_fraction=0.25, inflight=4, nodes=3)
"""12 namespaces, 3 of them in the mesh, two apps of two pods each: 48 pods, few enough that
``kubectl get pods -A`` fits on a screen and the difference through discofilter shows at a glance
(12 pods). Four pod lives at once keep the churn readable in ``kubectl get pods -A -w``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChurnSettings:
    rate: float = 5.0
    """Writes per second. Five: ``kubectl get pods -A -w`` through discofilter shows a mesh pod change
    every second or so (a quarter of the namespaces, about half the writes are pods), slow enough to read."""
    flip_every: float = 0.0
    """Seconds between namespace label flips (a plain namespace joins the mesh, then leaves it again).
    Off by default: discofilter ends open watches with 410 Expired when membership changes, and
    ``kubectl get -w`` stops there instead of relisting as istiod's informers do."""

    def __post_init__(self) -> None:
        # Plain ValueError, as WorkloadSettings: the CLI turns it into one line.
        if self.rate < 0:
            raise ValueError(f"--churn-rate must be 0 (no churn) or more, not {self.rate:g}")
        if self.flip_every < 0:
            raise ValueError(f"--flip-every must be 0 (no flips) or more, not {self.flip_every:g}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimApiSettings:
    host: str = "127.0.0.1"
    """Loopback: with no ``tokens`` every request is the cluster admin, which nobody else should be."""
    port: int = 0
    """0: the kernel picks a free port; the URL printed (and the kubeconfig written) name the bound one."""
    kubeconfig_out: Path | None = None
    """Where to write a kubeconfig for this server once it listens (written whole, then renamed, so a
    reader never sees half of it). None: only the URL is printed."""
    workload: WorkloadSettings = DEMO_WORKLOAD
    churn: ChurnSettings = field(default_factory=ChurnSettings)
    tokens: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Bearer token -> user. Empty: authentication off. The kubeconfig written carries the first token."""
    history_window: int = 10_000
    """Events kept per resource for watches to resume from (simapi's own default). At 5 writes/s that is
    over half an hour of pod history, about 50 MB."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoSettings:
    out: Path | None = None
    """Directory for the kubeconfigs and the two processes' logs. None: a new temporary directory, left
    in place afterwards so the logs can be read."""
    workload: WorkloadSettings = DEMO_WORKLOAD
    churn: ChurnSettings = field(default_factory=ChurnSettings)
