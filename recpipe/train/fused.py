"""Optimizer in backward for the embedding tables: the trainer's sparse optimizer step fused into backward.

With ``TrainConfig.fused_embedding_update`` on, every :class:`EmbeddingCollection` of the model gets a
:class:`FusedRowUpdate` as its ``fused_update``: its forward runs ``recpipe.ops.embedding_bag`` and its backward
hands the pooled gradient (B, F, D) to ``recpipe.ops.embedding_bag.apply_fused_update``, which sums each touched
row's gradient and applies the SAME step the sparse optimizer would (row-wise Adagrad
``s_r += mean_D(g ** 2); w_r -= lr * g / (sqrt(s_r) + eps)`` or SGD ``w_r -= lr * g``) in place. No
``weight.grad`` is built, so ``Optimizers.step`` skips the weight (the sparse optimizer steps parameters that
have a gradient only).

State layout: the weight stays registered in the trainer's :class:`RowWiseAdagrad`, and the fused step reads
and writes that optimizer's own ``state[weight]`` (``sum`` (R,) float32, ``step``), looked up at every
backward. So ``Optimizers.state_dict``/``load_state_dict`` (checkpoints, resume, warm start) and
``Trainer.grow_tables`` (``Optimizers.replace_embedding`` remaps ``sum``) work unchanged, and a checkpoint
written with the fused path resumes on the unfused one and back. Hyper-parameters (``lr``, ``eps``,
``initial_accumulator_value``) come from the weight's param group at each step.

Modes (``FUSED_MODES``): ``"off"``; ``"on"`` (any device: on the CPU the ops' reference kernels run, which is
how the tests compare both paths); ``"auto"``: on when the model is on CUDA, the CUDA kernels load
(:func:`recpipe.ops.load_cuda_kernels`) and every table's dim/dtype fits the CUDA backward kernel.

Not compatible with anything that needs the embedding gradient after backward: ``"auto"`` stays off under a
``torch.distributed`` group of several ranks (:class:`recpipe.train.distributed.GradientSync` averages the
embedding gradient after backward) and ``"on"`` is refused there; ``after_backward`` callbacks see no embedding
``grad``; the embedding step happens before them and before dense gradient clipping (which never covered the
embeddings).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from recpipe.modules.embedding import EmbeddingCollection
from recpipe.ops import embedding_bag as tbe
from recpipe.ops import load_cuda_kernels
from recpipe.train.optim import Optimizers, RowWiseAdagrad, SparseSGD

logger = logging.getLogger(__name__)

FUSED_MODES = ("auto", "on", "off")
_CUDA_MAX_CHUNKS = 4
"""The CUDA backward keeps a row in registers: D <= 4 chunks x 32 lanes x vector width (cuda/embedding_bag.cu)."""


def cuda_dim_supported(dim: int, dtype: torch.dtype) -> bool:
    """Whether the CUDA fused backward takes rows of ``dim`` values of ``dtype`` (512 fp32 / 1024 fp16 and bf16
    when D is a multiple of the 16-byte vector width, 128 otherwise)."""
    vec = 16 // torch.empty((), dtype=dtype).element_size()
    width = vec if dim % vec == 0 else 1
    return dim <= _CUDA_MAX_CHUNKS * 32 * width


def _collections(model: nn.Module) -> list[EmbeddingCollection]:
    return [m for m in model.modules() if isinstance(m, EmbeddingCollection) and m.weight.requires_grad]


def _multi_rank() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def fused_update_enabled(mode: str, model: nn.Module, device: torch.device) -> bool:
    """Resolves ``TrainConfig.fused_embedding_update`` for a model on ``device`` (module docstring).

    Raises:
        ValueError: an unknown mode, or ``"on"`` under a multi-rank ``torch.distributed`` group.
    """
    if mode not in FUSED_MODES:
        raise ValueError(f"fused_embedding_update: {mode!r} not in {FUSED_MODES}")
    if mode == "off":
        return False
    if mode == "on":
        if _multi_rank():
            raise ValueError("fused_embedding_update='on' cannot be used with several torch.distributed ranks: "
                             "the embedding gradient must be averaged across ranks before the update")
        return True
    if device.type != "cuda" or _multi_rank() or not load_cuda_kernels():
        return False
    tables = _collections(model)
    unfit = [m for m in tables if not cuda_dim_supported(m.embedding_dim, m.weight.dtype)]
    if unfit:
        logger.info("fused embedding update off: D=%d (%s) is beyond the CUDA fused backward",
                    unfit[0].embedding_dim, unfit[0].weight.dtype)
        return False
    return bool(tables)


def _group_of(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict[str, Any]:
    for group in opt.param_groups:
        if any(q is p for q in group["params"]):
            return group
    raise ValueError("fused embedding update: the embedding weight is not managed by the sparse optimizer "
                     "(was it replaced without Optimizers.replace_embedding?)")


class FusedRowUpdate:
    """``EmbeddingCollection.fused_update`` that applies one step of ``optimizers.sparse`` inside backward.

    Args:
        optimizers: the trainer's :class:`Optimizers`; its sparse optimizer (looked up at every call, so a
            reloaded or regrouped optimizer is followed) must be :class:`RowWiseAdagrad` or :class:`SparseSGD`.
    """

    def __init__(self, optimizers: Optimizers) -> None:
        self.optimizers = optimizers

    @torch.no_grad()
    def __call__(self, weight: nn.Parameter, grad_output: torch.Tensor, table_offsets: torch.Tensor,
                 indices: torch.Tensor, offsets: torch.Tensor, pooling: int) -> None:
        """Steps the rows of ``weight`` (R, D) touched by the batch, from the pooled gradient (B, F, D)."""
        opt = self.optimizers.sparse
        if opt is None:
            raise ValueError("fused embedding update: the trainer has no sparse optimizer")
        group = _group_of(opt, weight)
        if isinstance(opt, RowWiseAdagrad):
            st = opt.row_state(weight, group["initial_accumulator_value"])
            tbe.apply_fused_update(weight.detach(), st["sum"], grad_output, table_offsets, indices, offsets,
                                   pooling, tbe.RowwiseAdagrad(lr=group["lr"], eps=group["eps"]))
            st["step"] += 1
        elif isinstance(opt, SparseSGD):
            tbe.apply_fused_update(weight.detach(), None, grad_output, table_offsets, indices, offsets, pooling,
                                   tbe.SGD(lr=group["lr"]))
        else:
            raise TypeError(f"fused embedding update: no fused kernel for {type(opt).__name__}")


def attach_fused_updates(model: nn.Module, optimizers: Optimizers, mode: str, device: torch.device) -> bool:
    """Sets (or clears) ``fused_update`` on every trainable :class:`EmbeddingCollection` of ``model``.

    Args:
        model: the model being trained.
        optimizers: the trainer's optimizers (the weight stays in ``optimizers.sparse`` for its state).
        mode: ``"auto"``, ``"on"`` or ``"off"`` (module docstring).
        device: where the model lives.

    Returns:
        Whether the fused path is on.
    """
    on = fused_update_enabled(mode, model, device) and optimizers.sparse is not None
    update = FusedRowUpdate(optimizers) if on else None
    for m in _collections(model):
        m.fused_update = update
    if on:
        logger.info("embedding optimizer runs inside backward (%s, fused)", type(optimizers.sparse).__name__)
    return on
