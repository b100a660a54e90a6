"""Embedding quantization benchmark: bytes, reconstruction MSE (greedy vs min-max vs k-means codebooks) and the
NE cost of quantizing a small DLRM trained on synthetic click data.

    python benchmarks/quantization.py [--rows 150000] [--dim 64] [--epochs 1] [--lr 0.02] [--seed 0]

Prints Markdown tables. The model is trained here with a minimal loop (Adagrad, BCE) on a planted logistic
click model with Zipf-distributed ids, so its tables are genuinely trained embeddings (rows hit often move far
from their init, rare rows stay near it). Random Gaussian and heavy-tailed (Student-t, 3 dof) tables of the
same shape are measured too.
"""
from __future__ import annotations

import argparse
import logging
import platform
import time

import numpy as np
import torch

from recpipe.data.batch import Batch
from recpipe.metrics.functional import summary
from recpipe.models import dlrm
from recpipe.ops import quant as qops
from recpipe.quant import MixedPrecisionConfig, QuantConfig, TableQuantConfig, quantize_model, quantize_table
from recpipe.quant import reconstruction_mse

logger = logging.getLogger("benchmarks.quantization")

TABLE_SIZES = [20000, 4000, 400, 40]
NUM_DENSE = 8
ZIPF_A = 1.2


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Planted click model: dense linear part + per-id effects of every table + one pairwise term."""
    rng = np.random.default_rng(seed)
    truth = np.random.default_rng(1000)  # the same world for every split
    effects = [truth.normal(0, 0.8, size) for size in TABLE_SIZES]
    pair = truth.normal(0, 0.5, (TABLE_SIZES[2], TABLE_SIZES[3]))
    dense_w = truth.normal(0, 0.3, NUM_DENSE)
    dense = rng.normal(0, 1, (n, NUM_DENSE)).astype(np.float32)
    ids = np.stack([(rng.zipf(ZIPF_A, n) - 1) % size for size in TABLE_SIZES], axis=1)  # (n, F)
    logit = -1.5 + dense @ dense_w + sum(effects[f][ids[:, f]] for f in range(len(TABLE_SIZES)))
    logit += pair[ids[:, 2], ids[:, 3]]
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return torch.from_numpy(dense), torch.from_numpy(ids), torch.from_numpy(labels)


def batches(dense: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor, size: int) -> list[Batch]:
    """One-hot bags in the TBE feature-major layout."""
    out = []
    for s in range(0, len(labels), size):
        d, i, y = dense[s: s + size], ids[s: s + size], labels[s: s + size]
        b, f = i.shape
        out.append(Batch(d, i.t().reshape(-1).contiguous(), torch.arange(f * b + 1, dtype=torch.int64), y))
    return out


def train(model: torch.nn.Module, data: list[Batch], epochs: int, lr: float) -> None:
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    for epoch in range(epochs):
        total = 0.0
        for batch in data:
            opt.zero_grad()
            loss = loss_fn(model(batch), batch.labels)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        logger.info("epoch %d: mean loss %.4f", epoch, total / len(data))


@torch.no_grad()
def ne_auc(model: torch.nn.Module, data: list[Batch]) -> tuple[float, float]:
    model.eval()
    preds = torch.cat([torch.sigmoid(model(b)) for b in data])
    labels = torch.cat([b.labels for b in data])
    s = summary(preds, labels)
    return s["ne"], s["auc"]


CONFIGS = [
    ("min-max 8", TableQuantConfig(bits=8, method="minmax")),
    ("greedy 8", TableQuantConfig(bits=8, method="greedy")),
    ("min-max 4", TableQuantConfig(bits=4, method="minmax")),
    ("greedy 4", TableQuantConfig(bits=4, method="greedy")),
    ("k-means/row 4", TableQuantConfig(bits=4, method="codebook", codebook_scope="row")),
    ("k-means/shared 4", TableQuantConfig(bits=4, method="codebook", codebook_scope="shared")),
    ("min-max 2", TableQuantConfig(bits=2, method="minmax")),
    ("greedy 2", TableQuantConfig(bits=2, method="greedy")),
    ("k-means/row 2", TableQuantConfig(bits=2, method="codebook", codebook_scope="row")),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=150000, help="training rows (held-out and search sets: a tenth each)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1, help="more epochs overfit the rare ids (held-out NE rises)")
    ap.add_argument("--lr", type=float, default=0.02, help="Adagrad learning rate")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    train_data = batches(*make_data(args.rows, args.seed + 1), 256)
    held_out = max(args.rows // 10, 1000)
    test_data = batches(*make_data(held_out, args.seed + 2), 4096)
    model = dlrm(TABLE_SIZES, num_dense=NUM_DENSE, embedding_dim=args.dim, bottom=(64, args.dim), top=(64, 32))
    t0 = time.perf_counter()
    train(model, train_data, args.epochs, args.lr)
    train_s = time.perf_counter() - t0
    ne_f, auc_f = ne_auc(model, test_data)
    weight = model.embedding.weight.detach()
    offs = model.embedding.table_offsets.tolist()
    tables = {"trained": [weight[offs[f]: offs[f + 1]] for f in range(len(TABLE_SIZES))]}
    gen = torch.Generator().manual_seed(args.seed)
    rows = sum(TABLE_SIZES)
    tables["gaussian"] = [torch.randn(rows, args.dim, generator=gen) * 0.05]
    tables["student-t(3)"] = [torch.distributions.StudentT(3.0).sample((rows, args.dim)) * 0.05]

    print(f"\n### Setup\n\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; DLRM D={args.dim}, tables {TABLE_SIZES} ({rows} rows), "
          f"{args.rows} train rows x {args.epochs} epochs ({train_s:.0f} s), {held_out} "
          f"held-out rows; float model NE {ne_f:.4f}, AUC {auc_f:.4f}.\n")

    fp32 = rows * args.dim * 4
    results: dict[tuple[str, str], tuple[float, int, float]] = {}  # (config, tables) -> (mse, bytes, seconds)
    for name, cfg in CONFIGS:
        for kind, ts in tables.items():
            t0 = time.perf_counter()
            qts = [quantize_table(t, cfg) for t in ts]
            seconds = time.perf_counter() - t0
            mse = sum(reconstruction_mse(t, q) * t.numel() for t, q in zip(ts, qts)) / sum(t.numel() for t in ts)
            results[(name, kind)] = (mse, sum(q.nbytes for q in qts), seconds)

    print(f"### Bytes (all tables, D = {args.dim}; floor = bits/32 + scale+bias bytes / (4 D))\n")
    print("| storage | bytes | % of fp32 | row-wise floor |")
    print("|---|---:|---:|---:|")
    print(f"| fp32 | {fp32} | 100.00% | |")
    for name, cfg in CONFIGS:
        if cfg.method == "greedy":
            continue  # same bytes as min-max
        nbytes = results[(name, "trained")][1]
        floor = "" if cfg.method == "codebook" else \
            f"{100 * (cfg.bits / 32 + qops.scale_bias_bytes(cfg.bits) / (4 * args.dim)):.2f}%"
        label = name if cfg.method == "codebook" else f"row-wise {cfg.bits}-bit (min-max or greedy)"
        print(f"| {label} | {nbytes} | {100 * nbytes / fp32:.2f}% | {floor} |")

    print("\n### Reconstruction MSE (mean over all values; in brackets: change vs min-max at the same bits)\n")
    print("| method | " + " | ".join(f"{k} tables" for k in tables) + " | quantize time, trained tables (shared CPU, indicative) |")
    print("|---|" + "---:|" * (len(tables) + 1))
    for name, cfg in CONFIGS:
        cells = []
        for kind in tables:
            mse = results[(name, kind)][0]
            base = results[(f"min-max {cfg.bits}", kind)][0]
            cells.append(f"{mse:.3e}" if cfg.method == "minmax" else f"{mse:.3e} ({100 * (mse / base - 1):+.1f}%)")
        print(f"| {name} | " + " | ".join(cells) + f" | {results[(name, 'trained')][2]:.2f} s |")

    print("\n### Model quality on held-out data (NE delta relative to the float model)\n")
    print("| embeddings | bytes % of fp32 | NE | rel. NE delta | AUC | AUC delta |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| fp32 | 100.00% | {ne_f:.4f} | | {auc_f:.4f} | |")
    qcfgs = [(n, QuantConfig(**c.to_dict())) for n, c in CONFIGS]
    qcfgs.append(("rule (<1000 rows 8-bit, else 4) greedy", QuantConfig(mixed=MixedPrecisionConfig(mode="rule"))))
    qcfgs.append(("measured (tol 0.1%) greedy", QuantConfig(
        mixed=MixedPrecisionConfig(mode="measured", ne_tolerance=0.001))))
    search = batches(*make_data(held_out, args.seed + 3), 4096)  # selection data apart from the test rows
    for name, qcfg in qcfgs:
        qmodel = quantize_model(model, qcfg, eval_batches=search)
        ne_q, auc_q = ne_auc(qmodel, test_data)
        label = name + (f" bits={qmodel.embedding.bits}" if qcfg.mixed.mode != "uniform" else "")
        print(f"| {label} | {100 * qmodel.embedding.nbytes / fp32:.2f}% | {ne_q:.4f} | "
              f"{100 * (ne_q - ne_f) / ne_f:+.3f}% | {auc_q:.4f} | {auc_q - auc_f:+.4f} |")


if __name__ == "__main__":
    main()
