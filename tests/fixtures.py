"""Access to the real kube-apiserver 1.28.7 captures in ``tests/data/apiserver-1.28`` (in the repository).

The folder is located from this file, never from an absolute path. If it is missing, importing this module
fails, so every test that needs the captures fails rather than skips.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "data" / "apiserver-1.28"
if not (FIXTURES / "manifest.json").is_file():
    raise FileNotFoundError(f"the real API server captures are missing: expected {FIXTURES}/manifest.json")


@functools.cache
def body(name: str) -> bytes:
    """The body of capture ``name`` exactly as received (gzip bodies stay gzipped)."""
    return (FIXTURES / name).read_bytes()


def headers(name: str) -> tuple[int, list[tuple[str, str]]]:
    """The status code and headers (in order) of capture ``name``, from its CRLF ``.headers.txt``."""
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
    """manifest.json: what each capture is (request, response, expected counts) and how they relate."""
    data: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
    return data


def request_path(name: str) -> str:
    """The path and query string (as sent) of the request that produced capture ``name``."""
    for entry in manifest()["files"]:
        if entry.get("file") == name:
            return str(entry["request"]["path_and_query"])
    raise KeyError(name)


def events(name: str) -> list[dict[str, Any]]:
    """The parsed events of a JSON watch capture, in order."""
    return [json.loads(line) for line in body(name).splitlines() if line.strip()]
