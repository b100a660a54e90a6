"""Champion / challenger bookkeeping in the MLflow model registry, with plain file artifacts.

A model version is a model DIRECTORY (``model.json`` + weights, float or quantized) logged as artifacts of a
run under ``registered/<fingerprint[:12]>/`` (unique per model content, so several steps sharing one run —
KFP's injected ``MLFLOW_RUN_ID`` — never overwrite each other) and registered with source
``runs:/<run_id>/registered/<fingerprint[:12]>`` — no MLflow flavour, no pickles, so
any recpipe version can read it back with :func:`recpipe.models.load_model` /
:func:`recpipe.quant.load_quantized_model` after :meth:`ModelRegistry.download`.

Aliases:

* ``champion`` — the served model. :meth:`ModelRegistry.promote` moves it to a new version and moves
  ``previous`` to the version that held ``champion`` before.
* ``previous`` — the champion before the last promotion (or rollback): :meth:`ModelRegistry.rollback` swaps
  ``champion`` and ``previous`` (so a second rollback rolls forward again) and tags what it did.

A rejected challenger keeps its version (for audit) and gets the tag ``challenger-rejected=true`` plus
``rejection_reasons``. Store resolution follows :mod:`recpipe.tracking.mlflow_tracker` (argument,
``MLFLOW_TRACKING_URI``, ``sqlite:///mlruns.db``).

:func:`evaluation_history` reads back previous evaluate runs' metrics of one registered model (NE by day
across daily runs).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from recpipe.tasks.base import model_fingerprint
from recpipe.tracking.mlflow_tracker import DEFAULT_EXPERIMENT, artifact_location, resolve_tracking_uri

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "recpipe-ctr"
CHAMPION = "champion"
PREVIOUS = "previous"
REJECTED_TAG = "challenger-rejected"
ARTIFACT_DIR = "registered"
FINGERPRINT_TAG = "recpipe.model_fingerprint"
FINGERPRINT_CHARS = 12  # 48 bits of sha256: unique among the versions one run can hold
EVAL_MODEL_TAG = "recpipe.eval.registry_model"
"""Run tag set by the evaluate step: the registered model it evaluated for (see :func:`evaluation_history`)."""
_MAX_TAG_LEN = 5000  # MLflow tag values are limited to 5000 characters (version tags: 5000)


class RegistryError(RuntimeError):
    """A registry operation cannot be done (e.g. rollback without a ``previous`` alias); names the model."""


@dataclass(frozen=True)
class VersionInfo:
    """One registered version: number, source URI, run, aliases and tags at read time."""

    name: str
    version: str
    source: str
    run_id: str | None
    aliases: tuple[str, ...]
    tags: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "source": self.source, "run_id": self.run_id,
                "aliases": list(self.aliases), "tags": dict(self.tags)}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


class ModelRegistry:
    """The registered model ``name`` in the store at ``tracking_uri`` (also used as the registry URI).

    Args:
        name: registered model name.
        tracking_uri: store URI (see module docstring); an ``http://`` URI talks to an ``mlflow server``.
    """

    def __init__(self, name: str = DEFAULT_MODEL_NAME, tracking_uri: str | None = None) -> None:
        self.name = name
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    # ------------------------------------------------------------------ reading
    def _info(self, mv: Any) -> VersionInfo:
        return VersionInfo(self.name, str(mv.version), mv.source, mv.run_id, tuple(mv.aliases or ()),
                           dict(mv.tags or {}))

    def get(self, version: str | int) -> VersionInfo:
        """A version by number; :class:`RegistryError` naming model and version if absent."""
        try:
            return self._info(self.client.get_model_version(self.name, str(version)))
        except MlflowException as e:
            raise RegistryError(f"model {self.name!r} version {version}: {e.message}") from e

    def by_alias(self, alias: str) -> VersionInfo | None:
        """The version holding ``alias``, or None when the model or the alias does not exist."""
        try:
            return self._info(self.client.get_model_version_by_alias(self.name, alias))
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise

    def aliases(self) -> dict[str, str]:
        """alias → version of the registered model ({} if it does not exist)."""
        try:
            rm = self.client.get_registered_model(self.name)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
        return {a: str(v) for a, v in (rm.aliases or {}).items()}

    # ------------------------------------------------------------------ writing
    def register(self, model_dir: str | os.PathLike[str], *, run_id: str | None = None,
                 experiment: str = DEFAULT_EXPERIMENT, tags: Mapping[str, str] | None = None,
                 description: str | None = None) -> VersionInfo:
        """Logs ``model_dir`` as artifacts ``registered/<fingerprint[:12]>/`` of a run and registers it as a new
        version tagged with the full fingerprint (:data:`FINGERPRINT_TAG`).

        Args:
            model_dir: the model directory (must contain ``model.json``).
            run_id: the run that owns the artifacts (e.g. the evaluation step's run); None → a new run named
                ``register`` in ``experiment``, ended after upload.
            experiment: experiment of that new run.
            tags: version tags (e.g. ``recpipe.blessing`` decision, training days).
            description: version description.
        """
        model_dir = os.fspath(model_dir)
        if not os.path.isfile(os.path.join(model_dir, "model.json")):
            raise RegistryError(f"{model_dir}: not a model directory (no model.json) for model {self.name!r}")
        own_run = run_id is None
        if run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
                experiment, artifact_location=artifact_location(self.tracking_uri, experiment))
            run_id = self.client.create_run(exp_id, run_name="register", tags={"recpipe.step": "register"}).info.run_id
        fingerprint = model_fingerprint(model_dir)
        artifact_path = f"{ARTIFACT_DIR}/{fingerprint[:FINGERPRINT_CHARS]}"
        self.client.log_artifacts(run_id, model_dir, artifact_path)
        if own_run:
            self.client.set_terminated(run_id)
        try:
            self.client.get_registered_model(self.name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(self.name, description="recpipe CTR model (champion/challenger)")
        all_tags = {"recpipe.model_dir": model_dir, "recpipe.registered_at": _now(), **(tags or {}),
                    FINGERPRINT_TAG: fingerprint}
        mv = self.client.create_model_version(self.name, f"runs:/{run_id}/{artifact_path}", run_id=run_id,
                                              tags={k: str(v)[:_MAX_TAG_LEN] for k, v in all_tags.items()},
                                              description=description)
        logger.info("registered %s version %s from %s (run %s)", self.name, mv.version, model_dir, run_id)
        return self.get(mv.version)

    def set_tags(self, version: str | int, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(self.name, str(version), k, str(v)[:_MAX_TAG_LEN])

    def promote(self, version: str | int, reason: str = "") -> dict[str, str | None]:
        """Moves ``champion`` to ``version``; the old champion (if any, and different) becomes ``previous``.

        Returns:
            ``{"champion": new version, "previous": version now holding previous (None if none)}``.
        """
        version = self.get(version).version
        old = self.by_alias(CHAMPION)
        if old is not None and old.version == version:
            logger.info("%s version %s is already the champion", self.name, version)
            prev = self.by_alias(PREVIOUS)
            return {"champion": version, "previous": prev.version if prev else None}
        if old is not None:
            self.client.set_registered_model_alias(self.name, PREVIOUS, old.version)
        self.client.set_registered_model_alias(self.name, CHAMPION, version)
        self.set_tags(version, {"recpipe.promoted_at": _now(), "recpipe.promotion_reason": reason or "gate passed"})
        logger.info("%s: champion %s -> %s", self.name, old.version if old else None, version)
        return {"champion": version, "previous": old.version if old else None}

    def reject(self, version: str | int, reasons: list[str] | str) -> None:
        """Tags ``version`` ``challenger-rejected=true`` with the gate's reasons (aliases unchanged)."""
        text = reasons if isinstance(reasons, str) else json.dumps(list(reasons))
        self.set_tags(version, {REJECTED_TAG: "true", "rejection_reasons": text, "recpipe.rejected_at": _now()})
        logger.info("%s version %s rejected: %s", self.name, version, text)

    def rollback(self, reason: str = "") -> dict[str, str]:
        """Swaps ``champion`` and ``previous``: the previous champion serves again.

        Raises:
            RegistryError: when there is no ``previous`` (nothing to roll back to) or no ``champion``.
        """
        prev, cur = self.by_alias(PREVIOUS), self.by_alias(CHAMPION)
        if prev is None or cur is None:
            raise RegistryError(f"model {self.name!r}: rollback needs aliases {CHAMPION!r} and {PREVIOUS!r}, "
                                f"found {self.aliases()}")
        self.client.set_registered_model_alias(self.name, CHAMPION, prev.version)
        self.client.set_registered_model_alias(self.name, PREVIOUS, cur.version)
        self.set_tags(cur.version, {"recpipe.rolled_back_at": _now(), "recpipe.rollback_reason": reason or "manual"})
        self.set_tags(prev.version, {"recpipe.restored_at": _now()})
        logger.warning("%s rolled back: champion %s -> %s", self.name, cur.version, prev.version)
        return {"champion": prev.version, "previous": cur.version}

    # ------------------------------------------------------------------ files
    def download(self, version_or_alias: str | int, dst_dir: str | os.PathLike[str]) -> str:
        """Downloads a version's model directory (by number or alias) under ``dst_dir``; returns its path."""
        ref = str(version_or_alias)
        info = self.get(ref) if ref.isdigit() else self.by_alias(ref)
        if info is None:
            raise RegistryError(f"model {self.name!r} has no alias {ref!r} (aliases: {self.aliases()})")
        uri = self.client.get_model_version_download_uri(self.name, info.version)
        os.makedirs(os.fspath(dst_dir), exist_ok=True)
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=os.fspath(dst_dir),
                                                   tracking_uri=self.tracking_uri)
        if not os.path.isfile(os.path.join(path, "model.json")):
            raise RegistryError(f"{path}: downloaded {self.name!r} version {info.version} has no model.json")
        return path


def resolve_alias_dir(alias: str, dst_dir: str | os.PathLike[str], name: str = DEFAULT_MODEL_NAME,
                      tracking_uri: str | None = None) -> str | None:
    """The local model directory of ``name@alias`` (downloaded under ``dst_dir``), or None if the alias is not
    set — e.g. training warm-starts from ``resolve_alias_dir("champion", tmp)`` when there is one."""
    reg = ModelRegistry(name, tracking_uri)
    if reg.by_alias(alias) is None:
        return None
    return reg.download(alias, dst_dir)


def evaluation_history(tracking_uri: str | None, experiment_id: str, model_name: str, limit: int = 30,
                       metrics: tuple[str, ...] = ("eval/ne",), exclude_run_id: str | None = None
                       ) -> list[dict[str, Any]]:
    """The last ``limit`` evaluate runs of ``model_name`` in an experiment, oldest first.

    Runs are those tagged :data:`EVAL_MODEL_TAG` ``= model_name`` (set only by the evaluate step, so a run
    shared by several steps still qualifies) that logged the first of ``metrics``.

    Args:
        tracking_uri: store URI (resolved as in :mod:`recpipe.tracking.mlflow_tracker`).
        experiment_id: experiment to search.
        model_name: registered model name the evaluations were for.
        limit: newest this many runs.
        metrics: metric keys to read (latest value of each; absent ones are left out of a row).
        exclude_run_id: leave this run out (the evaluation in progress).

    Returns:
        ``[{"run_id", "start_time" (ms), "days" (list of ISO days, from the ``eval.days`` param), "metrics"}]``.
    """
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    if "'" in model_name:
        raise ValueError(f"registered model name {model_name!r}: quotes are not supported in history search")
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{EVAL_MODEL_TAG}` = '{model_name}'",
                              order_by=["attributes.start_time DESC"],
                              max_results=2 * limit + 1)  # room for skipped runs (failed, no metric)
    out = []
    for r in runs:
        if r.info.run_id == exclude_run_id or metrics[0] not in r.data.metrics:
            continue
        days = [d for d in r.data.params.get("eval.days", "").split(",") if d]
        out.append({"run_id": r.info.run_id, "start_time": int(r.info.start_time), "days": days,
                    "metrics": {k: float(r.data.metrics[k]) for k in metrics if k in r.data.metrics}})
    return out[:limit][::-1]
