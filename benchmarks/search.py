"""Benchmark: AutoCTR search vs hand-crafted baselines (DLRM, DCN, DeepFM) under the same full-fidelity budget.

Data (``--data synthetic``, the default): ``recpipe.data.synthetic`` writes Criteo-format raw days (hidden
drifting click model), ``recpipe.ingest`` (arrow engine) turns them into processed Parquet, and the search
task reads that like production. ``--data planted`` uses ``recpipe.search.data.planted_rows`` tensors
instead (no ingestion; a dot-product interaction planted between two features).

Days 1-2 train (their latest 20% validate), day 3 is the held-out test. Prints Markdown tables: every
contender's test AUC / NE after full-fidelity training, the low-fidelity NE of the search's best vs the best
random architecture of its initial population, and the search cost in multiples of one full training.

Run: ``python benchmarks/search.py`` (about 4-6 CPU minutes with the defaults on 2 cores).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time

import pyarrow as pa
import torch

from recpipe.data.parquet_io import write_processed_day
from recpipe.schema import DenseFeature, LabelSpec, Schema, SparseFeature, criteo_schema
from recpipe.search.data import planted_rows
from recpipe.search.evolution import EvolutionConfig, ranked
from recpipe.search.history import load_history
from recpipe.search.space import SpaceConfig
from recpipe.search.trials import TrialConfig
from recpipe.tasks import search as task
from recpipe.tasks.base import read_json
from recpipe.tracking.base import MemoryTracker

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]


def make_synthetic(root: str, rows_per_day: int, buckets: int, seed: int) -> None:
    from recpipe.data.synthetic import SynthConfig, generate
    from recpipe.ingest.driver import ingest
    from recpipe.ingest.options import IngestOptions

    raw = os.path.join(root, "raw")
    generate(SynthConfig(days=len(DAYS), rows_per_day=rows_per_day, start_date=DAYS[0], seed=seed), raw)
    ingest([raw], os.path.join(root, "processed"), criteo_schema(num_embeddings=buckets), IngestOptions(),
           engine="arrow")


def make_planted(root: str, rows_per_day: int, seed: int) -> None:
    tables = (1000, 1000, 200, 200, 50, 50)
    schema = Schema(name="planted", label=LabelSpec("label"), dense=tuple(DenseFeature(f"d{i}") for i in range(4)),
                    sparse=tuple(SparseFeature(f"c{i}", num_embeddings=s) for i, s in enumerate(tables)))
    rows = planted_rows(rows_per_day * len(DAYS), num_dense=4, table_sizes=tables, seed=seed)
    for k, day in enumerate(DAYS):
        part = rows.slice(k * rows_per_day, (k + 1) * rows_per_day)
        cols = {"label": pa.array(part.labels.numpy()),
                **{f"d{j}": pa.array(part.dense[:, j].numpy()) for j in range(4)},
                **{f"c{j}": pa.array(part.values[j].numpy()) for j in range(len(tables))}}
        write_processed_day(pa.table(cols), os.path.join(root, "processed"), day, schema=schema)


def config(args: argparse.Namespace) -> task.SearchConfig:
    low = TrialConfig(max_train_rows=20_000, max_valid_rows=10_000, hash_cap=2_000, embedding_dim=8, batch_size=256,
                      max_steps=300, eval_every=50, patience=2)
    full = TrialConfig(max_train_rows=None, max_valid_rows=None, hash_cap=None, embedding_dim=None, batch_size=256,
                       max_steps=args.full_steps, eval_every=100, patience=3)
    return task.SearchConfig(
        space=SpaceConfig(embedding_dim=16),
        evolution=EvolutionConfig(budget=args.budget, initial_population=12, population_size=12, batch_size=4,
                                  max_age=24, ranker_min_history=12, ranker_candidates=32, seed=args.seed),
        trial=low, full=full, retrain_top_k=args.top_k, workers=args.workers, max_train_rows=None,
        max_eval_rows=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=("synthetic", "planted"), default="synthetic")
    ap.add_argument("--rows-per-day", type=int, default=60_000)
    ap.add_argument("--buckets", type=int, default=1 << 16, help="hash buckets per sparse feature (synthetic)")
    ap.add_argument("--budget", type=int, default=28, help="low-fidelity trials")
    ap.add_argument("--top-k", type=int, default=2, help="searched architectures retrained at full fidelity")
    ap.add_argument("--full-steps", type=int, default=1200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="keep data and outputs in this folder")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)
    root = args.keep or tempfile.mkdtemp(prefix="recpipe-search-bench-")
    t0 = time.perf_counter()
    if args.data == "synthetic":
        make_synthetic(root, args.rows_per_day, args.buckets, args.seed)
    else:
        make_planted(root, args.rows_per_day, args.seed)
    t_data = time.perf_counter() - t0
    cfg = config(args)
    out = os.path.join(root, "search")
    t1 = time.perf_counter()
    res = task.run(cfg, dataset_root=os.path.join(root, "processed"), output_dir=out, train_days=DAYS[:2],
                   eval_days=DAYS[2:], tracker=MemoryTracker("bench"))
    t_search = time.perf_counter() - t1
    comp = read_json(os.path.join(out, "comparison.json"))
    hist = load_history(os.path.join(out, "history.jsonl"))
    best = ranked(hist, higher_is_better=False)[0]
    rand = ranked([h for h in hist if h.origin == "random"], higher_is_better=False)[0]

    print(f"data: {args.data}, {args.rows_per_day} rows/day, days {DAYS[0]}..{DAYS[-1]} (train 1-2, test 3); "
          f"rows {comp['rows']}; machine: {platform.machine()} {os.cpu_count()} cpu, torch {torch.__version__}\n")
    print("| contender | kind | test AUC | test NE | valid NE | dense params | train steps | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in sorted(comp["runs"].items(), key=lambda kv: -kv[1]["metrics"].get("test/auc", 0.0)):
        m = r["metrics"]
        if r["error"]:
            print(f"| {name} | {r['kind']} | failed: {r['error'][:60]} | | | | | |")
            continue
        mark = " (selected)" if name == comp["best_searched"] else ""
        print(f"| {name}{mark} | {r['kind']} | {m['test/auc']:.4f} | {m['test/ne']:.4f} | {m['eval/ne']:.4f} | "
              f"{int(m['model/params'])} | {int(m['train/steps'])} | {r['cpu_s']:.1f} |")
    s = comp["summary"]
    print(f"\nselected searched vs best baseline on test: AUC {s['searched_test_auc']:.4f} vs "
          f"{s['baseline_test_auc']:.4f} (delta {s['delta_test_auc']:+.4f}); NE {s['searched_test_ne']:.4f} vs "
          f"{s['baseline_test_ne']:.4f} (delta {s['delta_test_ne']:+.4f}, positive = search better)\n")
    c = comp["cost"]
    print("| search cost | value |")
    print("|---|---|")
    print(f"| trials | {c['trials']} ({sum(h.guided for h in hist)} ranker-guided) |")
    print(f"| low-fidelity NE: best found / best of the {sum(h.origin == 'random' for h in hist)} random initial "
          f"| {best.quality:.4f} / {rand.quality:.4f} |")
    print(f"| trial train examples / one full training | {c['search_x_examples']:.2f}x |")
    print(f"| trial CPU time / one full training | {c['search_x_cpu']:.2f}x |")
    print(f"| trial wall time / one full training (trials share {args.workers} workers on a loaded machine) | "
          f"{c['search_x_wall']:.2f}x |")
    print(f"| (trials + top-{args.top_k} retraining) / one full training, examples / CPU | "
          f"{c['search_plus_retrain_x_examples']:.2f}x / {c['search_plus_retrain_x_cpu']:.2f}x |")
    print(f"| wall: data {t_data:.0f} s, search step {t_search:.0f} s ({args.workers} workers) | |")
    print(f"\nbest spec ({best.fingerprint}): {best.arch().canonical()}")
    print(f"result metrics: { {k: round(v, 4) for k, v in res.metrics.items()} }")


if __name__ == "__main__":
    main()
