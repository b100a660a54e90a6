"""Benchmark of the recpipe CUDA ops: achieved bandwidth vs the measured copy ceiling, speed-up vs plain PyTorch.

Run on a GPU machine (prints Markdown tables)::

    python benchmarks/ops_gpu.py            # full sizes (tables of millions of rows; needs ~40 GB of GPU memory)
    python benchmarks/ops_gpu.py --smoke    # tiny sizes, also runs on the CPU (checks the script only)

Bandwidth = the fewest bytes the op must move (each distinct row read once, each output written once, the
indices and offsets read once) / median time. Ids are uniform random, so tables far larger than the L2 cache
are read from HBM. Baselines: the flat-weight ``F.embedding_bag`` that ``recpipe.modules`` uses, a loop of
per-table ``nn.EmbeddingBag`` lookups, ``torch.optim.Adagrad`` on sparse gradients (element-wise state, the
stock optimizer), a row-wise Adagrad written with PyTorch ops on the coalesced sparse gradient, and a naive
gather + dequantize + pool of the quantized rows with PyTorch ops.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import recpipe.ops
from recpipe.ops import embedding_bag as eb
from recpipe.ops import quant as q

logger = logging.getLogger("ops_gpu")
ROTATIONS = 3
"""Input sets cycled through the timed repeats so that no repeat re-reads the previous one's rows from L2."""


# ------------------------------------------------------------------------------------------------ timing
def time_ms(fn: Callable[[int], object], reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``fn(i)`` (CUDA events around each call; perf_counter on the CPU)."""
    for i in range(warmup):
        fn(i)
    times = []
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        for i in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for i in range(reps):
            t0 = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs(device: str, gib: float) -> float:
    """Device-to-device copy bandwidth (GB/s), bytes read plus bytes written."""
    n = int(gib * (1 << 30)) // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda i: dst.copy_(src), reps=10)
    return 2 * n * 4 / ms / 1e6


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class TbeCase:
    """F tables of ``rows`` rows each, dimension D, B bags per table of exactly ``pooling`` ids."""

    num_tables: int
    rows: int
    dim: int
    batch: int
    pooling: int
    dtype: torch.dtype = torch.float32

    @property
    def label(self) -> str:
        dt = str(self.dtype).removeprefix("torch.")
        return f"F={self.num_tables} x {self.rows / 1e6:g}M rows, D={self.dim}, B={self.batch}, L={self.pooling}, {dt}"


def tbe_inputs(c: TbeCase, device: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(table_offsets (F + 1,), indices (F * B * L,) uniform ids, offsets (F * B + 1,))."""
    g = torch.Generator(device=device).manual_seed(seed)
    table_offsets = torch.arange(c.num_tables + 1, device=device, dtype=torch.int64) * c.rows
    indices = torch.randint(0, c.rows, (c.num_tables * c.batch * c.pooling,), device=device, generator=g)
    offsets = torch.arange(c.num_tables * c.batch + 1, device=device, dtype=torch.int64) * c.pooling
    return table_offsets, indices, offsets


def global_rows(c: TbeCase, indices: torch.Tensor) -> torch.Tensor:
    """Flat-weight rows of TBE ids with constant bag length (position p belongs to table p // (B * L))."""
    per_table = c.batch * c.pooling
    table = torch.arange(indices.numel(), device=indices.device) // per_table
    return indices + table * c.rows


# ------------------------------------------------------------------------------------------------ benchmarks
def bench_tbe(c: TbeCase, device: str, reps: int) -> dict[str, float]:
    """Forward, fused backward + row-wise Adagrad, and the embedding training step against PyTorch."""
    torch.manual_seed(0)
    elem = torch.finfo(c.dtype).bits // 8
    weight = (torch.randn(c.num_tables * c.rows, c.dim, device=device) * 0.01).to(c.dtype)
    sets = [tbe_inputs(c, device, seed) for seed in range(ROTATIONS)]
    flat_rows = [global_rows(c, s[1]) for s in sets]
    unique = torch.unique(flat_rows[0]).numel()
    lookups = sets[0][1].numel()
    out_bytes = c.batch * c.num_tables * c.dim * elem
    index_bytes = lookups * 8 + (c.num_tables * c.batch + 1) * 8
    res: dict[str, float] = {"unique_frac": unique / lookups}

    # forward ------------------------------------------------------------------------------------------
    fused = eb.embedding_bag(weight, *sets[0], 0)
    plain = F.embedding_bag(flat_rows[0], weight, sets[0][2], mode="sum", include_last_offset=True)
    plain = plain.view(c.num_tables, c.batch, c.dim).transpose(0, 1)  # (B, F, D)
    res["fwd_max_err"] = float((fused.float() - plain.float()).abs().max())
    res["fwd_ms"] = time_ms(lambda i: eb.embedding_bag(weight, *sets[i % ROTATIONS], 0), reps)

    def plain_flat(i: int) -> torch.Tensor:
        to, idx, off = sets[i % ROTATIONS]
        rows = global_rows(c, idx)  # what the module does each step
        out = F.embedding_bag(rows, weight, off, mode="sum", include_last_offset=True)  # (F * B, D)
        return out.view(c.num_tables, c.batch, c.dim).transpose(0, 1)  # (B, F, D)

    tables = [weight[f * c.rows:(f + 1) * c.rows] for f in range(c.num_tables)]
    bag_offsets = torch.arange(c.batch + 1, device=device) * c.pooling

    def plain_loop(i: int) -> torch.Tensor:
        idx = sets[i % ROTATIONS][1].view(c.num_tables, -1)
        return torch.stack([F.embedding_bag(idx[f], tables[f], bag_offsets, mode="sum", include_last_offset=True)
                            for f in range(c.num_tables)], dim=1)  # (B, F, D)

    res["fwd_plain_ms"] = time_ms(plain_flat, reps)
    res["fwd_loop_ms"] = time_ms(plain_loop, reps)
    res["fwd_gbs"] = (unique * c.dim * elem + index_bytes + out_bytes) / res["fwd_ms"] / 1e6

    # fused backward + row-wise Adagrad ------------------------------------------------------------------
    state = torch.zeros(weight.shape[0], device=device)
    grads = [torch.randn(c.batch, c.num_tables, c.dim, device=device).to(c.dtype) * 1e-3 for _ in range(ROTATIONS)]
    opt = eb.RowwiseAdagrad(lr=0.01)
    res["bwd_ms"] = time_ms(lambda i: eb.apply_fused_update(weight, state, grads[i % ROTATIONS],
                                                            *sets[i % ROTATIONS], 0, opt), reps)
    res["bwd_gbs"] = (out_bytes + 2 * unique * (c.dim * elem + 4) + index_bytes) / res["bwd_ms"] / 1e6

    # embedding training step: fused forward + backward-with-update vs PyTorch ---------------------------
    module = eb.FusedEmbeddingBag(weight, sets[0][0], opt)

    def fused_step(i: int) -> None:
        _, idx, off = sets[i % ROTATIONS]
        module(idx, off).backward(grads[i % ROTATIONS])

    res["step_ms"] = time_ms(fused_step, reps)
    param = torch.nn.Parameter(weight)
    row_state = torch.zeros(weight.shape[0], device=device)

    def plain_forward_backward(i: int) -> None:
        _, idx, off = sets[i % ROTATIONS]
        out = F.embedding_bag(global_rows(c, idx), param, off, mode="sum", include_last_offset=True, sparse=True)
        out.backward(grads[i % ROTATIONS].transpose(0, 1).reshape(-1, c.dim))  # (F * B, D)

    def plain_rowwise_step(i: int) -> None:
        plain_forward_backward(i)
        g = param.grad.coalesce()
        rows, vals = g.indices()[0], g.values().float()  # (U,), (U, D)
        row_state.index_add_(0, rows, vals.pow(2).mean(dim=1))
        step = opt.lr / (row_state.index_select(0, rows).sqrt() + opt.eps)  # (U,)
        param.data.index_add_(0, rows, (-step[:, None] * vals).to(param.dtype))
        param.grad = None

    res["step_plain_rowwise_ms"] = time_ms(plain_rowwise_step, reps)
    if c.dtype == torch.float32:  # the stock sparse Adagrad keeps an (R, D) state: fp32 only
        adagrad = torch.optim.Adagrad([param], lr=opt.lr)

        def plain_adagrad_step(i: int) -> None:
            plain_forward_backward(i)
            adagrad.step()
            adagrad.zero_grad(set_to_none=True)

        res["step_plain_adagrad_ms"] = time_ms(plain_adagrad_step, max(3, reps // 4))
    return res


@dataclass(frozen=True)
class QCase:
    rows: int
    dim: int
    bits: int
    batch: int
    pooling: int

    @property
    def label(self) -> str:
        return f"{self.rows / 1e6:g}M rows, D={self.dim}, int{self.bits}, B={self.batch}, L={self.pooling}"


def bench_qbag(c: QCase, device: str, reps: int) -> dict[str, float]:
    """Quantized lookup vs gather + dequantize + pool with PyTorch ops."""
    torch.manual_seed(0)
    fused = q.quantize_rowwise(torch.randn(c.rows, c.dim, device=device), c.bits)
    width = fused.shape[1]
    g = torch.Generator(device=device).manual_seed(1)
    sets = [torch.randint(0, c.rows, (c.batch * c.pooling,), device=device, generator=g) for _ in range(ROTATIONS)]
    offsets = torch.arange(c.batch + 1, device=device) * c.pooling
    bag_of = torch.arange(c.batch * c.pooling, device=device) // c.pooling
    unique = torch.unique(sets[0]).numel()

    def naive(i: int) -> torch.Tensor:
        codes, scale, bias = q.split_fused(fused.index_select(0, sets[i % ROTATIONS]), c.bits, c.dim)
        rows = codes.float() * scale[:, None] + bias[:, None]  # (T, D)
        return torch.zeros(c.batch, c.dim, device=device).index_add_(0, bag_of, rows)

    out = q.quantized_embedding_bag(fused, c.bits, c.dim, sets[0], offsets, 0, None)
    err = float((out - naive(0)).abs().max())
    ms = time_ms(lambda i: q.quantized_embedding_bag(fused, c.bits, c.dim, sets[i % ROTATIONS], offsets, 0, None),
                 reps)
    naive_ms = time_ms(naive, reps)
    need = unique * width + sets[0].numel() * 8 + (c.batch + 1) * 8 + c.batch * c.dim * 4
    return {"ms": ms, "naive_ms": naive_ms, "gbs": need / ms / 1e6, "max_err": err, "row_bytes": width}


def bench_greedy(rows: int, dim: int, bits: int, device: str, cpu_rows: int) -> dict[str, float]:
    """Greedy row-wise quantization: rows per second on the device vs the CPU reference."""
    w = torch.randn(rows, dim, device=device)
    ms = time_ms(lambda i: q.quantize_rowwise_greedy(w, bits), reps=3, warmup=1)
    w_cpu = w[:cpu_rows].cpu()
    t0 = time.perf_counter()
    ref = q.quantize_rowwise_greedy(w_cpu, bits)
    cpu_s = time.perf_counter() - t0
    same = float((q.quantize_rowwise_greedy(w[:cpu_rows], bits).cpu() == ref).all(dim=1).float().mean())
    return {"rows_per_s": rows / ms * 1e3, "cpu_rows_per_s": cpu_rows / cpu_s, "same_rows": same}


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (script check; runs on the CPU too)")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not recpipe.ops.load_cuda_kernels():
        raise SystemExit(f"CUDA kernels failed to build: {recpipe.ops._build.cuda_build_error()}")
    if args.smoke:
        tbe = [TbeCase(3, 1000, 16, 64, 4), TbeCase(2, 500, 8, 32, 2, torch.float16)]
        qcases = [QCase(2000, 16, 4, 64, 5)]
        greedy = (2000, 16, 4, 500)
        reps, gib = 3, 0.01
    else:
        tbe = [TbeCase(8, 2_000_000, 128, 32768, 20), TbeCase(8, 2_000_000, 128, 32768, 20, torch.float16),
               TbeCase(26, 1_000_000, 64, 65536, 1), TbeCase(4, 4_000_000, 64, 16384, 50)]
        qcases = [QCase(16_000_000, 128, 4, 262144, 20), QCase(16_000_000, 128, 8, 262144, 20),
                  QCase(16_000_000, 128, 2, 262144, 20), QCase(16_000_000, 64, 4, 262144, 20)]
        greedy = (1_000_000, 64, 4, 20000)
        reps, gib = args.reps, 2.0
    copy = copy_bandwidth_gbs(device, gib)
    print(f"\n# recpipe ops benchmark on {device_name()}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"\nDevice-to-device copy (read + write): {copy:.0f} GB/s\n")
    print("| table-batched case | unique ids | fwd ms | fwd GB/s (% copy) | plain flat ms | per-table loop ms "
          "| fwd speed-up (flat / loop) | bwd+Adagrad ms | bwd GB/s (% copy) | step ms | plain row-wise step ms "
          "| torch.optim.Adagrad step ms | step speed-up (row-wise / Adagrad) | fwd max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in tbe:
        r = bench_tbe(c, device, reps)
        ada = r.get("step_plain_adagrad_ms")
        ada_txt = f"{ada:.2f}" if ada else "n/a (fp32 only)"
        ada_x = f"{ada / r['step_ms']:.1f}x" if ada else "n/a"
        print(f"| {c.label} | {r['unique_frac']:.0%} | {r['fwd_ms']:.3f} | {r['fwd_gbs']:.0f} "
              f"({r['fwd_gbs'] / copy:.0%}) | {r['fwd_plain_ms']:.3f} | {r['fwd_loop_ms']:.3f} "
              f"| {r['fwd_plain_ms'] / r['fwd_ms']:.1f}x / {r['fwd_loop_ms'] / r['fwd_ms']:.1f}x | {r['bwd_ms']:.3f} "
              f"| {r['bwd_gbs']:.0f} ({r['bwd_gbs'] / copy:.0%}) | {r['step_ms']:.3f} "
              f"| {r['step_plain_rowwise_ms']:.3f} | {ada_txt} "
              f"| {r['step_plain_rowwise_ms'] / r['step_ms']:.1f}x / {ada_x} | {r['fwd_max_err']:.1e} |", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    print("\n| quantized lookup | row bytes | ms | GB/s (% copy) | naive gather+dequant+pool ms | speed-up "
          "| max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for c in qcases:
        r = bench_qbag(c, device, reps)
        print(f"| {c.label} | {r['row_bytes']} | {r['ms']:.3f} | {r['gbs']:.0f} ({r['gbs'] / copy:.0%}) "
              f"| {r['naive_ms']:.3f} | {r['naive_ms'] / r['ms']:.1f}x | {r['max_err']:.1e} |", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    rows, dim, bits, cpu_rows = greedy
    r = bench_greedy(rows, dim, bits, device, cpu_rows)
    print(f"\nGreedy int{bits} quantization, D={dim}: {r['rows_per_s'] / 1e6:.2f} M rows/s on {device} "
          f"({rows} rows) vs {r['cpu_rows_per_s'] / 1e3:.1f} k rows/s CPU reference ({cpu_rows} rows, "
          f"{torch.get_num_threads()} threads); byte-identical rows: {r['same_rows']:.1%}")


if __name__ == "__main__":
    main()
