"""``discofilter simapi`` and ``discofilter demo``: see discofilter filter without a cluster.

``simapi`` serves the simulated API server (``discofilter.simapi``) on its own, seeded with the benchmark's
cluster (mesh and plain namespaces, apps with Services, Endpoints, EndpointSlices and Running pods) and
kept busy by the benchmark's churn generator. ``demo`` starts that and the real ``discofilter serve`` in
front of it, writes a kubeconfig for each, and prints the kubectl commands that show the difference.

Both run from the base install: nothing here needs the ``bench`` extra (psutil, matplotlib).
"""
