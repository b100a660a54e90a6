"""Step executor: post-training quantization of a trained model's embedding tables.

``python -m recpipe.tasks.quantize --model-dir M --output-dir Q [--eval-dataset-root P --eval-days D1,D2]
[--config JSON]`` reads the float model directory written by :func:`recpipe.models.save_model`, quantizes its
embedding tables (:mod:`recpipe.quant`), writes the quantized model directory (:mod:`recpipe.quant.io`) and
``report.json`` beside it, and returns a :class:`~recpipe.tasks.base.Result`.

The quantized directory (``--output-dir``)::

    model.json    the quantized model (spec, table sizes, schema, "quantized" marker, tensor index); its
                  ``extra`` is the float model's ``extra`` (days_trained, last_day ...) plus
                  ``source_model_dir``, ``quant_config`` and ``float_model_dir`` ("float")
    weights.bin   the quantized tensors
    report.json   see below
    float/        a complete copy of the float model directory (model.pt, model.json, and every other file
                  training wrote there, e.g. the pruner state): the training state that travels with the
                  served model. Warm starts from a quantized directory read it through
                  :func:`recpipe.quant.training_model_dir`; the int codes never seed training.

``report.json``::

    {"config": {...}, "source_model_dir": ...,
     "tables": [{"table", "name", "rows", "dim", "kind", "method", "bits", "fp32_bytes", "quantized_bytes",
                 "ratio_to_fp32", "floor_ratio", "at_floor", "mse", "mse_minmax", "mse_greedy",
                 "greedy_mse_reduction"}, ...],
     "total": {"fp32_bytes", "quantized_bytes", "ratio_to_fp32", "mse", "mse_minmax", "mse_greedy",
               "greedy_mse_reduction"},
     "mixed": null | {"bits", "float_ne", "final_ne", "trials", "over_budget"},
     "eval": null | {"float": {auc, logloss, ne, ...}, "quantized": {...}, "ne_delta", "ne_rel_delta",
                     "auc_delta", "rows"}}

``floor_ratio`` is the size a row-wise table cannot go below: ``bits / 32`` for the codes plus the per-row
scale and bias (``8 / (4 D)`` at 8 bit, ``4 / (4 D)`` at 4 / 2 bit) — 1/8 + 1/D = 14.06% at 4 bit, D = 64;
the fused layout has no padding, so ``at_floor`` must be true for every row-wise table with D a multiple of
8 / bits. ``mse_minmax`` / ``mse_greedy`` quantize the same table both ways at its chosen width, so the greedy
search's gain is measured on the model's own trained rows.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any, Sequence


from recpipe.data.batch import Batch
from recpipe.data.loader import LoaderConfig, ParquetLoader
from recpipe.metrics.functional import summary
from recpipe.models import load_model, read_model_config
from recpipe.models.graph import GraphModel
from recpipe.models.predict import predict
from recpipe.ops import quant as qops
from recpipe.quant import (FLOAT_DIR, QuantConfig, TableQuantConfig, quantize_model, quantize_table,
                           reconstruction_mse, save_quantized_model, table_report, table_weights,
                           training_model_dir)
from recpipe.tasks.base import Result, step_tracker, write_json
from recpipe.tracking.base import NullTracker, Tracker

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"


@dataclass(frozen=True)
class QuantizeConfig(QuantConfig):
    """Quantization step settings: :class:`recpipe.quant.QuantConfig` (bits (default 4), method
    "greedy" | "minmax" | "codebook", num_bins, ratio, codebook options, ``mixed`` policy) plus evaluation.

    Attributes:
        eval_batch_size: rows per evaluation batch.
        eval_max_batches: cap on evaluation batches read (0 = every row of the eval days).
        compare_methods: also quantize every table with min-max and greedy to report their MSE side by side.
    """

    eval_batch_size: int = 4096
    eval_max_batches: int = 50
    compare_methods: bool = True

    def quant_config(self) -> QuantConfig:
        """The library-level part of this config."""
        fields = {f: getattr(self, f) for f in QuantConfig.__dataclass_fields__}
        return QuantConfig(**fields)


def _floor_ratio(bits: int, dim: int) -> float:
    return bits / 32 + qops.scale_bias_bytes(bits) / (4 * dim)


def _table_section(model: GraphModel, qmodel: GraphModel, cfg: QuantizeConfig) -> tuple[list[dict], dict]:
    float_emb, q_emb = model.embedding, qmodel.embedding
    names = [f.name for f in model.schema.sparse] if model.schema is not None else None
    rows: list[dict[str, Any]] = []
    sums = {"fp32_bytes": 0, "quantized_bytes": 0, "sq_err": 0.0, "sq_minmax": 0.0, "sq_greedy": 0.0, "values": 0}
    for f, w in enumerate(table_weights(float_emb)):
        table = q_emb.table(f)
        rep = {"table": f, "name": names[f] if names else f"table_{f}", **table_report(w, table)}
        rep["floor_ratio"] = _floor_ratio(table.bits, table.dim) if table.kind == "rowwise" else None
        rep["at_floor"] = (rep["floor_ratio"] is not None
                           and abs(rep["ratio_to_fp32"] - rep["floor_ratio"]) < 1e-12)
        if cfg.compare_methods:
            for method in ("minmax", "greedy"):
                same = table.kind == "rowwise" and table.method == method
                rep[f"mse_{method}"] = rep["mse"] if same else reconstruction_mse(
                    w, quantize_table(w, TableQuantConfig(bits=table.bits, method=method, num_bins=cfg.num_bins,
                                                          ratio=cfg.ratio)))
            rep["greedy_mse_reduction"] = 1 - rep["mse_greedy"] / rep["mse_minmax"] if rep["mse_minmax"] else 0.0
            sums["sq_minmax"] += rep["mse_minmax"] * w.numel()
            sums["sq_greedy"] += rep["mse_greedy"] * w.numel()
        sums["fp32_bytes"] += rep["fp32_bytes"]
        sums["quantized_bytes"] += rep["quantized_bytes"]
        sums["sq_err"] += rep["mse"] * w.numel()
        sums["values"] += w.numel()
        rows.append(rep)
    n = max(sums["values"], 1)
    total = {"fp32_bytes": sums["fp32_bytes"], "quantized_bytes": sums["quantized_bytes"],
             "ratio_to_fp32": sums["quantized_bytes"] / max(sums["fp32_bytes"], 1), "mse": sums["sq_err"] / n}
    if cfg.compare_methods:
        total["mse_minmax"] = sums["sq_minmax"] / n
        total["mse_greedy"] = sums["sq_greedy"] / n
        total["greedy_mse_reduction"] = 1 - total["mse_greedy"] / total["mse_minmax"] if total["mse_minmax"] else 0.0
    return rows, total


def _eval_section(model: GraphModel, qmodel: GraphModel, batches: Sequence[Batch]) -> dict[str, Any]:
    p_float, labels = predict(model, batches)
    p_quant, _ = predict(qmodel, batches)
    m_float, m_quant = summary(p_float, labels), summary(p_quant, labels)
    return {"float": m_float, "quantized": m_quant, "rows": int(labels.numel()),
            "ne_delta": m_quant["ne"] - m_float["ne"],
            "ne_rel_delta": (m_quant["ne"] - m_float["ne"]) / m_float["ne"] if m_float["ne"] else float("nan"),
            "auc_delta": m_quant["auc"] - m_float["auc"],
            "max_abs_pred_diff": float((p_quant - p_float).abs().max()) if labels.numel() else 0.0}


def read_eval_batches(dataset_root: str, days: Sequence[str] | None, model: GraphModel,
                      cfg: QuantizeConfig) -> list[Batch]:
    """Reads up to ``cfg.eval_max_batches`` batches of the eval days with the model's schema."""
    # Without a schema in the model directory the loader takes the one stored in the Parquet files.
    loader = ParquetLoader(dataset_root, LoaderConfig(batch_size=cfg.eval_batch_size), schema=model.schema,
                           days=list(days) if days else None)
    out: list[Batch] = []
    for batch in loader:
        out.append(batch)
        if cfg.eval_max_batches and len(out) >= cfg.eval_max_batches:
            break
    if not out:
        raise ValueError(f"quantize: no evaluation rows under {dataset_root} for days {list(days or [])}")
    return out


def _split_for_search(batches: list[Batch]) -> tuple[list[Batch], list[Batch]]:
    """Measured mixed precision chooses widths on the even batches and is reported on the odd ones."""
    if len(batches) < 2:
        logger.warning("only one evaluation batch: mixed precision is chosen and reported on the same rows")
        return batches, batches
    return batches[0::2], batches[1::2]


def _check_dirs(model_dir: str, output_dir: str) -> None:
    src, dst = os.path.realpath(model_dir), os.path.realpath(output_dir)
    if dst == src or dst.startswith(src + os.sep):
        raise ValueError(f"quantize: output dir {output_dir} must lie outside the float model dir {model_dir} "
                         f"(the float model is copied into {output_dir}/{FLOAT_DIR})")


def copy_float_model(model_dir: str, output_dir: str) -> str:
    """Copies the whole float model directory to ``<output_dir>/float`` (replacing an older copy).

    The copy goes to a temporary sibling first and is renamed into place, so ``float/`` is either the old or
    the complete new copy.

    Returns:
        The path of the copy.
    """
    dst = os.path.join(output_dir, FLOAT_DIR)
    tmp = os.path.join(output_dir, f".{FLOAT_DIR}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp)
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return dst


def run(cfg: QuantizeConfig, *, model_dir: str, output_dir: str, eval_dataset_root: str | None = None,
        eval_days: Sequence[str] | None = None, tracker: Tracker | None = None) -> Result:
    """Quantizes the embedding tables of a trained model.

    Args:
        cfg: quantization and evaluation settings.
        model_dir: float model directory (``recpipe.models.save_model``), or a quantized one, whose ``float/``
            copy is then quantized again (:func:`recpipe.quant.training_model_dir`).
        output_dir: where the quantized model (``model.json`` + ``weights.bin``), ``report.json`` and the float
            model's copy ``float/`` go (see the module docstring); must not lie inside ``model_dir``.
        eval_dataset_root: processed Parquet root of held-out data (optional). Needed for the "measured"
            mixed-precision policy; when given, NE/AUC of the float and quantized models are compared. Under
            "measured", widths are chosen on the even-numbered eval batches and the report uses the odd ones,
            so the reported NE is not the one the search optimised.
        eval_days: days (``YYYY-MM-DD``) under ``eval_dataset_root`` to evaluate on (None = all).
        tracker: where params, metrics and the report are logged.

    Returns:
        Result with metrics ``quant/*`` (and ``eval/*`` with eval data), provenance metadata and the output
        paths ``model_dir``, ``report`` and ``float_model_dir``.
    """
    tracker = tracker if tracker is not None else NullTracker()
    tracker.log_params({f"quant/{k}": json.dumps(v) if isinstance(v, (dict, list)) else v
                        for k, v in cfg.to_dict().items()})
    model_dir, output_dir = os.fspath(model_dir), os.fspath(output_dir)
    _check_dirs(model_dir, output_dir)
    model_dir = training_model_dir(model_dir)  # a served (quantized) dir is re-quantized from its float copy
    float_extra = dict(read_model_config(model_dir).get("extra") or {})
    model = load_model(model_dir).eval()
    if model.embedding is None:
        raise ValueError(f"{model_dir}: the model has no embedding tables to quantize")
    try:
        cfg.validate_dim(model.embedding.embedding_dim)
    except ValueError as e:
        raise ValueError(f"{model_dir}: {e}") from e
    batches: list[Batch] = []
    if eval_dataset_root is not None:
        batches = read_eval_batches(eval_dataset_root, eval_days, model, cfg)
    search, report_batches = (_split_for_search(batches) if cfg.mixed.mode == "measured" else (batches, batches))
    qmodel = quantize_model(model, cfg.quant_config(), eval_batches=search or None)
    tables, total = _table_section(model, qmodel, cfg)
    report: dict[str, Any] = {"config": cfg.to_dict(), "source_model_dir": model_dir, "tables": tables,
                              "total": total, "mixed": None, "eval": None}
    if qmodel.quant_choice is not None:
        report["mixed"] = asdict(qmodel.quant_choice)
    if report_batches:
        report["eval"] = _eval_section(model, qmodel, report_batches)
    os.makedirs(output_dir, exist_ok=True)
    float_copy = copy_float_model(model_dir, output_dir)  # before model.json: the marker implies the copy
    save_quantized_model(qmodel, output_dir, extra={**float_extra, "source_model_dir": model_dir,
                                                    "quant_config": cfg.to_dict(), "float_model_dir": FLOAT_DIR})
    report_path = os.path.join(output_dir, REPORT_FILE)
    write_json(report_path, report)

    metrics = {"quant/bytes_ratio": total["ratio_to_fp32"], "quant/bytes": float(total["quantized_bytes"]),
               "quant/fp32_bytes": float(total["fp32_bytes"]), "quant/mse": total["mse"]}
    if cfg.compare_methods:
        metrics.update({"quant/mse_minmax": total["mse_minmax"], "quant/mse_greedy": total["mse_greedy"],
                        "quant/greedy_mse_reduction": total["greedy_mse_reduction"]})
    if report["eval"] is not None:
        ev = report["eval"]
        metrics.update({"eval/ne": ev["quantized"]["ne"], "eval/auc": ev["quantized"]["auc"],
                        "eval/logloss": ev["quantized"]["logloss"], "eval/ne_float": ev["float"]["ne"],
                        "eval/auc_float": ev["float"]["auc"], "eval/ne_delta": ev["ne_delta"],
                        "eval/ne_rel_delta": ev["ne_rel_delta"], "eval/auc_delta": ev["auc_delta"]})
    tracker.log_metrics(metrics)
    tracker.log_dict(report, "quantize/report.json")
    tracker.set_tags({"quant/bits": ",".join(map(str, qmodel.embedding.bits)), "quant/method": cfg.method})
    logger.info("quantized %s -> %s: %.2f%% of fp32 bytes, mse %.3g", model_dir, output_dir,
                100 * total["ratio_to_fp32"], total["mse"])
    metadata = {"source_model_dir": model_dir, "bits": qmodel.embedding.bits, "method": cfg.method,
                "bytes_ratio": total["ratio_to_fp32"], "config": cfg.to_dict(), "mlflow_run_id": tracker.run_id,
                "quantized": True}
    return Result(metrics=metrics, metadata=metadata, outputs={"model_dir": output_dir, "report": report_path,
                                                               "float_model_dir": float_copy})


def _load_config(text: str | None) -> QuantizeConfig:
    if not text:
        return QuantizeConfig()
    if os.path.exists(text):
        with open(text, encoding="utf-8") as fh:
            return QuantizeConfig.from_dict(json.load(fh))
    return QuantizeConfig.from_json(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recpipe.tasks.quantize", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="QuantizeConfig as a JSON string or a path to a JSON file")
    p.add_argument("--model-dir", required=True, help="float model directory")
    p.add_argument("--output-dir", required=True, help="where the quantized model and report.json go")
    p.add_argument("--eval-dataset-root", default=None, help="processed Parquet root of held-out data")
    p.add_argument("--eval-days", default=None, help="comma-separated YYYY-MM-DD days (default: all)")
    return p


def main(argv: Sequence[str] | None = None) -> Result:
    """CLI entry point: runs inside the step's tracker (:func:`recpipe.tasks.base.step_tracker`), logs the
    Result as JSON and returns it."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    days = [d for d in args.eval_days.split(",") if d] if args.eval_days else None
    cfg = _load_config(args.config)
    with step_tracker("quantize") as tracker:
        result = run(cfg, model_dir=args.model_dir, output_dir=args.output_dir,
                     eval_dataset_root=args.eval_dataset_root, eval_days=days, tracker=tracker)
    logger.info("result: %s", json.dumps(result.to_dict(), default=str))
    return result


if __name__ == "__main__":
    main()
