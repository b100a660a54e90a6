"""The quantize step end to end: float model dir + processed Parquet eval days -> quantized dir + report."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from recpipe.data.parquet_io import write_processed_day
from recpipe.models import dlrm, save_model
from recpipe.quant import is_quantized_model_dir, load_quantized_model
from recpipe.schema import DenseFeature, LabelSpec, Schema, SparseFeature
from recpipe.tasks import quantize
from recpipe.tracking.base import MemoryTracker

DIM = 16
SIZES = (500, 64, 8)
DAYS = ("2026-01-01", "2026-01-02")
METRIC_TOL = 1e-6
"""Our NE/AUC vs scikit-learn on the same float32 predictions (float64 sums in both; only rounding differs)."""


def _schema() -> Schema:
    return Schema(name="tiny", label=LabelSpec("label"), dense=tuple(DenseFeature(f"d{i}") for i in range(3)),
                  sparse=tuple(SparseFeature(f"s{i}", num_embeddings=n) for i, n in enumerate(SIZES)))


def _day_table(seed: int, n: int = 300) -> pa.Table:
    rng = np.random.default_rng(seed)
    cols = {"label": (rng.random(n) < 0.3).astype(np.float32)}
    for i in range(3):
        cols[f"d{i}"] = rng.normal(0, 1, n).astype(np.float32)
    for i, size in enumerate(SIZES):
        cols[f"s{i}"] = rng.integers(0, size, n).astype(np.int64)
    return pa.table(cols)


@pytest.fixture()
def workspace(tmp_path):
    schema = _schema()
    torch.manual_seed(0)
    model = dlrm(schema, embedding_dim=DIM, bottom=(8, DIM), top=(8,))
    with torch.no_grad():
        model.embedding.weight.mul_(30.0)  # make embeddings matter for the logits
    save_model(model, tmp_path / "model", schema=schema)
    tables = {}
    for i, day in enumerate(DAYS):
        tables[day] = _day_table(i)
        write_processed_day(tables[day], tmp_path / "data", day, schema=schema)
    return tmp_path, model, tables


def _float_predictions(model, table: pa.Table) -> np.ndarray:
    """Scores rows straight from the Arrow table with one-hot TBE bags (no loader involved)."""
    n = table.num_rows
    dense = torch.from_numpy(np.stack([table[f"d{i}"].to_numpy() for i in range(3)], 1))
    ids = torch.from_numpy(np.stack([table[f"s{i}"].to_numpy() for i in range(len(SIZES))], 0).reshape(-1))
    with torch.no_grad():
        logits = model.eval().score(dense, ids, torch.arange(len(SIZES) * n + 1))
    return torch.sigmoid(logits).numpy()


def test_run_with_eval_data(workspace) -> None:
    tmp, model, tables = workspace
    tracker = MemoryTracker()
    cfg = quantize.QuantizeConfig(bits=4, eval_batch_size=128)
    result = quantize.run(cfg, model_dir=str(tmp / "model"), output_dir=str(tmp / "q"),
                          eval_dataset_root=str(tmp / "data"), eval_days=[DAYS[1]], tracker=tracker)
    report = json.loads((tmp / "q" / "report.json").read_text())
    assert result.outputs == {"model_dir": str(tmp / "q"), "report": str(tmp / "q" / "report.json")}
    assert is_quantized_model_dir(tmp / "q")
    # bytes: 4-bit rows of D = 16 are 8 code bytes + 4 = 12 bytes = 1/8 + 1/16 of fp32, exactly the floor
    for t, rows in zip(report["tables"], SIZES):
        assert t["rows"] == rows and t["quantized_bytes"] == rows * 12 and t["fp32_bytes"] == rows * DIM * 4
        assert t["ratio_to_fp32"] == pytest.approx(1 / 8 + 1 / DIM) and t["at_floor"]
        assert t["mse_greedy"] <= t["mse_minmax"] and t["mse"] == t["mse_greedy"]
    assert [t["name"] for t in report["tables"]] == ["s0", "s1", "s2"]
    assert report["total"]["ratio_to_fp32"] == pytest.approx(1 / 8 + 1 / DIM)
    # eval: float metrics against scikit-learn on predictions computed without the loader
    y = tables[DAYS[1]]["label"].to_numpy()
    p = _float_predictions(model, tables[DAYS[1]])
    rate = y.mean()
    ne_ref = log_loss(y, p.astype(np.float64)) / -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    ev = report["eval"]
    assert ev["rows"] == len(y)
    assert ev["float"]["ne"] == pytest.approx(ne_ref, rel=METRIC_TOL)
    assert ev["float"]["auc"] == pytest.approx(roc_auc_score(y, p), rel=METRIC_TOL)
    # the quantized metrics are those of the saved quantized model
    qp = _float_predictions(load_quantized_model(tmp / "q"), tables[DAYS[1]])
    ne_q = log_loss(y, qp.astype(np.float64)) / -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    assert ev["quantized"]["ne"] == pytest.approx(ne_q, rel=METRIC_TOL)
    assert ev["ne_delta"] == pytest.approx(ev["quantized"]["ne"] - ev["float"]["ne"])
    # metrics, tracker and metadata
    assert result.metrics["eval/ne"] == ev["quantized"]["ne"]
    assert result.metrics["quant/bytes_ratio"] == pytest.approx(1 / 8 + 1 / DIM)
    assert tracker.last("quant/mse_greedy") <= tracker.last("quant/mse_minmax")
    assert "quantize/report.json" in tracker.dicts and tracker.params["quant/bits"] == 4
    assert result.metadata["quantized"] is True and result.metadata["bits"] == [4, 4, 4]


def test_run_measured_mixed_precision(workspace) -> None:
    tmp, _model, _tables = workspace
    cfg = quantize.QuantizeConfig.from_dict({"eval_batch_size": 100, "compare_methods": False,
                                             "mixed": {"mode": "measured", "ne_tolerance": 0.05}})
    quantize.run(cfg, model_dir=str(tmp / "model"), output_dir=str(tmp / "q"), eval_dataset_root=str(tmp / "data"))
    report = json.loads((tmp / "q" / "report.json").read_text())
    mixed = report["mixed"]
    assert mixed is not None and len(mixed["bits"]) == 3
    assert [t["bits"] for t in report["tables"]] == mixed["bits"]
    assert mixed["trials"][0]["table"] == 0  # largest table decided first
    assert "mse_minmax" not in report["total"]
    assert (mixed["final_ne"] - mixed["float_ne"]) / mixed["float_ne"] <= 0.05 or mixed["over_budget"]


def test_main_without_eval_codebook(workspace) -> None:
    tmp, _model, _tables = workspace
    cfg = json.dumps({"bits": 2, "method": "codebook", "codebook_scope": "shared", "kmeans_iters": 5})
    result = quantize.main(["--config", cfg, "--model-dir", str(tmp / "model"), "--output-dir", str(tmp / "q")])
    report = json.loads((tmp / "q" / "report.json").read_text())
    assert report["eval"] is None and report["mixed"] is None
    assert all(t["kind"] == "codebook_shared" and t["floor_ratio"] is None for t in report["tables"])
    # 2-bit codes of 16 values = 4 bytes per row + a 4-entry fp32 codebook per table
    assert report["total"]["quantized_bytes"] == sum(SIZES) * 4 + 3 * 16
    assert "eval/ne" not in result.metrics
    loaded = load_quantized_model(tmp / "q")
    assert loaded.embedding.kinds == ["codebook_shared"] * 3


def test_config_round_trip_and_errors(tmp_path) -> None:
    cfg = quantize.QuantizeConfig(bits=8, method="minmax", eval_max_batches=3)
    assert quantize.QuantizeConfig.from_json(cfg.to_json()) == cfg
    assert cfg.quant_config().bits == 8
    with pytest.raises(ValueError, match="method"):
        quantize.QuantizeConfig(method="fancy")
    with pytest.raises(FileNotFoundError, match="model.json"):
        quantize.run(quantize.QuantizeConfig(), model_dir=str(tmp_path / "none"), output_dir=str(tmp_path / "q"))
