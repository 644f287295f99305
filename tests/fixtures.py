"""Access to the real kube-apiserver captures in ``../shared/fixtures`` (beside the repository)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
if not (FIXTURES / "manifest.json").is_file():
    raise FileNotFoundError(f"the real API server captures are missing: expected {FIXTURES}/manifest.json")


@functools.cache
def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def headers(name: str) -> tuple[int, list[tuple[str, str]]]:
    text = (FIXTURES / (name + ".headers.txt")).read_bytes().decode()
    lines = text.split("\r\n")
    status = int(lines[0].split()[1])
    out = []
    for line in lines[1:]:
        if not line:
            break
        k, _, v = line.partition(":")
        out.append((k.strip(), v.strip()))
    return status, out


@functools.cache
def manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
    return data


def events(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body(name).splitlines() if line.strip()]
