"""Step ``evaluate``: score the model that will be served (and the champion, and the float model beside a
quantized one) on the SAME held-out days; metrics overall and per slice with bootstrap intervals, paired deltas
against the champion, ROC / calibration curves, plots, and the promotion gate's blessing.

Outputs in ``output_dir``:

* ``metrics.json`` — the evaluation report (:meth:`recpipe.metrics.report.EvalAccumulator.report`) plus
  ``flat`` (tracker keys) and provenance (days, model dirs, quantized or not).
* ``blessing.json`` — the gate decision (:func:`recpipe.metrics.gate.decide`) plus model fingerprint, model /
  champion dirs; ``recpipe.tasks.promote`` acts on it.
* ``roc.json`` — ``{fpr, tpr, thresholds}`` of the served model (KFP ``ClassificationMetrics.log_roc_curve``).
* ``calibration.json``, ``report.md``, ``report.html`` (figures inlined) and ``plots/*.png``.

Model names inside the report: ``challenger`` (the served model: quantized when ``model_dir`` is quantized),
``float`` (the float model a quantized one came from, when available) and ``champion``.

Run: ``python -m recpipe.tasks.evaluate --model-dir M --dataset-root D --days 2026-01-05,2026-01-06
--output-dir OUT [--champion-model-dir C] [--config JSON] [--override-by WHO --override-reason WHY]``.
"""
from __future__ import annotations

import argparse
import hashlib
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
from recpipe.tasks.base import Result, read_json, step_tracker, write_json
from recpipe.tracking.base import MemoryTracker, Tracker
from recpipe.tracking.plots import evaluation_figures, figure_png, report_html, report_markdown

logger = logging.getLogger(__name__)

SERVED, FLOAT, CHAMPION = "challenger", "float", "champion"
DAY_SLICE = "day"
NO_ID = -1
"""Slice key of a row whose bag for the sliced feature is empty (multi-hot feature with no value)."""


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
        registry_model: registered model name.
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
    gate: GateConfig = field(default_factory=GateConfig)

    def report_options(self) -> ReportOptions:
        return ReportOptions(max_slices=self.max_slices, min_slice_count=self.min_slice_count,
                             bootstrap_samples=self.bootstrap_samples, confidence=self.confidence, seed=self.seed,
                             roc_points=self.roc_points, calibration_bins=self.calibration_bins)


def is_quantized_dir(model_dir: str) -> bool:
    """Whether ``model.json`` carries the quantized marker (see :mod:`recpipe.quant.io`)."""
    return "quantized" in read_json(os.path.join(model_dir, "model.json"))


def load_any_model(model_dir: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Loads a float or quantized model directory, in eval mode."""
    if is_quantized_dir(model_dir):
        from recpipe.quant import load_quantized_model

        model = load_quantized_model(model_dir, map_location=device)
    else:
        model = load_model(model_dir, map_location=device)
    return model.eval()


def model_fingerprint(model_dir: str) -> str:
    """sha256 over the names and contents of every file of a model directory (sorted walk): promote checks
    the evaluated and the registered model are byte-identical."""
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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _float_source(model_dir: str, float_model_dir: str | None) -> str | None:
    if float_model_dir:
        return float_model_dir
    src = (read_json(os.path.join(model_dir, "model.json")).get("extra") or {}).get("source_model_dir")
    if src and os.path.isfile(os.path.join(src, "model.json")):
        return src
    if src:
        logger.warning("%s: float source %s is not reachable; evaluating the quantized model alone", model_dir, src)
    return None


def score(models: Mapping[str, torch.nn.Module], loader: ParquetLoader, dims: Sequence[str],
          device: torch.device, max_rows: int | None = None) -> EvalAccumulator:
    """Runs every model on every batch of ``loader`` and accumulates predictions, labels and slice keys."""
    acc = EvalAccumulator(list(models), dims)
    sparse_names = loader.schema.sparse_names
    for d in dims:
        if d != DAY_SLICE and d not in sparse_names:
            raise ValueError(f"slice {d!r} is neither 'day' nor a sparse feature of {loader.root} "
                             f"(features: {sparse_names})")
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if max_rows is not None and acc.num_rows >= max_rows:
                break
            dev = batch.to(device)
            preds = {}
            for m, model in models.items():
                try:
                    preds[m] = torch.sigmoid(model(dev)).float().cpu()  # (B,)
                except (IndexError, RuntimeError) as e:  # typically ids beyond an older model's tables
                    raise RuntimeError(f"model {m!r} failed on batch {i} of {loader.root} days {loader.days} "
                                       f"(does it fit this data's schema / table sizes?): {e}") from e
            acc.update(batch.labels, preds, slice_keys(batch, dims, sparse_names))
    return acc


def _resolve_champion(cfg: EvaluateConfig, champion_model_dir: str | None, tmp: str) -> tuple[str | None, Any]:
    if champion_model_dir or not cfg.champion_from_registry:
        return champion_model_dir, None
    from recpipe.tracking.registry import CHAMPION as ALIAS, ModelRegistry

    reg = ModelRegistry(cfg.registry_model)
    info = reg.by_alias(ALIAS)
    if info is None:
        logger.info("registry model %r has no champion: first run", cfg.registry_model)
        return None, None
    return reg.download(ALIAS, tmp), info.to_dict()


def _log(tracker: Tracker, cfg: EvaluateConfig, report: dict[str, Any], blessing: dict[str, Any],
         flat: Mapping[str, float], figures: Mapping[str, Any]) -> None:
    tracker.log_params({"eval.config": cfg.to_json(), "eval.days": ",".join(report["days"])})
    tracker.log_metrics(flat)
    tracker.log_dict(report, "eval/metrics.json")
    tracker.log_dict(blessing, "eval/blessing.json")
    for name, fig in figures.items():
        tracker.log_figure(fig, f"eval/{name}")
    tags = {"recpipe.gate.decision": blessing["decision"], "recpipe.gate.rule": blessing["rule"],
            "recpipe.gate.automatic_decision": blessing["automatic_decision"]}
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
    device = _device(cfg.device)
    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recpipe-champion-") as tmp:
        champion_dir, champion_info = _resolve_champion(cfg, champion_model_dir, tmp)
        quantized = is_quantized_dir(model_dir)
        models = {SERVED: load_any_model(model_dir, device)}
        float_dir = _float_source(model_dir, float_model_dir) if quantized else None
        if float_dir:
            models[FLOAT] = load_any_model(float_dir, device)
        if champion_dir:
            models[CHAMPION] = load_any_model(champion_dir, device)
        schema = getattr(models[SERVED], "schema", None)
        loader = ParquetLoader(dataset_root, LoaderConfig(batch_size=cfg.batch_size), schema=schema,
                               days=list(days) if days else None)
        acc = score(models, loader, cfg.slices, device, cfg.max_rows)
    logger.info("scored %d rows of %s with %s", acc.num_rows, loader.days, list(models))
    names = {DAY_SLICE: dict(enumerate(loader.days))}
    report = acc.report(cfg.report_options(), baseline=CHAMPION if champion_dir else None, key_names=names)
    report.update({"days": list(loader.days), "model_dir": model_dir, "quantized": quantized,
                   "float_model_dir": float_dir, "champion_model_dir": champion_dir, "champion": champion_info})
    blessing = decide(cfg.gate, report, SERVED, CHAMPION if champion_dir else None)
    blessing.update({"model_dir": model_dir, "model_fingerprint": model_fingerprint(model_dir),
                     "champion_model_dir": champion_dir, "champion": champion_info, "days": list(loader.days),
                     "rows": report["rows"], "quantized": quantized,
                     "metrics": report["metrics"][SERVED]["overall"]})
    flat = flat_metrics(report, SERVED, include_slices=True)
    for other, prefix in ((FLOAT, "eval/float/"), (CHAMPION, "eval/champion/")):
        if other in models:
            flat.update({k: v for k, v in flat_metrics(report, other, prefix).items() if "/delta/" not in k})
    flat["eval/blessed"] = float(blessing["blessed"])
    report["flat"] = flat
    figures = evaluation_figures(report)
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
    ap.add_argument("--config", default="", help="EvaluateConfig as JSON")
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
    cfg = EvaluateConfig.from_json(args.config)
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
