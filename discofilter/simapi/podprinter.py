"""The pod printer: ``printPod`` of Kubernetes 1.28, column for column (checked on ``list-pods-table.json``).

Ready counts ready containers (restartable init containers, i.e. sidecars, included); Status is the phase,
overridden by init container progress (``Init:1/2``), a container's waiting or terminated reason
(``CrashLoopBackOff``, ``Completed``) or ``Terminating``; Restarts adds ``(2m ago)`` from the last
termination. Succeeded and Failed pods carry a ``Completed`` row condition.

Rule: nothing here does I/O; ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from discofilter.simapi.printers import AGE_DOC, NAME_DOC, Column, Row, human_duration, parse_time, since

JsonObj = dict[str, Any]

POD_COLUMNS: Final[tuple[Column, ...]] = (
    ("Name", "name", 0, NAME_DOC),
    ("Ready", "", 0, "The aggregate readiness state of this pod for accepting traffic."),
    ("Status", "", 0, "The aggregate status of the containers in this pod."),
    (
        "Restarts",
        "",
        0,
        "The number of times the containers in this pod have been restarted and when the last container in "
        "this pod has restarted.",
    ),
    ("Age", "", 0, AGE_DOC),
    (
        "IP",
        "",
        1,
        "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet "
        "allocated.",
    ),
    (
        "Node",
        "",
        1,
        "NodeName is a request to schedule this pod onto a specific node. If it is non-empty, the scheduler "
        "simply schedules this pod onto that node, assuming that it fits resource requirements.",
    ),
    (
        "Nominated Node",
        "",
        1,
        "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be "
        "scheduled right away as preemption victims receive their graceful termination periods. This field "
        "does not guarantee that the pod will be scheduled on this node. Scheduler may decide to place the "
        "pod elsewhere if other nodes become available sooner. Scheduler may also decide to give the "
        "resources on this node to a higher priority pod that is created after preemption. As a result, "
        "this field may be different than PodSpec.nodeName when the pod is scheduled.",
    ),
    (
        "Readiness Gates",
        "",
        1,
        "If specified, all readiness gates will be evaluated for pod readiness. A pod is ready when all its "
        "containers are ready AND all conditions specified in the readiness gates have status equal to "
        '"True" More info: https://git.k8s.io/enhancements/keps/sig-network/580-pod-readiness-gates',
    ),
)


def _restartable(container: Mapping[str, Any] | None) -> bool:
    return bool(container) and container is not None and container.get("restartPolicy") == "Always"


def pod_cells(pod: Mapping[str, Any], now: float) -> tuple[Row, list[JsonObj]]:
    """``printPod`` of Kubernetes 1.28, wide."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    init_specs = {c.get("name"): c for c in spec.get("initContainers") or []}
    total = len(spec.get("containers") or []) + sum(1 for c in init_specs.values() if _restartable(c))
    ready = 0
    restarts = 0
    sidecar_restarts = 0
    last_restart = 0.0
    sidecar_last_restart = 0.0
    reason = str(status.get("reason") or status.get("phase") or "")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "SchedulingGated":
            reason = "SchedulingGated"
    conditions: list[JsonObj] = []
    if status.get("phase") == "Succeeded":
        conditions = [
            {
                "type": "Completed",
                "status": "True",
                "reason": "Succeeded",
                "message": "The pod has completed successfully.",
            }
        ]
    elif status.get("phase") == "Failed":
        conditions = [
            {"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}
        ]

    initializing = False
    init_statuses = status.get("initContainerStatuses") or []
    for i, cs in enumerate(init_statuses):
        restarts += int(cs.get("restartCount") or 0)
        finished = parse_time(((cs.get("lastState") or {}).get("terminated") or {}).get("finishedAt"))
        if finished is not None:
            last_restart = max(last_restart, finished)
        sidecar = _restartable(init_specs.get(cs.get("name")))
        if sidecar:
            sidecar_restarts += int(cs.get("restartCount") or 0)
            if finished is not None:
                sidecar_last_restart = max(sidecar_last_restart, finished)
        state = cs.get("state") or {}
        terminated = state.get("terminated")
        waiting = state.get("waiting")
        if terminated is not None and int(terminated.get("exitCode") or 0) == 0:
            continue
        if sidecar and cs.get("started"):
            if cs.get("ready"):
                ready += 1
            continue
        if terminated is not None:
            if not terminated.get("reason"):
                if terminated.get("signal"):
                    reason = f"Init:Signal:{terminated['signal']}"
                else:
                    reason = f"Init:ExitCode:{terminated.get('exitCode', 0)}"
            else:
                reason = "Init:" + str(terminated["reason"])
        elif waiting is not None and waiting.get("reason") and waiting.get("reason") != "PodInitializing":
            reason = "Init:" + str(waiting["reason"])
        else:
            reason = f"Init:{i}/{len(spec.get('initContainers') or [])}"
        initializing = True
        break

    initialized = any(
        c.get("type") == "Initialized" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    if not initializing or initialized:
        restarts = sidecar_restarts
        last_restart = sidecar_last_restart
        has_running = False
        for cs in reversed(status.get("containerStatuses") or []):
            restarts += int(cs.get("restartCount") or 0)
            finished = parse_time(((cs.get("lastState") or {}).get("terminated") or {}).get("finishedAt"))
            if finished is not None:
                last_restart = max(last_restart, finished)
            state = cs.get("state") or {}
            waiting, terminated = state.get("waiting"), state.get("terminated")
            if waiting is not None and waiting.get("reason"):
                reason = str(waiting["reason"])
            elif terminated is not None and terminated.get("reason"):
                reason = str(terminated["reason"])
            elif terminated is not None:
                if terminated.get("signal"):
                    reason = f"Signal:{terminated['signal']}"
                else:
                    reason = f"ExitCode:{terminated.get('exitCode', 0)}"
            elif cs.get("ready") and state.get("running") is not None:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            pod_ready = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
            )
            reason = "Running" if pod_ready else "NotReady"

    if meta.get("deletionTimestamp") and status.get("reason") == "NodeLost":
        reason = "Unknown"
    elif meta.get("deletionTimestamp"):
        reason = "Terminating"

    restarts_text = str(restarts)
    if restarts and last_restart:
        restarts_text = f"{restarts} ({human_duration(now - last_restart)} ago)"
    pod_ips = status.get("podIPs") or []
    ip = str(pod_ips[0].get("ip") or "") if pod_ips else ""
    gates = spec.get("readinessGates") or []
    gates_text = "<none>"
    if gates:
        true_count = 0
        for gate in gates:
            for condition in status.get("conditions") or []:
                if condition.get("type") == gate.get("conditionType"):
                    true_count += condition.get("status") == "True"
                    break
        gates_text = f"{true_count}/{len(gates)}"
    cells: Row = [
        meta.get("name", ""),
        f"{ready}/{total}",
        reason,
        restarts_text,
        since(meta.get("creationTimestamp"), now),
        ip or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        gates_text,
    ]
    return cells, conditions
