"""The churn benchmark: simulated API server, churn, four proxies side by side, istiod-like clients."""
