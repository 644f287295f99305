"""discofilter: a watch proxy that keeps cluster churn outside the mesh away from istiod."""

__version__ = "0.1.0"
__all__ = ["__version__"]
