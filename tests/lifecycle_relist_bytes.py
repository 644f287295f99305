"""Relist bytes of one mesh namespace lifecycle (create with objects, then delete) at the bench's default
size, for four kubernetes-asyncio informers (istiod's kinds) through discofilter against simapi.

Run from a checkout: ``PYTHONPATH=. python tests/lifecycle_relist_bytes.py LABEL``. Before the lifecycle
change, each informer relisted twice (the creation, then the deletion, ended every watch with 410).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from discofilter.bench.simproc import seeded_store
from discofilter.bench.workload import WorkloadSettings
from discofilter.settings import Settings
from discofilter.simapi import SimSettings, build_app
from tests.harness import running_discofilter, write_kubeconfig
from tests.informer import istiod_informers, running
from tests.test_e2e import api_client


def pod(name: str, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "a"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


async def main() -> None:
    store, _, _ = seeded_store(WorkloadSettings(), history_window=100_000)
    app = build_app(store, SimSettings(bookmark_interval=0.5, bookmark_lead=0.2, tokens={"t": "admin"}))
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    tmp = Path(tempfile.mkdtemp())
    sim = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with running_discofilter(write_kubeconfig(tmp / "own", sim, token="t"), settings=Settings()) as df:
        api = await api_client(write_kubeconfig(tmp / "c", df.url, token="t"))
        infs = istiod_informers(api)
        async with running(list(infs.values())):
            while any(i.lists == 0 for i in infs.values()):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            stats = df.runtime.proxy.stats
            before = {r: t.bytes_out for r, t in stats.lists.items()}
            store.create(
                "namespaces", {"metadata": {"name": "preview", "labels": {"istio-injection": "enabled"}}}
            )
            for i in range(4):
                store.create("pods", pod(f"p{i}", "preview"))
            await asyncio.sleep(2.0)
            store.delete("namespaces", None, "preview")
            await asyncio.sleep(2.0)
            after = {r: t.bytes_out for r, t in stats.lists.items()}
            relists = {r: i.lists - 1 for r, i in infs.items()}
            saved = {r: after.get(r, 0) - before.get(r, 0) for r in after}
        await api.close()
    await runner.cleanup()
    print(
        sys.argv[1], "relists per kind:", relists, "relist LIST bytes:", saved, "total", sum(saved.values())
    )


if __name__ == "__main__":
    asyncio.run(main())
