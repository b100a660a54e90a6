"""Multi-process / multi-node data-parallel training under ``torchrun`` (gloo on CPU, NCCL on GPU).

Each rank reads its own shard of the time-ordered stream (``ParquetLoader(rank=, world_size=)``), computes the
loss on its rows and :class:`GradientSync` averages gradients across ranks after backward, before the
optimizers step. Dense gradients go through one bucketed ``all_reduce``; the embedding table's SPARSE gradient
(only the touched rows) is exchanged with ``all_gather`` of (row ids, row values), so a table of millions of
rows never travels densely — which is also why this is a callback rather than ``DistributedDataParallel``
(NCCL has no sparse all-reduce, and DDP would hide ``model.embedding`` behind ``.module``). Every rank then
applies the identical averaged update, so parameters stay bit-identical across ranks without re-broadcasting.

With equal per-rank batches, W ranks of batch B/W compute exactly the gradient one process computes on batch B
(the loss is a mean), so data-parallel training equals single-process training up to float summation order.
"""
from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from recpipe.train.loop import Callback, Trainer

logger = logging.getLogger(__name__)

BUCKET_ELEMENTS = 1 << 22
"""Dense gradients are flattened into all-reduce buckets of at most this many elements (16 MiB of fp32)."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, rank on its node, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(backend: str | None = None) -> DistInfo:
    """Initialises the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``...).

    Returns a single-process :class:`DistInfo` when ``WORLD_SIZE`` is unset or 1 (nothing is initialised).
    Backend: NCCL when CUDA is available, gloo otherwise, unless ``backend`` says.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
    if world <= 1:
        return DistInfo(device=device)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if use_cuda else "gloo"))
    info = DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)
    logger.info("distributed: rank %d/%d on %s (%s)", info.rank, info.world_size, device, dist.get_backend())
    return info


class GradientSync(Callback):
    """Averages gradients over the default process group after backward; broadcasts rank 0's weights at start.

    Args:
        group: process group (default: the world).
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group

    def on_fit_start(self, trainer: Trainer) -> None:
        broadcast_model(trainer.model, self.group)

    def after_backward(self, trainer: Trainer) -> None:
        world = dist.get_world_size(self.group)
        dense, sparse = [], []
        for p in trainer.model.parameters():
            if p.grad is None:
                continue
            (sparse if p.grad.is_sparse else dense).append(p)
        self._sync_dense(dense, world)
        for p in sparse:
            p.grad = self._sync_sparse(p.grad, world)

    def _sync_dense(self, params: list[torch.nn.Parameter], world: int) -> None:
        bucket: list[torch.nn.Parameter] = []
        size = 0
        for p in params + [None]:  # None flushes the last bucket
            if p is not None and size + p.grad.numel() <= BUCKET_ELEMENTS:
                bucket.append(p)
                size += p.grad.numel()
                continue
            if bucket:
                flat = torch.cat([q.grad.reshape(-1) for q in bucket])
                dist.all_reduce(flat, group=self.group)
                flat /= world
                i = 0
                for q in bucket:
                    n = q.grad.numel()
                    q.grad.copy_(flat[i:i + n].view_as(q.grad))
                    i += n
            if p is not None:
                bucket, size = [p], p.grad.numel()

    def _sync_sparse(self, grad: torch.Tensor, world: int) -> torch.Tensor:
        g = grad.coalesce()
        rows = g.indices()[0]  # (R,)
        vals = g.values()  # (R, D)
        n = torch.tensor([rows.numel()], device=rows.device)
        counts = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(counts, n, group=self.group)
        cap = int(max(int(c) for c in counts))
        pad_rows = torch.zeros(cap, dtype=rows.dtype, device=rows.device)
        pad_vals = torch.zeros((cap, *vals.shape[1:]), dtype=vals.dtype, device=vals.device)
        pad_rows[: rows.numel()] = rows
        pad_vals[: rows.numel()] = vals
        all_rows = [torch.empty_like(pad_rows) for _ in range(world)]
        all_vals = [torch.empty_like(pad_vals) for _ in range(world)]
        dist.all_gather(all_rows, pad_rows, group=self.group)
        dist.all_gather(all_vals, pad_vals, group=self.group)
        idx = torch.cat([r[: int(c)] for r, c in zip(all_rows, counts)])
        val = torch.cat([v[: int(c)] for v, c in zip(all_vals, counts)]) / world
        # (sum over ranks) / world, duplicates across ranks summed by coalesce in a fixed rank order
        return torch.sparse_coo_tensor(idx.unsqueeze(0), val, grad.shape).coalesce()


def broadcast_model(model: torch.nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Copies rank 0's parameters and buffers to every rank (identical start whatever each rank loaded)."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0, group=group)


def is_main_process() -> bool:
    """True outside torch.distributed and on global rank 0: the process that writes files and logs."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class EqualShards:
    """Wraps a rank's sharded loader so every rank yields the SAME number of batches (the minimum over ranks).

    Data-parallel steps pair up collectives across ranks; a rank with one batch more would wait forever. The
    few tail batches that not every rank has (at most world_size - 1 per pass) are skipped, and counted in the
    log. ``state_dict``/``load_state_dict`` and other attributes pass through to the loader.
    """

    def __init__(self, loader: Any, world_size: int) -> None:
        self.loader = loader
        self.world_size = world_size

    def __iter__(self) -> Iterator[Any]:
        counts = [self.loader.num_batches(r) for r in range(self.world_size)]
        limit = min(counts)
        if max(counts) > limit:
            logger.info("equal shards: %d tail batch(es) skipped so all %d ranks step together",
                        sum(counts) - limit * self.world_size, self.world_size)
        return itertools.islice(iter(self.loader), limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def cleanup() -> None:
    """Destroys the default process group if one was initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
