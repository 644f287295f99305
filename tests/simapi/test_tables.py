"""Table printing: Go's HumanDuration and the pod printer's corner cases."""

from __future__ import annotations

import pytest

from discofilter.simapi.resources import RESOURCES
from discofilter.simapi.tables import human_duration, table
from tests.simapi.conftest import CAPTURE_TIME, capture

HOUR = 3600


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        # apimachinery duration_test.go
        (1, "1s"),
        (70, "70s"),
        (190, "3m10s"),
        (70 * 60, "70m"),
        (47 * HOUR, "47h"),
        (49 * HOUR, "2d1h"),
        ((8 * 24 + 2) * HOUR, "8d"),
        (367 * 24 * HOUR, "367d"),
        ((365 * 2 * 24 + 25) * HOUR, "2y1d"),
        ((365 * 8 * 24 + 2) * HOUR, "8y"),
        (-1, "0s"),
        (-3, "<invalid>"),
        (300, "5m"),
        (2 * HOUR + 5 * 60, "125m"),
        (3 * HOUR + 5 * 60, "3h5m"),
    ],
)
def test_human_duration(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def _pod(**status: object) -> dict[str, object]:
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-11-22T02:30:51Z"},
        "spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "init"}]},
        "status": status,
    }


@pytest.mark.parametrize(
    ("status", "cells"),
    [
        ({"phase": "Pending"}, ["p", "0/2", "Pending", "0", "2m"]),
        (
            {
                "phase": "Pending",
                "initContainerStatuses": [
                    {"name": "init", "state": {"waiting": {"reason": "PodInitializing"}}}
                ],
            },
            ["p", "0/2", "Init:0/1", "0", "2m"],
        ),
        (
            {
                "phase": "Pending",
                "initContainerStatuses": [{"name": "init", "state": {"terminated": {"exitCode": 2}}}],
            },
            ["p", "0/2", "Init:ExitCode:2", "0", "2m"],
        ),
        (
            {
                "phase": "Succeeded",
                "containerStatuses": [
                    {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
                ],
            },
            ["p", "0/2", "Completed", "0", "2m"],
        ),
    ],
)
def test_pod_status_column(status: dict[str, object], cells: list[str]) -> None:
    row = table(RESOURCES["pods"], [_pod(**status)], {}, now=CAPTURE_TIME)["rows"][0]
    assert row["cells"][:5] == cells


def test_completed_pods_carry_row_conditions() -> None:
    row = table(RESOURCES["pods"], [_pod(phase="Failed")], {}, now=CAPTURE_TIME)["rows"][0]
    assert list(row) == ["cells", "conditions", "object"]
    assert row["conditions"] == [
        {"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}
    ]


@pytest.mark.parametrize(
    ("resource", "name", "cells"),
    [
        ("services", "list-services.json", ["kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP"]),
        ("namespaces", "list-namespaces.json", ["default", "Active", "9m35s"]),
        (
            "endpoints",
            "list-endpoints.json",
            ["checkout", "10.244.1.10:9090,10.244.2.10:9090,10.244.1.10:8080 + 1 more..."],
        ),
        (
            "endpointslices",
            "list-endpointslices.json",
            ["checkout-6rk4d", "IPv4", "9090,8080", "10.244.1.10,10.244.2.10"],
        ),
    ],
)
def test_other_printers(resource: str, name: str, cells: list[str]) -> None:
    rows = table(RESOURCES[resource], capture(name)["items"], {}, now=CAPTURE_TIME, include_object="None")[
        "rows"
    ]
    assert rows[0]["cells"][: len(cells)] == cells and "object" not in rows[0]
