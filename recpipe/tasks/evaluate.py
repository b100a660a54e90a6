"""Step ``evaluate``: score the model that will be served (and the champion, and the float model beside a
quantized one) on the SAME held-out days; metrics overall and per slice with bootstrap intervals, paired deltas
against the champion, ROC / calibration curves, plots, and the promotion gate's blessing.

Outputs in ``output_dir``:

* ``metrics.json`` — the evaluation report (:meth:`recpipe.metrics.report.EvalAccumulator.report`) plus
  ``flat`` (tracker keys), provenance (days, model dirs, quantized or not), ``oov_ids`` (per model, ids
  beyond its tables that were scored as missing) and, with an MLflow tracker, ``history`` (NE of past runs).
* ``blessing.json`` — the gate decision (:func:`recpipe.metrics.gate.decide`) plus model fingerprint, model /
  champion dirs and ``compared_champion`` (:func:`champion_ref`); ``recpipe.tasks.promote`` acts on it and
  refuses when the registry's champion is no longer the one compared against.
* ``roc.json`` — ``{fpr, tpr, thresholds}`` of the served model (KFP ``ClassificationMetrics.log_roc_curve``).
* ``calibration.json``, ``report.md``, ``report.html`` (figures inlined) and ``plots/*.png`` (with an MLflow
  tracker also ``ne_history.png``: NE over the last ``history_days`` evaluate runs).

Vocabulary growth: a model trained on yesterday's smaller vocabulary has smaller tables than today's ids; per
model, ids beyond its tables are scored as the reserved missing id 0 and counted (``eval/oov_ids``,
``eval/champion/oov_ids``).

Model names inside the report: ``challenger`` (the served model: quantized when ``model_dir`` is quantized),
``float`` (the float model a quantized one came from, when available) and ``champion``.

Run: ``python -m recpipe.tasks.evaluate --model-dir M --dataset-root D --days 2026-01-05,2026-01-06
--output-dir OUT [--champion-model-dir C] [--config JSON] [--override-by WHO --override-reason WHY]``.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from recpipe.config import JsonConfig
from recpipe.data.batch import Batch
from recpipe.data.loader import LoaderConfig, ParquetLoader
from recpipe.metrics.gate import GateConfig, Override, decide
from recpipe.metrics.report import EvalAccumulator, ReportOptions, flat_metrics
from recpipe.models import load_model
from recpipe.quant import is_quantized_model_dir, load_quantized_model, training_model_dir
from recpipe.tasks.base import Result, config_from_arg, model_fingerprint, read_json, step_tracker, write_json
from recpipe.tracking.base import MemoryTracker, Tracker
from recpipe.tracking.plots import (evaluation_figures, figure_png, metric_history_figure, report_html,
                                    report_markdown)
from recpipe.train.loop import resolve_device

logger = logging.getLogger(__name__)

SERVED, FLOAT, CHAMPION = "challenger", "float", "champion"
DAY_SLICE = "day"
NO_ID = -1
"""Slice key of a row whose bag for the sliced feature is empty (multi-hot feature with no value)."""
MISSING_ID = 0
"""Reserved id "missing" in both encodings (recpipe/ingest/README.md, "Encodings"): where ids beyond a model's
table (vocabulary grown since it was trained) are sent."""
HISTORY_METRICS = ("eval/ne", "eval/champion/ne")
REGISTRY_MODEL_TAG = "recpipe.eval.registry_model"
"""Run tag naming the registered model evaluated for; equals :data:`recpipe.tracking.registry.EVAL_MODEL_TAG`
(not imported: that module pulls mlflow)."""


@dataclass(frozen=True)
class EvaluateConfig(JsonConfig):
    """Evaluation and gate settings.

    Attributes:
        slices: slice dimensions: ``"day"`` and/or sparse feature names (slice = the row's id of that feature;
            first id of a multi-hot bag).
        max_slices: per dimension, the largest this many slices are reported and gated.
        min_slice_count: smaller slices are not reported.
        bootstrap_samples: resamples for intervals (0 disables intervals; relative checks then use estimates).
            Cost ~ (1 + number of slice dimensions) x S x R x models row-weight updates (see
            benchmarks/eval_metrics.py for measured throughput).
        confidence: interval coverage.
        seed: bootstrap seed.
        batch_size: rows per scoring batch.
        max_rows: stop after this many rows (None: all rows of the days).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        roc_points: max ROC points in ``roc.json``.
        calibration_bins: reliability-diagram bins.
        champion_from_registry: when no ``champion_model_dir`` is passed, download ``registry_model@champion``
            from the MLflow registry (none → first run).
        registry_model: registered model name (also tags the run, so later runs find its metrics).
        history_days: with an MLflow tracker, plot ``eval/ne`` over the last this many evaluate runs of
            ``registry_model`` in the run's experiment (``ne_history.png``); 0 disables.
        gate: thresholds, first-run rule and manual override.
    """

    slices: tuple[str, ...] = (DAY_SLICE,)
    max_slices: int = 20
    min_slice_count: int = 100
    bootstrap_samples: int = 200
    confidence: float = 0.95
    seed: int = 0
    batch_size: int = 8192
    max_rows: int | None = None
    device: str = "cpu"
    roc_points: int = 200
    calibration_bins: int = 10
    champion_from_registry: bool = False
    registry_model: str = "recpipe-ctr"
    history_days: int = 30
    gate: GateConfig = field(default_factory=GateConfig)

    def report_options(self) -> ReportOptions:
        return ReportOptions(max_slices=self.max_slices, min_slice_count=self.min_slice_count,
                             bootstrap_samples=self.bootstrap_samples, confidence=self.confidence, seed=self.seed,
                             roc_points=self.roc_points, calibration_bins=self.calibration_bins)


def load_any_model(model_dir: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Loads a float or quantized model directory, in eval mode."""
    if is_quantized_model_dir(model_dir):
        model = load_quantized_model(model_dir, map_location=device)
    else:
        model = load_model(model_dir, map_location=device)
    return model.eval()


def champion_ref(champion_dir: str | None, registry_info: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the evaluation compared against, for promote's staleness check: ``{"kind": "registry",
    "version", "name", "fingerprint"}`` (downloaded alias), ``{"kind": "dir", "fingerprint", "dir"}`` (a
    directory passed in) or ``{"kind": "none"}`` (first run)."""
    if champion_dir is None:
        return {"kind": "none"}
    fingerprint = model_fingerprint(champion_dir)
    if registry_info is not None:
        return {"kind": "registry", "name": registry_info["name"], "version": str(registry_info["version"]),
                "fingerprint": fingerprint}
    return {"kind": "dir", "dir": champion_dir, "fingerprint": fingerprint}


def slice_keys(batch: Batch, dims: Sequence[str], sparse_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """(B,) int64 slice key per dimension: day index, or the first id of the feature's bag (:data:`NO_ID` if
    the bag is empty)."""
    b = batch.batch_size
    out = {}
    for d in dims:
        if d == DAY_SLICE:
            if batch.day is None:
                raise ValueError("slice 'day' requested but the batch carries no day index")
            out[d] = batch.day.to(torch.int64)
            continue
        f = list(sparse_names).index(d)
        off = batch.offsets[f * b: (f + 1) * b + 1]  # (B + 1,)
        lengths = off[1:] - off[:-1]
        if batch.indices.numel():
            # an empty bag's start may equal len(indices): clamp, the value is replaced by NO_ID below
            first = batch.indices[off[:-1].clamp_max(batch.indices.numel() - 1)]
        else:
            first = torch.zeros(b, dtype=torch.int64)
        out[d] = torch.where(lengths > 0, first, torch.full_like(first, NO_ID))
    return out


def head_rows(batch: Batch, n: int) -> Batch:
    """The first ``n`` rows of a batch (``n <= B``), sparse bags included, vectorised over the TBE layout.

    Bag (f, b) of the result is bag (f, b) of ``batch`` for b < n: per feature the first n (start, end)
    offset pairs are kept and their ids gathered into a new feature-major ``indices``.
    """
    b = batch.batch_size
    if n >= b:
        return batch
    f = batch.num_sparse
    starts = batch.offsets[:-1].reshape(f, b)[:, :n].reshape(-1)  # (F * n,)
    ends = batch.offsets[1:].reshape(f, b)[:, :n].reshape(-1)  # (F * n,)
    lengths = ends - starts
    offsets = torch.zeros(f * n + 1, dtype=batch.offsets.dtype, device=batch.offsets.device)
    torch.cumsum(lengths, 0, out=offsets[1:])
    total = int(offsets[-1])
    # id j of the result sits at starts[bag] + (j - offsets[bag]) in the source
    bag_start = torch.repeat_interleave(starts - offsets[:-1], lengths, output_size=total)  # (T',)
    pos = bag_start + torch.arange(total, device=batch.indices.device)
    day = batch.day[:n] if batch.day is not None else None
    return Batch(batch.dense[:n], batch.indices[pos], offsets, batch.labels[:n], day)


def remap_out_of_range(batch: Batch, table_sizes: Sequence[int]) -> tuple[Batch, torch.Tensor]:
    """Sends ids beyond a model's tables to :data:`MISSING_ID`, vectorised over the TBE layout.

    With the append-only vocabulary, today's ids can exceed the tables of a model trained on an older,
    smaller vocabulary (the champion); such an id is unknown to that model, like a missing value.

    Args:
        batch: the batch (indices (T,), feature-major offsets (F * B + 1,)).
        table_sizes: the model's F table sizes.

    Returns:
        (batch with remapped indices (T,), counts (F,) int64 of remapped ids per feature, on the batch's
        device).
    """
    b, f = batch.batch_size, len(table_sizes)
    if batch.offsets.numel() != f * b + 1:
        raise ValueError(f"batch has {batch.num_sparse} sparse features (offsets {batch.offsets.numel()}) but the "
                         f"model has {f} embedding tables")
    dev = batch.indices.device
    bounds = batch.offsets[::b] if b else torch.zeros(f + 1, dtype=torch.int64, device=dev)  # (F + 1,)
    per_feature = bounds[1:] - bounds[:-1]  # (F,)
    feature = torch.repeat_interleave(torch.arange(f, device=dev), per_feature,
                                      output_size=batch.indices.numel())  # (T,)
    sizes = torch.as_tensor(list(table_sizes), dtype=batch.indices.dtype, device=dev)
    oov = batch.indices >= sizes[feature]  # (T,)
    counts = torch.bincount(feature[oov], minlength=f)  # (F,), on the batch's device: no host sync per batch
    indices = torch.where(oov, torch.full_like(batch.indices, MISSING_ID), batch.indices)
    return Batch(batch.dense, indices, batch.offsets, batch.labels, batch.day), counts


def _float_source(model_dir: str, float_model_dir: str | None) -> str | None:
    if float_model_dir:
        return float_model_dir
    try:
        return training_model_dir(model_dir)  # the float model a quantized dir carries in float/
    except FileNotFoundError:  # quantized by an older recpipe: no float/ copy, try where it came from
        pass
    src = (read_json(os.path.join(model_dir, "model.json")).get("extra") or {}).get("source_model_dir")
    if src and os.path.isfile(os.path.join(src, "model.json")):
        return src
    if src:
        logger.warning("%s: float source %s is not reachable; evaluating the quantized model alone", model_dir, src)
    return None


def score(models: Mapping[str, torch.nn.Module], loader: ParquetLoader, dims: Sequence[str],
          device: torch.device, max_rows: int | None = None) -> tuple[EvalAccumulator, dict[str, torch.Tensor]]:
    """Runs every model on every batch of ``loader`` and accumulates predictions, labels and slice keys.

    Ids beyond a model's tables are remapped to :data:`MISSING_ID` for that model only
    (:func:`remap_out_of_range`); exactly ``max_rows`` rows are scored when the days hold more.

    Returns:
        (accumulator, model name → (F,) int64 count of remapped ids per sparse feature).
    """
    acc = EvalAccumulator(list(models), dims)
    sparse_names = loader.schema.sparse_names
    for d in dims:
        if d != DAY_SLICE and d not in sparse_names:
            raise ValueError(f"slice {d!r} is neither 'day' nor a sparse feature of {loader.root} "
                             f"(features: {sparse_names})")
    sizes = {m: getattr(model, "table_sizes", None) for m, model in models.items()}
    oov = {m: torch.zeros(len(sparse_names), dtype=torch.int64, device=device) for m in models}
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if max_rows is not None:
                if acc.num_rows >= max_rows:
                    break
                batch = head_rows(batch, max_rows - acc.num_rows)
            dev = batch.to(device)
            preds = {}
            for m, model in models.items():
                inputs = dev
                if sizes[m]:
                    try:
                        inputs, counts = remap_out_of_range(dev, sizes[m])
                    except ValueError as e:
                        raise ValueError(f"model {m!r} on {loader.root} days {loader.days}: {e}") from e
                    oov[m] += counts
                try:
                    preds[m] = torch.sigmoid(model(inputs)).float().cpu()  # (B,)
                except (IndexError, RuntimeError) as e:
                    raise RuntimeError(f"model {m!r} failed on batch {i} of {loader.root} days {loader.days} "
                                       f"(does it fit this data's schema?): {e}") from e
            acc.update(batch.labels, preds, slice_keys(batch, dims, sparse_names))
    oov = {m: c.cpu() for m, c in oov.items()}
    for m, counts in oov.items():
        if int(counts.sum()):
            logger.warning("model %r: %d ids beyond its tables scored as missing (id %d): %s", m,
                           int(counts.sum()), MISSING_ID,
                           {n: int(c) for n, c in zip(sparse_names, counts.tolist()) if c})
    return acc, oov


def _oov_report(oov: Mapping[str, torch.Tensor], sparse_names: Sequence[str]) -> dict[str, Any]:
    return {m: {"total": int(c.sum()), "by_feature": {n: int(v) for n, v in zip(sparse_names, c.tolist())}}
            for m, c in oov.items()}


def _history(cfg: EvaluateConfig, tracker: Tracker, report: Mapping[str, Any],
             flat: Mapping[str, float]) -> list[dict[str, Any]]:
    """Previous evaluate runs of ``cfg.registry_model`` plus this one (oldest first), or [] when the tracker
    is not an MLflow run (no ``tracking_uri`` / ``client``) or the lookup fails (the plot is optional)."""
    uri, client, run_id = (getattr(tracker, a, None) for a in ("tracking_uri", "client", "run_id"))
    if cfg.history_days <= 0 or not uri or client is None or not run_id:
        return []
    from mlflow.exceptions import MlflowException

    from recpipe.tracking.registry import evaluation_history

    try:
        experiment_id = client.get_run(run_id).info.experiment_id
        past = evaluation_history(uri, experiment_id, cfg.registry_model, cfg.history_days - 1,
                                  HISTORY_METRICS, exclude_run_id=run_id)
    except (MlflowException, OSError, ValueError) as e:
        logger.warning("no NE history for %r from %s: %s", cfg.registry_model, uri, e)
        return []
    current = {"run_id": run_id, "days": list(report["days"]),
               "metrics": {k: flat[k] for k in HISTORY_METRICS if k in flat}}
    return [*past, current]


def _resolve_champion(cfg: EvaluateConfig, champion_model_dir: str | None, tmp: str) -> tuple[str | None, Any]:
    if champion_model_dir or not cfg.champion_from_registry:
        return champion_model_dir, None
    from recpipe.tracking.registry import CHAMPION as ALIAS, ModelRegistry

    reg = ModelRegistry(cfg.registry_model)
    info = reg.by_alias(ALIAS)
    if info is None:
        logger.info("registry model %r has no champion: first run", cfg.registry_model)
        return None, None
    return reg.download(info.version, tmp), info.to_dict()  # by number: the alias may move meanwhile


def _log(tracker: Tracker, cfg: EvaluateConfig, report: dict[str, Any], blessing: dict[str, Any],
         flat: Mapping[str, float], figures: Mapping[str, Any]) -> None:
    tracker.log_params({"eval.config": cfg.to_json(), "eval.days": ",".join(report["days"])})
    tracker.log_metrics(flat)
    tracker.log_dict(report, "eval/metrics.json")
    tracker.log_dict(blessing, "eval/blessing.json")
    for name, fig in figures.items():
        tracker.log_figure(fig, f"eval/{name}")
    tags = {"recpipe.gate.decision": blessing["decision"], "recpipe.gate.rule": blessing["rule"],
            "recpipe.gate.automatic_decision": blessing["automatic_decision"],
            "recpipe.eval.champion": str(blessing["compared_champion"].get("version")
                                         or blessing["compared_champion"]["kind"]),
            REGISTRY_MODEL_TAG: cfg.registry_model}
    if blessing["override"]:
        tags.update({"recpipe.gate.override": "true", "recpipe.gate.override_by": blessing["override"]["who"],
                     "recpipe.gate.override_reason": blessing["override"]["why"]})
    tracker.set_tags(tags)


def run(cfg: EvaluateConfig, *, model_dir: str, dataset_root: str, days: Sequence[str] | None, output_dir: str,
        champion_model_dir: str | None = None, float_model_dir: str | None = None,
        tracker: Tracker | None = None) -> Result:
    """Evaluates ``model_dir`` (and the champion) on ``days`` of ``dataset_root`` and writes the blessing.

    Args:
        cfg: evaluation and gate settings.
        model_dir: the candidate model as it will be served (float or quantized directory).
        dataset_root: processed day-partitioned Parquet root.
        days: ISO days to evaluate on (None: every day under the root).
        output_dir: where the files listed in the module docstring go.
        champion_model_dir: the current champion's directory; None → ``cfg.champion_from_registry`` or the
            first-run rule.
        float_model_dir: the float model of a quantized ``model_dir`` (default: its ``source_model_dir``).
        tracker: where metrics, figures, the blessing and gate tags are logged (None: in memory only).

    Returns:
        :class:`Result` with ``metrics`` (served model's ``eval/...`` keys, deltas, ``eval/blessed``),
        ``metadata`` (decision, reasons, rows, days, ``roc`` lists for KFP ClassificationMetrics,
        ``report_markdown``) and ``outputs`` (file paths).
    """
    tracker = tracker if tracker is not None else MemoryTracker("evaluate")
    cfg.gate.validate()
    device = resolve_device(cfg.device)
    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recpipe-champion-") as tmp:
        champion_dir, champion_info = _resolve_champion(cfg, champion_model_dir, tmp)
        quantized = is_quantized_model_dir(model_dir)
        models = {SERVED: load_any_model(model_dir, device)}
        float_dir = _float_source(model_dir, float_model_dir) if quantized else None
        if float_dir:
            models[FLOAT] = load_any_model(float_dir, device)
        if champion_dir:
            models[CHAMPION] = load_any_model(champion_dir, device)
        schema = getattr(models[SERVED], "schema", None)
        loader = ParquetLoader(dataset_root, LoaderConfig(batch_size=cfg.batch_size), schema=schema,
                               days=list(days) if days else None)
        acc, oov = score(models, loader, cfg.slices, device, cfg.max_rows)
        compared = champion_ref(champion_dir, champion_info)  # fingerprint while the download still exists
    logger.info("scored %d rows of %s with %s", acc.num_rows, loader.days, list(models))
    names = {DAY_SLICE: dict(enumerate(loader.days))}
    report = acc.report(cfg.report_options(), baseline=CHAMPION if champion_dir else None, key_names=names)
    report.update({"days": list(loader.days), "model_dir": model_dir, "quantized": quantized,
                   "float_model_dir": float_dir, "champion_model_dir": champion_dir, "champion": champion_info,
                   "compared_champion": compared, "oov_ids": _oov_report(oov, loader.schema.sparse_names)})
    blessing = decide(cfg.gate, report, SERVED, CHAMPION if champion_dir else None)
    blessing.update({"model_dir": model_dir, "model_fingerprint": model_fingerprint(model_dir),
                     "champion_model_dir": champion_dir, "champion": champion_info, "compared_champion": compared,
                     "days": list(loader.days), "rows": report["rows"], "quantized": quantized,
                     "metrics": report["metrics"][SERVED]["overall"]})
    flat = flat_metrics(report, SERVED, include_slices=True)
    for other, prefix in ((FLOAT, "eval/float/"), (CHAMPION, "eval/champion/")):
        if other in models:
            flat.update({k: v for k, v in flat_metrics(report, other, prefix).items() if "/delta/" not in k})
    for other, prefix in ((SERVED, "eval/"), (FLOAT, "eval/float/"), (CHAMPION, "eval/champion/")):
        if other in oov:
            flat[f"{prefix}oov_ids"] = float(oov[other].sum())
    flat["eval/blessed"] = float(blessing["blessed"])
    report["flat"] = flat
    figures = evaluation_figures(report)
    history = _history(cfg, tracker, report, flat)
    if history:
        report["history"] = history
        figures["ne_history.png"] = metric_history_figure(history, "eval/ne", {"champion": "eval/champion/ne"})
    outputs = {"metrics": os.path.join(output_dir, "metrics.json"),
               "blessing": os.path.join(output_dir, "blessing.json"),
               "roc": os.path.join(output_dir, "roc.json"),
               "calibration": os.path.join(output_dir, "calibration.json"),
               "report_md": os.path.join(output_dir, "report.md"),
               "report_html": os.path.join(output_dir, "report.html"),
               "plots": os.path.join(output_dir, "plots")}
    write_json(outputs["metrics"], report)
    write_json(outputs["blessing"], blessing)
    roc = report["curves"][SERVED].get("roc", {"fpr": [], "tpr": [], "thresholds": []})
    write_json(outputs["roc"], roc)
    write_json(outputs["calibration"], report["curves"][SERVED]["calibration"])
    pngs = {name: figure_png(fig) for name, fig in figures.items()}  # render once: files + inlined HTML
    os.makedirs(outputs["plots"], exist_ok=True)
    for name, data in pngs.items():
        with open(os.path.join(outputs["plots"], name), "wb") as fh:
            fh.write(data)
    markdown = report_markdown(report, blessing)
    with open(outputs["report_md"], "w", encoding="utf-8") as fh:
        fh.write(markdown)
    with open(outputs["report_html"], "w", encoding="utf-8") as fh:
        fh.write(report_html(report, blessing, pngs))
    _log(tracker, cfg, report, blessing, flat, figures)
    logger.info("gate: %s (%s)", blessing["decision"], "; ".join(blessing["reasons"]) or "all checks passed")
    metrics = {k: v for k, v in flat.items() if "/slice/" not in k}
    metadata = {"blessed": blessing["blessed"], "decision": blessing["decision"], "rule": blessing["rule"],
                "reasons": blessing["reasons"], "rows": report["rows"], "days": report["days"],
                "quantized": quantized, "model_fingerprint": blessing["model_fingerprint"],
                "mlflow_run_id": tracker.run_id, "roc": roc, "report_markdown": markdown}
    return Result(metrics=metrics, metadata=metadata, outputs=outputs)


def main(argv: Sequence[str] | None = None) -> Result:
    """CLI: ``python -m recpipe.tasks.evaluate --model-dir M --dataset-root D --output-dir O [...]``."""
    ap = argparse.ArgumentParser(prog="recpipe evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="", help="EvaluateConfig as JSON text, or a JSON file (path or @path)")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--dataset-root", required=True)
    ap.add_argument("--days", default="", help="comma-separated ISO days (default: all)")
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--champion-model-dir", default=None)
    ap.add_argument("--float-model-dir", default=None)
    ap.add_argument("--override-by", default=None, help="manual gate override: who (requires --override-reason)")
    ap.add_argument("--override-reason", default=None, help="manual gate override: why")
    ap.add_argument("--override-decision", default="pass", choices=("pass", "fail"))
    args = ap.parse_args(argv)
    cfg = config_from_arg(EvaluateConfig, args.config)
    if args.override_by or args.override_reason:
        cfg = cfg.replace(gate=cfg.gate.replace(override=Override(args.override_by or "", args.override_reason or "",
                                                                  args.override_decision)))
    days = [d for d in args.days.split(",") if d] or None
    with step_tracker("evaluate") as tracker:
        return run(cfg, model_dir=args.model_dir, dataset_root=args.dataset_root, days=days,
                   output_dir=args.output_dir, champion_model_dir=args.champion_model_dir,
                   float_model_dir=args.float_model_dir, tracker=tracker)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
