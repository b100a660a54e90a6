"""End-to-end DLRM training throughput: fused recpipe ops vs plain PyTorch of the same configuration.

A minimal DLRM (bottom MLP on N dense features -> D, dot interaction of the dense vector and F pooled
embeddings, top MLP -> logit, BCE loss) is trained on random batches kept on the device, with the embedding
part built three ways (the dense part is identical: Adagrad on the MLPs):

* ``fused``: :class:`recpipe.ops.embedding_bag.FusedEmbeddingBag`, row-wise Adagrad applied inside backward;
* ``plain flat``: one flat weight + ``F.embedding_bag(sparse=True)`` (what ``recpipe.modules`` does) and a
  row-wise Adagrad written with PyTorch ops on the coalesced sparse gradient (``recpipe.train.optim``'s math);
* ``plain per-table``: a list of ``nn.EmbeddingBag(sparse=True)`` and ``torch.optim.Adagrad`` (the classic
  plain-PyTorch DLRM).

``--trainer`` measures recpipe itself end to end instead: :class:`recpipe.train.Trainer` on a
:class:`recpipe.models.GraphModel` DLRM (``TrainConfig.fused_embedding_update="on"``: op lookup, row-wise
Adagrad inside backward; and ``"off"``: op lookup, sparse gradient, ``RowWiseAdagrad.step``) against a
plain-PyTorch DLRM of the same configuration (per-table ``nn.EmbeddingBag(sparse=True)`` +
``torch.optim.Adagrad``, the same MLPs / interaction, started from the GraphModel's own weights so the first
loss must agree), on the same device-resident batches, after warm-up steps, timed with ``cuda.synchronize``
around the whole timed run (so host overhead of the loop counts).

    python benchmarks/train_gpu.py [--smoke] [--trainer]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import recpipe.ops
from ops_gpu import device_name, time_ms
from recpipe.data.batch import Batch
from recpipe.models import GraphModel, dlrm
from recpipe.ops import embedding_bag as eb
from recpipe.train import OptimConfig, TrainConfig, Trainer

ROTATIONS = 3
LR_SPARSE = 0.01
LR_DENSE = 0.01
EPS = 1e-8


@dataclass(frozen=True)
class Setup:
    num_tables: int
    rows: int
    dim: int
    batch: int
    pooling: int
    num_dense: int = 13
    bottom: tuple[int, ...] = (512, 256)
    top: tuple[int, ...] = (512, 256)

    @property
    def label(self) -> str:
        return (f"F={self.num_tables} x {self.rows / 1e6:g}M rows, D={self.dim}, B={self.batch}, L={self.pooling}, "
                f"MLPs {list(self.bottom)}/{list(self.top)}")


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])  # no ReLU after the last layer


class DenseTower(nn.Module):
    """Bottom MLP, dot interaction (upper triangle) and top MLP of DLRM."""

    def __init__(self, s: Setup) -> None:
        super().__init__()
        self.bottom = mlp([s.num_dense, *s.bottom, s.dim])
        fields = s.num_tables + 1
        self.register_buffer("triu", torch.triu_indices(fields, fields, offset=1), persistent=False)
        self.top = mlp([s.dim + fields * (fields - 1) // 2, *s.top, 1])

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)  # (B, D)
        fields = torch.cat([x[:, None], pooled], dim=1)  # (B, F + 1, D)
        dots = torch.bmm(fields, fields.transpose(1, 2))  # (B, F + 1, F + 1)
        inter = dots[:, self.triu[0], self.triu[1]]  # (B, (F + 1) F / 2)
        return self.top(torch.cat([x, inter], dim=1)).squeeze(1)  # (B,)


def make_batches(s: Setup, device: str) -> list[tuple[torch.Tensor, ...]]:
    out = []
    for seed in range(ROTATIONS):
        g = torch.Generator(device=device).manual_seed(seed)
        dense = torch.randn(s.batch, s.num_dense, device=device, generator=g)
        indices = torch.randint(0, s.rows, (s.num_tables * s.batch * s.pooling,), device=device, generator=g)
        offsets = torch.arange(s.num_tables * s.batch + 1, device=device) * s.pooling
        labels = (torch.rand(s.batch, device=device, generator=g) < 0.25).float()
        out.append((dense, indices, offsets, labels))
    return out


def run(s: Setup, device: str, kind: str, steps: int) -> float:
    """Median ms per training step of one embedding backend."""
    torch.manual_seed(0)
    tower = DenseTower(s).to(device)
    dense_opt = torch.optim.Adagrad(tower.parameters(), lr=LR_DENSE)
    batches = make_batches(s, device)
    weight = torch.empty(s.num_tables * s.rows, s.dim, device=device).uniform_(-s.rows ** -0.5, s.rows ** -0.5)
    table_offsets = torch.arange(s.num_tables + 1, device=device) * s.rows
    table_of_pos = torch.arange(s.num_tables * s.batch * s.pooling, device=device) // (s.batch * s.pooling)

    if kind == "fused":
        emb = eb.FusedEmbeddingBag(weight, table_offsets, eb.RowwiseAdagrad(LR_SPARSE, EPS))

        def pooled_of(indices, offsets):
            return emb(indices, offsets)  # (B, F, D)

        def sparse_step():
            pass  # done inside backward
    elif kind == "plain flat":
        param = nn.Parameter(weight)
        state = torch.zeros(weight.shape[0], device=device)

        def pooled_of(indices, offsets):
            rows = indices + table_offsets[table_of_pos]
            out = F.embedding_bag(rows, param, offsets, mode="sum", include_last_offset=True, sparse=True)
            return out.view(s.num_tables, s.batch, s.dim).transpose(0, 1)  # (B, F, D)

        @torch.no_grad()
        def sparse_step():
            g = param.grad.coalesce()
            rows, vals = g.indices()[0], g.values()  # (U,), (U, D)
            acc = state[rows] + vals.pow(2).mean(dim=1)
            state[rows] = acc
            param[rows] -= LR_SPARSE * vals / (acc.sqrt() + EPS)[:, None]
            param.grad = None
    else:
        bags = nn.ModuleList(nn.EmbeddingBag(s.rows, s.dim, mode="sum", sparse=True, _weight=weight[f * s.rows:
                                             (f + 1) * s.rows].clone()) for f in range(s.num_tables)).to(device)
        del weight
        sparse_opt = torch.optim.Adagrad(bags.parameters(), lr=LR_SPARSE, eps=EPS)
        bag_offsets = torch.arange(s.batch, device=device) * s.pooling

        def pooled_of(indices, offsets):
            per = indices.view(s.num_tables, -1)
            return torch.stack([bags[f](per[f], bag_offsets) for f in range(s.num_tables)], dim=1)  # (B, F, D)

        def sparse_step():
            sparse_opt.step()
            sparse_opt.zero_grad(set_to_none=True)

    def step(i: int) -> None:
        dense, indices, offsets, labels = batches[i % ROTATIONS]
        logits = tower(dense, pooled_of(indices, offsets))
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        dense_opt.zero_grad(set_to_none=True)
        loss.backward()
        dense_opt.step()
        sparse_step()

    return time_ms(step, reps=steps, warmup=3)


# ------------------------------------------------------------------------------- recpipe Trainer vs plain
FIRST_LOSS_TOL = 1e-4
"""First-step losses of the two models (same weights, same batch) differ only by summation order / TF32."""
TRAINER_WARMUP = 3


class PlainDLRM(nn.Module):
    """The plain-PyTorch DLRM with a GraphModel DLRM's configuration and (copied) initial weights.

    Bottom MLP (ReLU after every layer) -> (B, D); per-table ``nn.EmbeddingBag(sparse=True)`` -> (B, F, D); dot
    interaction of the F + 1 fields (upper triangle); top MLP (ReLU after every layer) on [bottom, dots]; a last
    Linear -> logit. Bags must all have ``pooling`` ids (the benchmark's batches do).
    """

    def __init__(self, graph: GraphModel, s: Setup) -> None:
        super().__init__()
        self.bottom = _plain_mlp(graph.blocks[0].op)
        self.top = _plain_mlp(graph.blocks[2].op)
        self.out = nn.Linear(graph.out.in_features, 1, device=graph.out.weight.device)
        self.out.load_state_dict(graph.out.state_dict())
        w, starts = graph.embedding.weight.detach(), graph.embedding.table_offsets.tolist()
        self.tables = nn.ModuleList(
            nn.EmbeddingBag.from_pretrained(w[starts[f]: starts[f + 1]].clone(), freeze=False, mode="sum",
                                            sparse=True) for f in range(s.num_tables))
        fields = s.num_tables + 1
        self.register_buffer("triu", torch.triu_indices(fields, fields, offset=1, device=w.device),
                             persistent=False)
        self.register_buffer("bag_offsets", torch.arange(s.batch, device=w.device) * s.pooling, persistent=False)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.bottom(batch.dense)  # (B, D)
        per = batch.indices.view(len(self.tables), -1)  # (F, B * L)
        pooled = torch.stack([t(per[f], self.bag_offsets) for f, t in enumerate(self.tables)], dim=1)  # (B, F, D)
        fields = torch.cat([x[:, None], pooled], dim=1)  # (B, F + 1, D)
        dots = torch.bmm(fields, fields.transpose(1, 2))  # (B, F + 1, F + 1)
        inter = dots[:, self.triu[0], self.triu[1]]  # (B, (F + 1) F / 2)
        return self.out(self.top(torch.cat([x, inter], dim=1))).squeeze(1)  # (B,)


def _plain_mlp(src: nn.Module) -> nn.Sequential:
    """nn.Sequential(Linear, ReLU, ...) holding copies of the Linear layers of ``src`` (ReLU after each)."""
    layers: list[nn.Module] = []
    for lin in (m for m in src.modules() if isinstance(m, nn.Linear)):
        copy = nn.Linear(lin.in_features, lin.out_features, device=lin.weight.device)
        copy.load_state_dict(lin.state_dict())
        layers += [copy, nn.ReLU()]
    return nn.Sequential(*layers)


def make_batch_objects(s: Setup, device: str) -> list[Batch]:
    return [Batch(dense=d, indices=i, offsets=o, labels=y) for d, i, o, y in make_batches(s, device)]


def _synced_seconds(device: str, fn: Callable[[], object]) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _graph_model(s: Setup, device: str) -> GraphModel:
    torch.manual_seed(0)
    with torch.device(device):  # parameters are drawn on the device (no host copy of the tables)
        model = dlrm([s.rows] * s.num_tables, s.num_dense, embedding_dim=s.dim, bottom=s.bottom, top=s.top)
    model.embedding.validate_indices = False  # the GraphModel knob for data known to be in range (no host sync)
    return model


def run_trainer(s: Setup, device: str, fused: str, steps: int) -> tuple[float, float, bool]:
    """(samples/s, first loss, fused on?) of recpipe's Trainer on ``steps`` timed steps after warm-up."""
    batches = make_batch_objects(s, device)
    cfg = TrainConfig(optim=OptimConfig(dense="adagrad", dense_lr=LR_DENSE, sparse="rowwise_adagrad",
                                        sparse_lr=LR_SPARSE, eps=EPS),
                      device=device, log_every=10 ** 9, fused_embedding_update=fused)
    trainer = Trainer(_graph_model(s, device), cfg)
    with torch.no_grad():
        first = float(F.binary_cross_entropy_with_logits(trainer.model(batches[0]), batches[0].labels))
    trainer.fit([batches[i % ROTATIONS] for i in range(TRAINER_WARMUP)])
    timed = [batches[i % ROTATIONS] for i in range(steps)]
    seconds = _synced_seconds(device, lambda: trainer.fit(timed))
    on = trainer.fused_embedding_update
    del trainer
    return steps * s.batch / seconds, first, on


def run_plain(s: Setup, device: str, steps: int) -> tuple[float, float]:
    """(samples/s, first loss) of the plain-PyTorch DLRM on the same batches and initial weights."""
    batches = make_batch_objects(s, device)
    model = PlainDLRM(_graph_model(s, device), s)
    emb_ids = {id(p) for p in model.tables.parameters()}
    dense_opt = torch.optim.Adagrad([p for p in model.parameters() if id(p) not in emb_ids], lr=LR_DENSE, eps=EPS)
    sparse_opt = torch.optim.Adagrad(model.tables.parameters(), lr=LR_SPARSE, eps=EPS)
    with torch.no_grad():
        first = float(F.binary_cross_entropy_with_logits(model(batches[0]), batches[0].labels))

    def step(batch: Batch) -> None:
        dense_opt.zero_grad(set_to_none=True)
        sparse_opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(batch), batch.labels)
        loss.backward()
        dense_opt.step()
        sparse_opt.step()

    def loop(n: int) -> None:
        for i in range(n):
            step(batches[i % ROTATIONS])

    loop(TRAINER_WARMUP)
    seconds = _synced_seconds(device, lambda: loop(steps))
    return steps * s.batch / seconds, first


def trainer_table(setups: list[Setup], device: str, steps: int) -> None:
    print(f"\n# recpipe Trainer (GraphModel DLRM) vs plain-PyTorch DLRM on {device_name()}, torch "
          f"{torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (fp32, TF32 matmuls; "
          f"{steps} timed steps after {TRAINER_WARMUP} warm-up; synchronized wall time)\n")
    print("| setup | Trainer path | Trainer fused samples/s | Trainer unfused samples/s | plain DLRM samples/s "
          "| speed-up fused vs plain | first loss recpipe / plain (equal?) |")
    print("|---|---|---|---|---|---|---|")
    for s in setups:
        fused, loss_r, on = run_trainer(s, device, "on", steps)
        if device == "cuda":
            torch.cuda.empty_cache()
        unfused, _, _ = run_trainer(s, device, "off", steps)
        if device == "cuda":
            torch.cuda.empty_cache()
        plain, loss_p = run_plain(s, device, steps)
        if device == "cuda":
            torch.cuda.empty_cache()
        same = "yes" if abs(loss_r - loss_p) <= FIRST_LOSS_TOL else "NO"
        print(f"| {s.label} | {'fused' if on else 'NOT fused'} | {fused:,.0f} | {unfused:,.0f} | {plain:,.0f} "
              f"| {fused / plain:.1f}x | {loss_r:.5f} / {loss_p:.5f} ({same}) |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (script check; runs on the CPU too)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--trainer", action="store_true",
                        help="recpipe's Trainer (GraphModel DLRM, fused) vs a plain-PyTorch DLRM of the same config")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not recpipe.ops.load_cuda_kernels():
            raise SystemExit(f"CUDA kernels failed to build: {recpipe.ops._build.cuda_build_error()}")
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.smoke:
        setups = [Setup(3, 1000, 8, 64, 2, bottom=(16,), top=(16,))]
        steps = 3
    else:
        setups = [Setup(26, 1_000_000, 64, 16384, 1), Setup(26, 1_000_000, 64, 65536, 1),
                  Setup(8, 2_000_000, 128, 16384, 20)]
        steps = args.steps
    if args.trainer:
        trainer_table(setups, device, steps)
        return
    print(f"\n# DLRM training step on {device_name()}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (fp32, TF32 matmuls)\n")
    print("| setup | fused ms/step | fused samples/s | plain flat ms/step | plain per-table ms/step "
          "| speed-up vs flat | speed-up vs per-table |")
    print("|---|---|---|---|---|---|---|")
    for s in setups:
        t = {k: run(s, device, k, steps) for k in ("fused", "plain flat", "plain per-table")}
        if device == "cuda":
            torch.cuda.empty_cache()
        print(f"| {s.label} | {t['fused']:.2f} | {s.batch / t['fused'] * 1e3:,.0f} | {t['plain flat']:.2f} "
              f"| {t['plain per-table']:.2f} | {t['plain flat'] / t['fused']:.1f}x "
              f"| {t['plain per-table'] / t['fused']:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
