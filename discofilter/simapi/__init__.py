"""simapi: an in-process simulated Kubernetes API server, held to real kube-apiserver 1.28 captures.

discofilter's tests run real clients (kubectl, kubernetes-asyncio, the official client) through discofilter
against it, and the churn benchmark embeds it. ``Store`` is the sans-I/O state (etcd plus watch cache);
``build_app``/``serve`` put an aiohttp server in front of it.

    store = Store()
    store.load_list("pods", captured_pod_list)
    runner, url = await serve(store, SimSettings(bookmark_interval=0.2))
"""

from discofilter.simapi.errors import ApiError
from discofilter.simapi.listing import ListResult
from discofilter.simapi.resources import RESOURCES, ResourceType
from discofilter.simapi.server import REQUEST_LOG, SETTINGS, STORE, RecordedRequest, build_app, serve
from discofilter.simapi.settings import SimSettings
from discofilter.simapi.store import DeleteResult, Store, StoreEvent, Subscription

__all__ = [
    "REQUEST_LOG",
    "RESOURCES",
    "SETTINGS",
    "STORE",
    "ApiError",
    "DeleteResult",
    "ListResult",
    "RecordedRequest",
    "ResourceType",
    "SimSettings",
    "Store",
    "StoreEvent",
    "Subscription",
    "build_app",
    "serve",
]
