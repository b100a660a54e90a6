"""What every step executor returns, and helpers shared by the executors.

Each ``recpipe.tasks.<step>`` module exposes ``run(cfg, *, <input paths>, <output paths>, tracker) -> Result``
and ``main(argv)`` (so ``python -m recpipe.tasks.<step>`` and ``recpipe <step>`` work without KFP).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping


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
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
