"""The quantize step end to end: float model dir + processed Parquet eval days -> quantized dir + report."""
from __future__ import annotations

import contextlib
import filecmp
import json
import math
import re

import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from recpipe.data.parquet_io import write_processed_day
from recpipe.models import dlrm, save_model
from recpipe.quant import (QuantConfig, is_quantized_model_dir, load_quantized_model, quantize_model,
                           save_quantized_model, training_model_dir)
from recpipe.schema import DenseFeature, LabelSpec, Schema, SparseFeature
from recpipe.tasks import quantize
from recpipe.tracking.base import MemoryTracker
from recpipe.train.checkpoint import warm_start

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
    assert result.outputs == {"model_dir": str(tmp / "q"), "report": str(tmp / "q" / "report.json"),
                              "float_model_dir": str(tmp / "q" / "float")}
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


def test_main_without_eval_codebook(workspace, monkeypatch) -> None:
    tmp, _model, _tables = workspace
    opened: list[tuple[str, MemoryTracker]] = []

    @contextlib.contextmanager
    def fake_step_tracker(step: str):
        opened.append((step, MemoryTracker(step)))
        yield opened[-1][1]

    monkeypatch.setattr(quantize, "step_tracker", fake_step_tracker)
    cfg = json.dumps({"bits": 2, "method": "codebook", "codebook_scope": "shared", "kmeans_iters": 5})
    result = quantize.main(["--config", cfg, "--model-dir", str(tmp / "model"), "--output-dir", str(tmp / "q")])
    assert [step for step, _ in opened] == ["quantize"]  # main logs into the step's tracker
    assert opened[0][1].last("quant/bytes_ratio") == result.metrics["quant/bytes_ratio"]
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


def test_warm_start_from_the_quantized_dir_reads_the_float_copy(workspace) -> None:
    tmp, model, _tables = workspace
    schema = _schema()
    extra = {"days_trained": list(DAYS), "last_day": DAYS[-1]}
    save_model(model, tmp / "trained", schema=schema, extra=extra)
    (tmp / "trained" / "pruning.pt").write_bytes(b"pruner state")  # a state file training keeps beside the model
    quantize.run(quantize.QuantizeConfig(bits=2, compare_methods=False), model_dir=str(tmp / "trained"),
                 output_dir=str(tmp / "q"))
    # the complete float directory travels with the served model
    cmp = filecmp.dircmp(tmp / "trained", tmp / "q" / "float")
    assert sorted(cmp.common_files) == ["model.json", "model.pt", "pruning.pt"]
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files
    assert filecmp.cmpfiles(tmp / "trained", tmp / "q" / "float", cmp.common_files, shallow=False)[0] == \
        sorted(cmp.common_files)
    assert training_model_dir(tmp / "q") == str(tmp / "q" / "float")
    assert training_model_dir(tmp / "trained") == str(tmp / "trained")
    served = json.loads((tmp / "q" / "model.json").read_text())["extra"]
    assert served["days_trained"] == list(DAYS) and served["last_day"] == DAYS[-1]
    assert served["float_model_dir"] == "float" and served["source_model_dir"] == str(tmp / "trained")

    torch.manual_seed(123)
    fresh = dlrm(schema, embedding_dim=DIM, bottom=(8, DIM), top=(8,))
    info = warm_start(fresh, str(tmp / "q"))
    assert "float copy" in info["source"] and info["grown"] == {}
    for name, t in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], t), name  # the float weights, exactly
    int2 = torch.cat([load_quantized_model(tmp / "q").embedding.table(f).dequantize() for f in range(len(SIZES))])
    assert not torch.equal(int2, model.embedding.weight.detach())  # (the lossy tables differ from them)


def test_quantized_dir_without_float_copy_is_refused_by_name(workspace) -> None:
    tmp, model, _tables = workspace
    bare = tmp / "bare-q"
    save_quantized_model(quantize_model(model, QuantConfig(bits=4)), bare)
    want = re.escape(f"{bare}: quantized model directory without the float model")
    with pytest.raises(FileNotFoundError, match=want):
        training_model_dir(bare)
    fresh = dlrm(_schema(), embedding_dim=DIM, bottom=(8, DIM), top=(8,))
    with pytest.raises(FileNotFoundError, match=re.escape(str(bare))):
        warm_start(fresh, str(bare))


def test_rerun_replaces_the_float_copy_and_bad_dirs_are_refused(workspace) -> None:
    tmp, _model, _tables = workspace
    cfg = quantize.QuantizeConfig(bits=8, compare_methods=False)
    quantize.run(cfg, model_dir=str(tmp / "model"), output_dir=str(tmp / "q"))
    (tmp / "q" / "float" / "stale.txt").write_text("from an older float model")
    quantize.run(cfg, model_dir=str(tmp / "model"), output_dir=str(tmp / "q"))
    assert sorted(p.name for p in (tmp / "q" / "float").iterdir()) == ["model.json", "model.pt"]
    assert sorted(p.name for p in (tmp / "q").iterdir()) == ["float", "model.json", "report.json", "weights.bin"]
    for out in (tmp / "model", tmp / "model" / "q"):
        with pytest.raises(ValueError, match="must lie outside the float model dir"):
            quantize.run(cfg, model_dir=str(tmp / "model"), output_dir=str(out))
    # a served (quantized) dir as input: quantized again from its float copy, which travels on
    res = quantize.run(cfg.replace(bits=4), model_dir=str(tmp / "q"), output_dir=str(tmp / "q4"))
    assert res.metadata["source_model_dir"] == str(tmp / "q" / "float")
    assert filecmp.cmp(tmp / "q4" / "float" / "model.pt", tmp / "model" / "model.pt", shallow=False)
    assert load_quantized_model(tmp / "q4").embedding.bits == [4] * len(SIZES)


def test_per_row_codebooks_wider_than_the_row_are_refused_before_any_output(workspace) -> None:
    tmp, _model, _tables = workspace
    cfg = quantize.QuantizeConfig(bits=4, method="codebook", codebook_scope="row")  # 16 centroids for D = 16
    with pytest.raises(ValueError, match=re.escape(str(tmp / "model")) + r": .*2\*\*bits < D"):
        quantize.run(cfg, model_dir=str(tmp / "model"), output_dir=str(tmp / "q"))
    assert not (tmp / "q").exists()
