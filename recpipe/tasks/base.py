"""What every step executor returns, and helpers shared by the executors.

Each ``recpipe.tasks.<step>`` module exposes ``run(cfg, *, <input paths>, <output paths>, tracker) -> Result``
and ``main(argv)`` (so ``python -m recpipe.tasks.<step>`` and ``recpipe <step>`` work without KFP).
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from recpipe.fileio import atomic_write_json
from recpipe.tracking.base import MemoryTracker, Tracker


@dataclass
class Result:
    """A step's outcome.

    Attributes:
        metrics: scalar metrics for KFP ``Metrics`` artifacts (keys like ``eval/auc``).
        metadata: provenance for the output artifact's ``.metadata`` (schema version, rows, config, mlflow_run_id).
        outputs: named output paths the step wrote.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "metadata": self.metadata, "outputs": self.outputs}


def write_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Writes JSON atomically (temp file + rename) so readers never see half a file."""
    atomic_write_json(path, data, default=str)


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@contextlib.contextmanager
def step_tracker(step: str, *, run_name: str | None = None, parent_run_id: str | None = None,
                 experiment: str | None = None, tags: Mapping[str, str] | None = None) -> Iterator[Tracker]:
    """The tracker a pipeline step logs into.

    ``MLFLOW_RUN_ID`` set (KFP's MLflow integration) → that run; else ``parent_run_id`` given (``recpipe run``
    opens one run per pipeline run) → a nested run named after the step; else a fresh run. Setting
    ``RECPIPE_TRACKING=off`` gives an in-memory tracker (no MLflow at all).
    """
    if os.environ.get("RECPIPE_TRACKING", "").lower() == "off":
        yield MemoryTracker(step)
        return
    from recpipe.tracking.mlflow_tracker import DEFAULT_EXPERIMENT, MlflowTracker

    all_tags = {"recpipe.step": step, **(tags or {})}
    with MlflowTracker(experiment or DEFAULT_EXPERIMENT, run_name or step, parent_run_id=parent_run_id or None,
                       tags=all_tags) as t:
        yield t


def model_fingerprint(model_dir: str | os.PathLike[str]) -> str:
    """sha256 over the relative names, sizes and contents of every file of a model directory (sorted walk).

    Promote checks that the evaluated and the registered model are byte-identical with it, and the registry
    names a version's artifact folder after it. Stdlib only, so importing it pulls no torch / mlflow.
    """
    import hashlib

    model_dir = os.fspath(model_dir)
    h = hashlib.sha256()
    for root, dirs, files in os.walk(model_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, model_dir)
            h.update(f"{rel}\0{os.path.getsize(path)}\0".encode())  # unambiguous name/content boundary
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def config_from_arg(cls: type, text: str | None) -> Any:
    """A step's ``--config`` value: empty (defaults), JSON text, or a JSON file given as ``path`` or ``@path``."""
    text = (text or "").strip()
    if not text:
        return cls()
    path = text[1:] if text.startswith("@") else text
    if text.startswith("@") or (not text.startswith("{") and os.path.isfile(path)):
        try:
            with open(path, encoding="utf-8") as fh:
                return cls.from_dict(json.load(fh))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--config {path}: cannot read a JSON config: {e}") from e
    try:
        return cls.from_json(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--config: neither a JSON object nor an existing file: {e}") from e
