from __future__ import annotations

import pytest

from discofilter.core.routing import RouteKind, classify, read_verb

W = ("1",)


@pytest.mark.parametrize(
    ("method", "path", "watch", "kind", "resource", "namespace"),
    [
        ("GET", "/api/v1/pods", (), RouteKind.LIST, "pods", None),
        ("GET", "/api/v1/pods", W, RouteKind.WATCH, "pods", None),
        ("GET", "/api/v1/pods", ("true",), RouteKind.WATCH, "pods", None),
        ("GET", "/api/v1/pods", ("false",), RouteKind.LIST, "pods", None),
        ("GET", "/api/v1/pods", ("0", "1"), RouteKind.WATCH, "pods", None),
        ("GET", "/api/v1/pods/", (), RouteKind.LIST, "pods", None),
        ("GET", "/api/v1/services", (), RouteKind.LIST, "services", None),
        ("GET", "/api/v1/endpoints", W, RouteKind.WATCH, "endpoints", None),
        ("GET", "/apis/discovery.k8s.io/v1/endpointslices", W, RouteKind.WATCH, "endpointslices", None),
        ("GET", "/apis/discovery.k8s.io/v1beta1/endpointslices", (), RouteKind.LIST, "endpointslices", None),
        ("GET", "/api/v1/namespaces/mesh-a/pods", (), RouteKind.LIST, "pods", "mesh-a"),
        (
            "GET",
            "/apis/discovery.k8s.io/v1/namespaces/x/endpointslices",
            W,
            RouteKind.WATCH,
            "endpointslices",
            "x",
        ),
        ("GET", "/api/v1/watch/pods", (), RouteKind.WATCH, "pods", None),
        ("GET", "/api/v1/watch/namespaces/x/services", (), RouteKind.WATCH, "services", "x"),
        ("GET", "/api/v1/watch/namespaces/x/pods/name", (), RouteKind.WATCH, "pods", "x"),
        # pass-through: single objects, subresources, writes, other resources, discovery
        ("GET", "/api/v1/namespaces/x/pods/name", (), RouteKind.PASSTHROUGH, None, None),
        ("GET", "/api/v1/namespaces/x/pods/name/log", (), RouteKind.PASSTHROUGH, None, None),
        ("POST", "/api/v1/namespaces/x/pods", (), RouteKind.PASSTHROUGH, None, None),
        ("DELETE", "/api/v1/namespaces/x/pods", (), RouteKind.PASSTHROUGH, None, None),
        ("HEAD", "/api/v1/pods", (), RouteKind.PASSTHROUGH, None, None),
        ("GET", "/api/v1/namespaces", W, RouteKind.PASSTHROUGH, None, None),
        ("GET", "/api/v1/namespaces/x", (), RouteKind.PASSTHROUGH, None, None),
        ("GET", "/api/v1/nodes", W, RouteKind.PASSTHROUGH, None, None),
        ("GET", "/api/v1/configmaps", (), RouteKind.PASSTHROUGH, None, None),
        ("GET", "/apis/networking.istio.io/v1/virtualservices", W, RouteKind.PASSTHROUGH, None, None),
        ("GET", "/api", (), RouteKind.PASSTHROUGH, None, None),
        ("GET", "/apis", (), RouteKind.PASSTHROUGH, None, None),
        ("GET", "/version", (), RouteKind.PASSTHROUGH, None, None),
        ("GET", "/openapi/v2", (), RouteKind.PASSTHROUGH, None, None),
        ("GET", "/api/v1/namespaces/x/services/s:80/proxy/a%2Fb", (), RouteKind.PASSTHROUGH, None, None),
    ],
)
def test_classify(
    method: str,
    path: str,
    watch: tuple[str, ...],
    kind: RouteKind,
    resource: str | None,
    namespace: str | None,
) -> None:
    route = classify(method, path, watch)
    assert (route.kind, route.resource, route.namespace) == (kind, resource, namespace)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/x/../../pods",
        "/api/v1/namespaces/x/configmaps/../../../pods",
        "/api/v1//pods",
        "/api/v1/./pods",
        "/api/v1/%70ods",
        "/api/v1/namespaces%2Fx%2Fpods",
        "/api/v1/nodes/..%2Fpods",
        "/apis/discovery.k8s.io/v1/namespaces/x/leases/%2e%2e/endpointslices",
        "/api/v1/namespaces/x/services/s/proxy/../../../pods",
    ],
)
def test_no_path_trick_reaches_a_filtered_collection_unfiltered(path: str) -> None:
    assert classify("GET", path, W).kind is RouteKind.REJECTED


@pytest.mark.parametrize(
    ("path", "watch", "verb"),
    [
        ("/api/v1/namespaces/mesh-a/configmaps", [], "list"),
        ("/api/v1/namespaces/mesh-a/configmaps", ["true"], "watch"),
        ("/api/v1/namespaces/mesh-a/configmaps/istio-ca-root-cert", [], "get"),
        ("/api/v1/watch/namespaces/mesh-a/configmaps", [], "watch"),
        ("/api/v1/namespaces", [], "list"),
        ("/api/v1/namespaces", ["1"], "watch"),
        ("/api/v1/namespaces/mesh-a", [], "get"),
        ("/api/v1/namespaces/mesh-a/status", [], "get"),
        ("/api/v1/nodes", ["false"], "list"),
        ("/apis/networking.istio.io/v1alpha3/virtualservices", ["true"], "watch"),
        ("/apis/networking.istio.io/v1alpha3/namespaces/mesh-a/virtualservices/reviews", [], "get"),
        ("/apis/apps/v1", [], "get"),
        ("/api", [], "get"),
        ("/version", [], "get"),
        # Read by position, as the API server reads them: a namespace or a ConfigMap named "watch".
        ("/api/v1/namespaces/watch/configmaps", [], "list"),
        ("/api/v1/namespaces/watch/configmaps/watch", [], "get"),
        ("/api/v1/watch/namespaces/watch/configmaps", [], "watch"),
    ],
)
def test_pass_through_reads_are_named_as_the_api_server_names_them(
    path: str, watch: list[str], verb: str
) -> None:
    assert read_verb(path, watch) == verb
