"""The README against the code: what an operator reads must be what the program does.

- every flag and ``DISCOFILTER_*`` variable that the real ``discofilter serve --help`` prints is in the
  README's configuration table, and every ``DISCOFILTER_*`` variable of that table is one it reads;
- the metric families a real ``discofilter serve`` (in front of simapi) exports on /metrics are exactly
  the ones of the README's metrics table;
- every relative link of README.md and docs/*.md reaches a file that exists, and its ``#anchor`` a
  heading of that file (GitHub's heading ids).
"""

from __future__ import annotations

import re
import subprocess
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from discofilter.simapi import SimSettings
from tests.harness import bound_ports, serving_simapi
from tests.test_e2e import seeded
from tests.test_shutdown import serve_process

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
ENV = re.compile(r"DISCOFILTER_[A-Z0-9_]+")


def section(text: str, heading: str) -> str:
    """The body of the markdown section titled ``heading`` (any level), up to the next heading of the
    same or a higher level; its subsections included."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"(#+) (.*)", line)
        if m and m[2].strip() == heading:
            level = len(m[1])
            end = next(
                (
                    j
                    for j in range(i + 1, len(lines))
                    if (h := re.match(r"(#+) ", lines[j])) and len(h[1]) <= level
                ),
                len(lines),
            )
            return "\n".join(lines[i + 1 : end])
    raise AssertionError(f"README.md has no section {heading!r}")


def table(text: str, first_header: str) -> list[list[str]]:
    """The cells of the rows of the markdown table in ``text`` whose first header cell is ``first_header``."""
    rows: list[list[str]] = []
    inside = False
    for line in text.splitlines():
        if not line.startswith("|"):
            inside = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first_header:
            inside = True
        elif inside and not re.fullmatch(r"[|\-: ]+", line):
            rows.append(cells)
    assert rows, f"no table headed {first_header!r}"
    return rows


def serve_help() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "discofilter", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    return done.stdout


def test_every_flag_and_variable_of_serve_is_in_the_configuration_table() -> None:
    help_text = serve_help()
    flags = set(FLAG.findall(help_text)) - {"--help"}
    envs = set(ENV.findall(help_text))
    assert len(flags) >= 15 and len(envs) >= 15, help_text  # the parse found the real options
    rows = table(section(README.read_text(), "Configuration"), "flag")
    documented_flags = {f for row in rows for f in FLAG.findall(row[0])}
    documented_envs = {e for row in rows for e in ENV.findall(row[1])}
    assert flags - documented_flags == set(), "flags of `discofilter serve --help` missing in README"
    assert documented_flags - flags == set(), "README documents flags discofilter serve does not have"
    assert envs - documented_envs == set(), "variables of `discofilter serve --help` missing in README"
    assert documented_envs - envs == set(), "README documents variables discofilter serve does not read"


def simapi() -> AbstractAsyncContextManager[str]:
    return serving_simapi(seeded(), SimSettings(bookmark_interval=0.3, bookmark_lead=0.1))


def exported_names(exposition: str) -> set[str]:
    """Metric names as a scraper stores them: the parser gives a counter's family without ``_total``."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


async def test_the_metrics_table_is_what_a_running_serve_exports(tmp_path: Path) -> None:
    # With a mesh config, so that its two metrics are exported too.
    mesh = tmp_path / "mesh"
    mesh.write_text("discoverySelectors:\n- matchLabels: {istio-injection: enabled}\n")
    async with (
        simapi() as sim_url,
        serve_process(tmp_path, sim_url, "--mesh-config", str(mesh)) as (_, url, _),
    ):
        ports = bound_ports((tmp_path / "serve.log").read_text())
        assert ports is not None
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/api/v1/pods") as r:  # traffic, so the labelled families have samples
                assert r.status == 200
                await r.read()
            async with s.get(f"http://127.0.0.1:{ports[2]}/metrics") as r:
                assert r.status == 200
                exposition = await r.text()
    exported = exported_names(exposition)
    assert "discofilter_list_items_total" in exported and "process_resident_memory_bytes" in exported

    rows = table(section(README.read_text(), "Metrics"), "metric")
    documented = {m for row in rows for m in re.findall(r"`([a-z_*]+)`", row[0])}
    prefixes = tuple(m[:-1] for m in documented if m.endswith("*"))
    undocumented = {n for n in exported if n not in documented and not n.startswith(prefixes)}
    assert undocumented == set(), "metrics /metrics exports that README's metrics table lacks"
    gone = {m for m in documented if not m.endswith("*") and m not in exported}
    assert gone == set(), "metrics README documents that discofilter serve does not export"


def heading_ids(text: str) -> set[str]:
    """GitHub's ids for a markdown file's headings: lower case, punctuation but '-' and '_' dropped,
    spaces to '-', a repeated id suffixed -1, -2, ..."""
    ids: set[str] = set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#+ (.*)", line)
        if m is None:
            continue
        base = re.sub(r"[^\w\- ]", "", m[1].strip().lower()).replace(" ", "-")
        slug, n = base, 0
        while slug in ids:
            n += 1
            slug = f"{base}-{n}"
        ids.add(slug)
    return ids


def links(text: str) -> list[str]:
    """Targets of the markdown links of ``text``, outside code blocks and code spans."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_relative_links_reach_files_and_headings_that_exist() -> None:
    checked = 0
    for doc in [README, *DOCS]:
        for target in links(doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not ours to check offline
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            assert dest.exists(), f"{doc.relative_to(ROOT)}: link {target!r}: no file {path!r}"
            if anchor:
                where = f"{doc.relative_to(ROOT)}: link {target!r}"
                assert dest.suffix == ".md", f"{where}: an anchor into a file that is not markdown"
                assert anchor in heading_ids(dest.read_text()), f"{where}: no heading #{anchor}"
            checked += 1
    assert checked >= 20  # the README's contents alone link that many headings
