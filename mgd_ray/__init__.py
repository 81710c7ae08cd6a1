"""mgd_ray: Ray-distributed hyperparameter studies for Multi-Granularity Distillation (MGD)."""

__version__ = "0.1.0"
