"""Throughput of recpipe.metrics on CPU: exact AUC vs scikit-learn, streaming collection, Poisson bootstrap.

Run: ``python benchmarks/eval_metrics.py [--rows 1000000] [--samples 200]``; prints a Markdown table.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from recpipe.metrics import MetricCollection, auc, bootstrap


def _timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(args.seed)
    y = (torch.rand(args.rows, generator=g) < 0.25).float()
    p = torch.sigmoid(torch.randn(args.rows, generator=g) + y - 1.2)  # float32 like a model's output
    p2 = torch.sigmoid(torch.logit(p) + 0.1 * torch.randn(args.rows, generator=g))
    rows = []
    t_ours, a = _timed(lambda: auc(p, y))
    t_sk, b = _timed(lambda: roc_auc_score(y.numpy(), p.numpy()))
    rows.append(("exact AUC, recpipe", t_ours, f"{a:.6f}"))
    rows.append(("exact AUC, sklearn roc_auc_score", t_sk, f"{b:.6f}"))

    def stream() -> dict[str, float]:
        m = MetricCollection()
        for chunk in range(0, args.rows, 8192):
            m.update(p[chunk: chunk + 8192], y[chunk: chunk + 8192])
        return m.compute()

    t_stream, res = _timed(stream, repeat=1)
    rows.append(("MetricCollection, 8192-row batches + compute", t_stream, f"ne={res['eval/ne']:.6f}"))
    t_boot, br = _timed(lambda: bootstrap({"a": p, "b": p2}, y, num_samples=args.samples, seed=0), repeat=1)
    d = br.delta("a", "b", "auc")
    rows.append((f"paired bootstrap, 2 models, S={args.samples}", t_boot,
                 f"ΔAUC {d.estimate:+.5f} [{d.low:+.5f}, {d.high:+.5f}]"))
    print(f"rows = {args.rows}, torch threads = {torch.get_num_threads()}, numpy {np.__version__}\n")
    print("| operation | seconds | result |\n|---|---|---|")
    for name, t, r in rows:
        print(f"| {name} | {t:.3f} | {r} |")


if __name__ == "__main__":
    main()
