"""``discofilter bench``: argument wiring (placeholder until the benchmark lands)."""

from __future__ import annotations

import argparse
from typing import Any


def add_bench_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("bench", help="run the churn benchmark")
    p.add_argument("--quick", action="store_true")


def run_bench(args: argparse.Namespace) -> int:
    raise SystemExit("the churn benchmark is not built yet")
