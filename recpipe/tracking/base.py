"""The Tracker interface every step logs through (params, per-step metrics, artifacts, tags).

The core (train, search, quant, ...) only sees this protocol; :mod:`recpipe.tracking.mlflow_tracker` is the
MLflow implementation and :class:`MemoryTracker` records calls in memory (tests, dry runs).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Mapping, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    """What a step may record. Metric keys are lowercase with a prefix: ``train/loss``, ``eval/auc``."""

    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None: ...

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def child(self, name: str) -> contextlib.AbstractContextManager["Tracker"]:
        """A nested run (e.g. one search trial); logs inside go to the child."""
        ...


class MemoryTracker:
    """Keeps everything logged in plain Python structures; children are MemoryTrackers too."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.run_id: str | None = None
        self.params: dict[str, Any] = {}
        self.metrics: dict[str, list[tuple[int | None, float]]] = {}
        self.artifacts: list[tuple[str, str | None]] = []
        self.dicts: dict[str, dict[str, Any]] = {}
        self.figures: list[str] = []
        self.tags: dict[str, str] = {}
        self.children: list[MemoryTracker] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update({k: v for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append((step, float(v)))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self.artifacts.append((os.fspath(path), artifact_path))

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.dicts[artifact_file] = dict(data)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.figures.append(artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update({k: str(v) for k, v in tags.items()})

    @contextlib.contextmanager
    def child(self, name: str) -> Iterator["MemoryTracker"]:
        c = MemoryTracker(name)
        self.children.append(c)
        yield c

    def last(self, key: str) -> float:
        """The last value logged under ``key`` (KeyError if never logged)."""
        return self.metrics[key][-1][1]


NullTracker = MemoryTracker
"""A tracker that keeps logs only in memory; the default when no tracking is wanted."""
