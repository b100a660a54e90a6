"""MLflow implementation of :class:`recpipe.tracking.base.Tracker`.

Store resolution, in order: the ``tracking_uri`` argument, ``MLFLOW_TRACKING_URI``, then the local default
``sqlite:///mlruns.db`` (so ``mlflow ui --backend-store-uri sqlite:///mlruns.db`` shows every run). Artifacts of
the sqlite default go to ``./mlartifacts`` beside it.

Run resolution: when ``MLFLOW_RUN_ID`` is set (KFP 2.17 injects it into each step of a pipeline run with the
MLflow integration on), the tracker logs into THAT run and never ends it; otherwise it creates a run in the
experiment (``MLFLOW_EXPERIMENT_NAME`` or the argument) and ends it on close. The client API is used instead of
MLflow's fluent global state, so nested trial runs in threads or processes don't step on each other.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from typing import Any, Iterator, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

LOG = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
DEFAULT_EXPERIMENT = "recpipe"
_MAX_PARAM_LEN = 6000  # MLflow's param value limit is 6000 characters
_BATCH = 900  # log_batch accepts at most 1000 metrics per call


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The store URI: argument, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns.db``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def artifact_location(uri: str, experiment: str) -> str | None:
    if uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///"):]
        root = os.path.join(os.path.dirname(os.path.abspath(db)), "mlartifacts")
        return "file://" + os.path.join(root, experiment)
    return None


class MlflowTracker:
    """Logs params, per-step metrics, artifacts and tags to one MLflow run.

    Args:
        experiment: experiment name (``MLFLOW_EXPERIMENT_NAME`` wins when set).
        run_name: name of a newly created run.
        tracking_uri: store URI (see module docstring).
        run_id: log into this existing run (``MLFLOW_RUN_ID`` is used when not given).
        parent_run_id: create the new run nested under this run.
        tags: tags set at start.
    """

    def __init__(self, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
                 tracking_uri: str | None = None, run_id: str | None = None,
                 parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
        self._owns_run = run_id is None
        if run_id is None:
            exp_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment
            exp = self.client.get_experiment_by_name(exp_name)
            if exp is None:
                exp_id = self.client.create_experiment(
                    exp_name, artifact_location=artifact_location(self.tracking_uri, exp_name))
            else:
                exp_id = exp.experiment_id
            run_tags = dict(tags or {})
            if parent_run_id:
                run_tags["mlflow.parentRunId"] = parent_run_id
            run = self.client.create_run(exp_id, run_name=run_name, tags=run_tags)
            run_id = run.info.run_id
        elif tags:
            self.set_tags(tags)
        self.run_id: str | None = run_id
        self._closed = False

    # ------------------------------------------------------------------ Tracker protocol
    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = _flatten(params)
        existing = self.client.get_run(self.run_id).data.params
        items = []
        for k, v in flat.items():
            s = v if isinstance(v, str) else json.dumps(v, default=str)
            s = s[:_MAX_PARAM_LEN]
            if k in existing:
                if existing[k] == s:
                    continue
                # MLflow params are immutable (KFP retries re-log into one run): keep each new value under the
                # next free suffix, unless that value is already recorded
                versions = [existing[k]] + [existing[f"{k}.{i}"] for i in range(1, 1000) if f"{k}.{i}" in existing]
                if s in versions:
                    continue
                key = f"{k}.{len(versions)}"
                LOG.warning("param %s already logged as %r; logging new value as %s", k, existing[k], key)
                existing[key] = s
                items.append(Param(key, s))
                continue
            items.append(Param(k, s))
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(step or 0)) for k, v in metrics.items()
                 if v is not None and not (isinstance(v, float) and math.isnan(v))]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i:i + _BATCH])

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        path = os.fspath(path)
        if os.path.isdir(path):
            self.client.log_artifacts(self.run_id, path, artifact_path)
        else:
            self.client.log_artifact(self.run_id, path, artifact_path)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, dict(data), artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @contextlib.contextmanager
    def child(self, name: str) -> Iterator["MlflowTracker"]:
        run = self.client.get_run(self.run_id)
        exp_name = self.client.get_experiment(run.info.experiment_id).name
        c = MlflowTracker(experiment=exp_name, run_name=name, tracking_uri=self.tracking_uri,
                          run_id=None, parent_run_id=self.run_id)
        # a child never inherits MLFLOW_RUN_ID: it always owns its own nested run
        try:
            yield c
        except BaseException:
            c.close(status="FAILED")
            raise
        c.close()

    # ------------------------------------------------------------------ lifecycle
    def close(self, status: str = "FINISHED") -> None:
        """Ends the run if this tracker created it (a run injected via MLFLOW_RUN_ID is left open)."""
        if not self._closed and self._owns_run:
            self.client.set_terminated(self.run_id, status=status)
        self._closed = True

    def __enter__(self) -> "MlflowTracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(status="FAILED" if exc_type else "FINISHED")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and len(v) < 50:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def child_run_summaries(parent_run_id: str, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Name, tags, latest metrics and start time of every run nested under ``parent_run_id``."""
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1000)
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "tags": dict(r.data.tags),
             "metrics": dict(r.data.metrics), "start_time": r.info.start_time} for r in runs]
