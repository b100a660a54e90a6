"""Tracking: the Tracker protocol (``base``), MLflow implementation (``mlflow_tracker``), model registry
(``registry``) and plots. The only package that imports mlflow."""
from recpipe.tracking.base import MemoryTracker, NullTracker, Tracker

__all__ = ["Tracker", "MemoryTracker", "NullTracker"]
