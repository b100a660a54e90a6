"""Trainer throughput and the sparse row-wise Adagrad step vs a dense Adagrad step over the whole table.

Prints two Markdown tables:

1. examples/s of ``Trainer.train_step`` for the dlrm / dcn / deepfm presets on Criteo-shaped random batches
   (13 dense, 26 one-hot sparse features, ``--rows`` rows per table, D = ``--dim``);
2. time of one embedding optimizer step for a (rows * 26, D) table when a batch touches a few thousand rows:
   :class:`RowWiseAdagrad` on the sparse gradient vs ``torch.optim.Adagrad`` on a dense gradient.

Usage::

    python benchmarks/train_loop.py --device cpu --batch 2048 --steps 20
    python benchmarks/train_loop.py --device cuda --batch 16384 --rows 1000000 --dim 64 --steps 50
"""
from __future__ import annotations

import argparse
import logging
import time

import torch

from recpipe.data.batch import Batch
from recpipe.models import preset
from recpipe.train import OptimConfig, RowWiseAdagrad, TrainConfig, Trainer

NUM_DENSE, NUM_SPARSE = 13, 26


def random_batch(batch: int, rows: int, seed: int) -> Batch:
    """A Criteo-shaped one-hot batch with uniform random ids."""
    g = torch.Generator().manual_seed(seed)
    return Batch(dense=torch.rand(batch, NUM_DENSE, generator=g),
                 indices=torch.randint(0, rows, (NUM_SPARSE * batch,), generator=g),
                 offsets=torch.arange(NUM_SPARSE * batch + 1, dtype=torch.int64),
                 labels=torch.randint(0, 2, (batch,), generator=g).float())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_trainer(name: str, args: argparse.Namespace) -> float:
    """Examples per second of train_step (after ``--warmup`` steps)."""
    torch.manual_seed(0)
    model = preset(name, [args.rows] * NUM_SPARSE, NUM_DENSE, embedding_dim=args.dim)
    model.embedding.validate_indices = False  # ids are generated in range; skip the per-step check
    trainer = Trainer(model, TrainConfig(device=args.device, optim=OptimConfig()))
    device = trainer.device
    batches = [random_batch(args.batch, args.rows, s).to(device) for s in range(4)]
    for i in range(args.warmup):
        trainer.train_step(batches[i % 4])
    _sync(device)
    t0 = time.perf_counter()
    for i in range(args.steps):
        trainer.train_step(batches[i % 4])
    _sync(device)
    return args.steps * args.batch / (time.perf_counter() - t0)


def bench_optimizer_step(args: argparse.Namespace) -> tuple[float, float]:
    """(row-wise sparse, dense Adagrad) seconds per optimizer step on one batch's embedding gradient."""
    device = torch.device(args.device)
    total = args.rows * NUM_SPARSE
    w_sparse = torch.nn.Parameter(torch.randn(total, args.dim, device=device))
    w_dense = torch.nn.Parameter(w_sparse.detach().clone())
    rows = torch.randint(0, total, (NUM_SPARSE * args.batch,), device=device)
    grad_vals = torch.randn(rows.numel(), args.dim, device=device)
    sparse_grad = torch.sparse_coo_tensor(rows[None], grad_vals, (total, args.dim))
    dense_grad = sparse_grad.to_dense()
    times = []
    for p, opt, grad in ((w_sparse, RowWiseAdagrad([w_sparse], lr=0.05), sparse_grad),
                         (w_dense, torch.optim.Adagrad([w_dense], lr=0.05), dense_grad)):
        for _ in range(args.warmup):
            p.grad = grad
            opt.step()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            p.grad = grad
            opt.step()
        _sync(device)
        times.append((time.perf_counter() - t0) / args.steps)
    return times[0], times[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=100_000, help="rows per table (26 tables)")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.sparse.check_sparse_tensor_invariants.disable()  # explicit opt-out: the benchmark's indices are valid
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    header = f"device={dev}, batch={args.batch}, rows/table={args.rows}, D={args.dim}, steps={args.steps}"
    lines = [f"Trainer.train_step throughput ({header})", "", "| model | examples/s |", "|---|---:|"]
    for name in ("dlrm", "dcn", "deepfm"):
        lines.append(f"| {name} | {bench_trainer(name, args):,.0f} |")
    sparse_s, dense_s = bench_optimizer_step(args)
    lines += ["", f"Embedding optimizer step, {args.rows * NUM_SPARSE:,} x {args.dim} table, "
                  f"{NUM_SPARSE * args.batch:,} looked-up ids", "",
              "| optimizer | ms / step |", "|---|---:|",
              f"| RowWiseAdagrad (sparse grad, touched rows) | {sparse_s * 1e3:.2f} |",
              f"| torch.optim.Adagrad (dense grad, all rows) | {dense_s * 1e3:.2f} |",
              f"| ratio dense / row-wise | {dense_s / sparse_s:.1f}x |"]
    print("\n".join(lines))  # noqa: T201 - benchmark scripts print their table


if __name__ == "__main__":
    main()
