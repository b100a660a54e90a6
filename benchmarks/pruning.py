"""Benchmark: dense vs fixed-mask vs adaptive dense-to-sparse pruning under drift (issue 4).

Data (``--data``):

* ``recpipe`` (default): the project's drifting generator :mod:`recpipe.data.synthetic` (raw Criteo-format TSV,
  13 dense + 26 categorical features, truth parameters drifting day to day, new ids every day) ingested by
  :mod:`recpipe.tasks.ingest` (arrow engine, append-only vocabulary ids). Needs the ingest dependencies
  (apache_beam is imported by recpipe.ingest); ``--root`` reuses an already ingested dataset.
* ``direct``: :func:`make_days` below writes processed Parquet itself (numpy + pyarrow; a hidden non-linear
  click model whose parameters random-walk day to day, per-id effects that drift, new ids entering each day).

Each configuration streams the days in order with :class:`recpipe.train.incremental.IncrementalTrainer`:
every day is scored before it is trained on (prequential NE), then trained on. Dense, then fixed-mask and
adaptive at each sparsity (default 50/75/90/95%); the ramp runs over the first ``--ramp-days`` days, and the
NE is averaged (row-weighted) over all days and over the days after the ramp, where every configuration is
at its final sparsity. All configurations start from the same initial weights (paired comparison).
Byte counts: the pruned MLP/interaction weights dense vs compact (CSR/bitmask + values,
:mod:`recpipe.train.prune_export`), and the whole model (embeddings dominate and stay dense).

Run::

    python benchmarks/pruning.py --workers 9                       # 12 days x 20k rows; Markdown on stdout
    python benchmarks/pruning.py --days 12 --rows-per-day 50000 --workers 9 --plot ne.png \
        --mlflow-experiment pruning                                # also logs the plot + table to MLflow
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recpipe.schema import DenseFeature, LabelSpec, Schema, SparseFeature

logger = logging.getLogger("benchmarks.pruning")

NUM_DENSE = 13
TABLE_SIZES = (1000, 5000, 200, 50, 20000, 3000, 100, 10)
NEW_IDS_PER_DAY = 0.03
"""Share of each table's id space that becomes active each day (vocabulary growth)."""
HIDDEN = 16
"""Hidden units of the ground-truth click model (its non-linear dense part)."""
DRIFT = 0.25
"""Per-day random-walk step of the truth parameters, relative to their scale."""


def bench_schema() -> Schema:
    """Schema of the benchmark data: ``NUM_DENSE`` dense and ``len(TABLE_SIZES)`` single-id sparse features."""
    return Schema(name="drift", label=LabelSpec("label"),
                  dense=tuple(DenseFeature(f"d{i}", transform="none") for i in range(NUM_DENSE)),
                  sparse=tuple(SparseFeature(f"s{i}", num_embeddings=n) for i, n in enumerate(TABLE_SIZES)))


class DriftingTruth:
    """Hidden click model: logit = bias + MLP(dense) + sum_f e_f[id_f] + <u[id_0], v[id_1]>, all drifting."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        r = self.rng
        self.w1 = r.normal(0, 1 / math.sqrt(NUM_DENSE), (NUM_DENSE, HIDDEN))
        self.b1 = r.normal(0, 0.5, HIDDEN)
        self.w2 = r.normal(0, 1.2 / math.sqrt(HIDDEN), HIDDEN)
        self.emb = [r.normal(0, 0.6, n) for n in TABLE_SIZES]
        self.u = r.normal(0, 0.5, (TABLE_SIZES[0], 4))
        self.v = r.normal(0, 0.5, (TABLE_SIZES[1], 4))
        self.bias = -1.3
        self.active = [max(2, int(n * 0.6)) for n in TABLE_SIZES]

    def step(self) -> None:
        """One day of drift: random walks of every parameter, and new ids become active."""
        r = self.rng
        self.w1 += DRIFT * r.normal(0, 1 / math.sqrt(NUM_DENSE), self.w1.shape)
        self.w2 += DRIFT * r.normal(0, 1.2 / math.sqrt(HIDDEN), self.w2.shape)
        for e in self.emb:
            e *= math.sqrt(1 - DRIFT ** 2)
            e += DRIFT * r.normal(0, 0.6, e.shape)
        self.active = [min(n, a + max(1, int(n * NEW_IDS_PER_DAY))) for a, n in zip(self.active, TABLE_SIZES)]

    def sample(self, rows: int) -> dict[str, np.ndarray]:
        """Draws ``rows`` rows of the current day (dense ~ N(0, 1), Zipf-like ids among the active ones)."""
        r = self.rng
        x = r.normal(0, 1, (rows, NUM_DENSE)).astype(np.float32)
        ids = []
        for a in self.active:
            z = np.minimum(r.zipf(1.3, rows) - 1, a - 1)
            ids.append(((z * 2654435761) % a).astype(np.int64))  # scatter popular ids over the active range
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        logit = self.bias + h @ self.w2 + sum(e[i] for e, i in zip(self.emb, ids))
        logit += (self.u[ids[0]] * self.v[ids[1]]).sum(1)
        y = (r.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        out = {"label": y}
        out.update({f"d{i}": x[:, i] for i in range(NUM_DENSE)})
        out.update({f"s{f}": ids[f] for f in range(len(TABLE_SIZES))})
        return out


def make_days(root: str, days: int, rows_per_day: int, seed: int = 0,
              start: str = "2026-01-01") -> list[str]:
    """Writes ``days`` processed day partitions + ``_manifest.json`` under ``root``; returns the days."""
    schema = bench_schema()
    arrow = schema.arrow_schema(with_day=False)
    truth = DriftingTruth(seed)
    d0 = dt.date.fromisoformat(start)
    out = []
    for i in range(days):
        if i:
            truth.step()
        day = (d0 + dt.timedelta(days=i)).isoformat()
        cols = truth.sample(rows_per_day)
        table = pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in arrow}, schema=arrow)
        os.makedirs(os.path.join(root, f"day={day}"), exist_ok=True)
        pq.write_table(table, os.path.join(root, f"day={day}", "part-00000.parquet"), row_group_size=16384)
        out.append(day)
    manifest = {"schema": schema.to_dict(), "schema_version": schema.version,
                "days": {d: rows_per_day for d in out}, "table_sizes": dict(zip(schema.sparse_names, TABLE_SIZES))}
    with open(os.path.join(root, "_manifest.json"), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh)
    return out


def make_recpipe_days(root: str, args: argparse.Namespace) -> None:
    """The project's drifting generator (raw Criteo TSV) ingested by the ingest step into ``root``."""
    from recpipe.data.synthetic import SynthConfig, generate
    from recpipe.tasks.ingest import IngestConfig
    from recpipe.tasks.ingest import run as ingest

    raw = root.rstrip("/") + "-raw"
    generate(SynthConfig(days=args.days, rows_per_day=args.rows_per_day, seed=args.seed,
                         cardinality_scale=args.cardinality_scale), raw)
    ingest(IngestConfig(engine="arrow", encoding="vocab", min_count=2), inputs=[raw], dataset_root=root)


# ---------------------------------------------------------------------------------------------- experiment
CONFIGS_DEFAULT = "0.5,0.75,0.9,0.95"


def run_config(root: str, mode: str, sparsity: float, args: argparse.Namespace, steps_per_day: int) -> dict:
    """Streams every day through one configuration; returns per-day prequential NE, sparsity and bytes."""
    import torch

    from recpipe.models import dlrm
    from recpipe.train.incremental import IncrementalConfig, IncrementalTrainer, parquet_day_factory
    from recpipe.train.loop import TrainConfig
    from recpipe.train.optim import OptimConfig
    from recpipe.train.prune_export import export_compact
    from recpipe.train.pruning import PruneConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # same initial weights for every configuration (paired comparison)
    from recpipe.tasks.train import dataset_schema

    schema = dataset_schema(root)
    model = dlrm(schema, embedding_dim=16, bottom=(64, 32), top=tuple(args.top))
    ramp_end = args.ramp_days * steps_per_day
    prune = PruneConfig(mode=mode, target_sparsity=sparsity if mode != "none" else 0.0,
                        start_step=steps_per_day // 2, end_step=ramp_end,
                        update_every=max(1, steps_per_day // args.updates_per_day),
                        bound_shadow=not args.unbounded_shadow, regrow=args.regrow,
                        regrow_fraction=args.regrow_fraction)
    train_cfg = TrainConfig(batch_size=args.batch_size, seed=args.seed,
                            optim=OptimConfig(dense="adam", dense_lr=args.lr, sparse_lr=0.05))
    inc = IncrementalTrainer(model, train_cfg, IncrementalConfig(checkpoint_every=0, eval_batch_size=8192,
                                                                 log_every=10 ** 9),
                             parquet_day_factory(root, schema), prune=prune)
    t0 = time.perf_counter()
    res = inc.run(root)
    seconds = time.perf_counter() - t0
    state = inc.model.state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        keys = [f"{n}.weight" for n in inc.pruner.masks] or [k for k in state if k.endswith(".weight")
                                                              and state[k].dim() == 2 and "embedding" not in k]
        rep = export_compact(state, keys, os.path.join(tmp, "m.pt"))
    days = sorted(res.preq)
    return {"mode": mode, "sparsity": sparsity, "ne": [res.preq[d]["ne"] for d in days],
            "auc": [res.preq[d]["auc"] for d in days], "rows": [res.preq[d]["rows"] for d in days],
            "layer_sparsity": inc.pruner.layer_sparsity(), "global": inc.pruner.global_sparsity(),
            "regrown": inc.pruner.regrown_total, "mlp_dense_bytes": rep.pruned_dense_bytes,
            "mlp_compact_bytes": rep.pruned_compact_bytes if mode != "none" else rep.pruned_dense_bytes,
            "model_bytes": rep.dense_bytes,
            "model_compact_bytes": rep.compact_bytes if mode != "none" else rep.dense_bytes, "seconds": seconds}


def _mean_ne(r: dict, lo: int) -> float:
    ne, rows = np.array(r["ne"][lo:]), np.array(r["rows"][lo:])
    return float((ne * rows).sum() / rows.sum())


def _table(results: list[dict], ramp_days: int) -> str:
    dense = next(r for r in results if r["mode"] == "none")
    base_post = _mean_ne(dense, ramp_days)
    lines = ["| config | sparsity (achieved) | preq NE, all days | preq NE, days after ramp | rel. ΔNE vs dense "
             "(after ramp) | mean AUC | regrown | MLP bytes (compact) | model bytes (compact) | s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        post = _mean_ne(r, ramp_days)
        name = "dense" if r["mode"] == "none" else f"{r['mode']}@{int(round(r['sparsity'] * 100))}%"
        lines.append(f"| {name} | {r['global']:.3f} | {_mean_ne(r, 0):.5f} | {post:.5f} | "
                     f"{100 * (post - base_post) / base_post:+.3f}% | {np.mean(r['auc']):.4f} | {r['regrown']} | "
                     f"{r['mlp_compact_bytes']:,} of {r['mlp_dense_bytes']:,} | "
                     f"{r['model_compact_bytes']:,} of {r['model_bytes']:,} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def _per_day_table(results: list[dict], days: list[str]) -> str:
    names = ["dense" if r["mode"] == "none" else f"{r['mode'][:5]}@{int(round(r['sparsity'] * 100))}"
             for r in results]
    lines = ["| day | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, d in enumerate(days):
        lines.append(f"| {d} | " + " | ".join(f"{r['ne'][i]:.4f}" for r in results) + " |")
    return "\n".join(lines)


def _plot(results: list[dict], days: list[str], path: str, ramp_days: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    levels = sorted({r["sparsity"] for r in results if r["mode"] != "none"})
    colors = dict(zip(levels, plt.cm.viridis(np.linspace(0.0, 0.85, max(len(levels), 1)))))
    for r in results:
        if r["mode"] == "none":
            ax.plot(r["ne"], "k-", lw=2, label="dense")
        else:  # one colour per sparsity; solid = adaptive, dashed = fixed mask
            style = "-" if r["mode"] == "adaptive" else "--"
            ax.plot(r["ne"], style, color=colors[r["sparsity"]],
                    label=f"{r['mode']} {int(round(r['sparsity'] * 100))}%")
    ax.axvline(ramp_days - 0.5, color="grey", lw=0.8)
    ax.set_xticks(range(len(days)), [d[5:] for d in days], rotation=45)
    ax.set_ylabel("prequential NE (day scored before training on it)")
    ax.set_title("dense vs fixed-mask vs adaptive pruning under drift")
    ax.legend(ncol=3, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="recpipe", choices=("recpipe", "direct"),
                    help="recpipe: recpipe.data.synthetic raw TSV + recpipe.tasks.ingest (arrow engine, vocab "
                         "encoding); direct: this file's own generator writing processed Parquet")
    ap.add_argument("--cardinality-scale", type=float, default=0.02)
    ap.add_argument("--days", type=int, default=12)
    ap.add_argument("--rows-per-day", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--sparsities", default=CONFIGS_DEFAULT)
    ap.add_argument("--ramp-days", type=int, default=3)
    ap.add_argument("--updates-per-day", type=int, default=10)
    ap.add_argument("--regrow", default="gradient", choices=("gradient", "shadow"))
    ap.add_argument("--regrow-fraction", type=float, default=0.05)
    ap.add_argument("--unbounded-shadow", action="store_true", help="ablation: PruneConfig.bound_shadow=False")
    ap.add_argument("--top", type=int, nargs="+", default=[256, 128])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per configuration")
    ap.add_argument("--workers", type=int, default=1, help="configurations run in parallel processes")
    ap.add_argument("--root", default=None, help="reuse/write the data here (default: a temp dir)")
    ap.add_argument("--plot", default="pruning_ne_by_day.png")
    ap.add_argument("--json", default=None, help="also write raw results here")
    ap.add_argument("--mlflow-experiment", default=None, help="log the table and plot to this MLflow experiment")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    root = args.root or tempfile.mkdtemp(prefix="recpipe-prune-bench-")
    if not os.path.exists(os.path.join(root, "_manifest.json")):
        if args.data == "direct":
            make_days(root, args.days, args.rows_per_day, args.seed)
        else:
            make_recpipe_days(root, args)
    days = sorted(d[4:] for d in os.listdir(root) if d.startswith("day="))
    steps_per_day = math.ceil(args.rows_per_day / args.batch_size)
    configs = [("none", 0.0)] + [(m, float(s)) for s in args.sparsities.split(",") for m in ("fixed", "adaptive")]
    t0 = time.perf_counter()
    if args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers) as pool:
            futs = [pool.submit(run_config, root, m, s, args, steps_per_day) for m, s in configs]
            results = [f.result() for f in futs]
    else:
        results = [run_config(root, m, s, args, steps_per_day) for m, s in configs]
    wall = time.perf_counter() - t0
    table = _table(results, args.ramp_days)
    per_day = _per_day_table(results, days)
    source = ("recpipe.data.synthetic raw TSV -> recpipe.tasks.ingest (arrow engine, vocab ids, min_count 2, "
              f"cardinality scale {args.cardinality_scale})" if args.data == "recpipe"
              else "written directly as processed Parquet by benchmarks/pruning.py")
    header = (f"{args.days} days x {args.rows_per_day} rows (drifting synthetic: {source}), "
              f"regrow={args.regrow} (fraction {args.regrow_fraction}), DLRM D=16 bottom 64-32-16 "
              f"top {'-'.join(map(str, args.top))}, seed {args.seed}, "
              f"batch {args.batch_size}, Adam {args.lr} + row-wise Adagrad; ramp over the first {args.ramp_days} "
              f"days, masks recomputed {args.updates_per_day}x per day; wall {wall:.0f} s")
    sys.stdout.write(header + "\n\n" + table + "\n\nPrequential NE per day:\n\n" + per_day + "\n")
    fig = _plot(results, days, args.plot, args.ramp_days)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "days": days, "results": results}, fh, indent=1)
    if args.mlflow_experiment:
        from recpipe.tracking.mlflow_tracker import MlflowTracker

        with MlflowTracker(args.mlflow_experiment, "pruning-benchmark") as tracker:
            tracker.log_params({k: str(v) for k, v in vars(args).items()})
            for r in results:
                name = "dense" if r["mode"] == "none" else f"{r['mode']}_{int(round(r['sparsity'] * 100))}"
                for i, ne in enumerate(r["ne"]):
                    tracker.log_metrics({f"preq/ne/{name}": ne}, step=i)
            tracker.log_figure(fig, "pruning_ne_by_day.png")
            tracker.log_dict({"table": table, "per_day": per_day}, "pruning_results.json")


if __name__ == "__main__":
    main()
