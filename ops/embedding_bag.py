"""Table-batched embedding bags: forward, row gradients and fused backward + optimizer ("optimizer in backward").

All F tables live in ONE flat weight (R, D), R = sum of the tables' rows; table f owns rows
``table_offsets[f] : table_offsets[f + 1]``. Lookups use the Batch TBE layout (feature-major)::

    bag (f, b) = indices[offsets[f * B + b] : offsets[f * B + b + 1]]     ids local to table f

so a single launch serves every table. Pooling: 0 = sum, 1 = mean (an empty bag gives zeros).

Ops on the ``recpipe`` namespace (CPU reference kernels here, CUDA kernels in ``cuda/embedding_bag.cu``):

* ``embedding_bag_forward(weight, table_offsets, indices, offsets, pooling) -> (B, F, D)`` in weight's dtype,
  accumulated in float32 (float64 for float64 weights). Differentiable w.r.t. ``weight``: the gradient is a
  sparse COO tensor holding only the touched rows (built from ``embedding_bag_row_grad``).
* ``embedding_bag_row_grad(grad_output, table_offsets, indices, offsets, pooling) -> (rows (U,), grads (U, D))``:
  the weight gradient as sorted unique global rows and their summed float32 gradients.
* ``embedding_bag_backward_sgd_(weight!, grad_output, ..., lr)`` and
  ``embedding_bag_backward_rowwise_adagrad_(weight!, state!, grad_output, ..., lr, eps)``: the fused
  backward: per touched row, g = sum of that row's gradients; SGD does ``w -= lr * g``; row-wise Adagrad does
  ``state += mean_D(g ** 2); w -= lr * g / (sqrt(state) + eps)`` (one float32 state per row). No dense table
  gradient is ever built. Duplicates are reduced after a STABLE sort by row, so the sum for a row is taken in
  a fixed order and results are identical run to run.

Validation: the CPU kernels check every value and raise errors naming the position/feature/table; the CUDA
kernels check shapes and dtypes on the host and ids / table bounds with device-side asserts (a bad id aborts
the CUDA context), and trust that ``offsets`` is non-decreasing from 0 to len(indices) (checking it would cost
a device synchronisation per call). The CUDA backward keeps a whole row in registers: D <= 512 for float32
rows with D % 4 == 0 (1024 for fp16/bf16 with D % 8 == 0, 128 otherwise).

Optimizer in backward (how a trainer uses it): build a :class:`FusedEmbeddingBag` over the flat weight, call
it in the model's forward instead of ``F.embedding_bag`` and run ``loss.backward()`` as usual: the backward
updates the weight and the row-wise state in place, so the embedding weight must NOT also be given to a
torch optimizer (give it ``requires_grad=False``; the module carries a zero-size ``trigger`` parameter that
keeps autograd reaching the update)::

    fused = FusedEmbeddingBag(weight, table_offsets, optimizer=RowwiseAdagrad(lr=0.05))
    pooled = fused(batch.indices, batch.offsets)          # (B, F, D)
    loss = head(pooled).mean(); loss.backward()           # embedding rows updated here
    dense_optimizer.step()                                # the dense parameters only

Each backward applies exactly one optimizer step to the embeddings, so call the fused module once per step
(no gradient accumulation over micro-batches). The fused module runs eagerly (its backward has side effects;
keep it outside ``torch.compile`` regions); the ops themselves compile with ``fullgraph=True``. The CUDA
update casts grad_output to the weight's dtype before summing (fp32 accumulation from there on).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from recpipe.ops._build import cuda_kernels_loaded, load_cuda_kernels
from recpipe.ops._lib import LIB

POOLING_SUM = 0
POOLING_MEAN = 1
_POOLINGS = (POOLING_SUM, POOLING_MEAN)
_INDEX_DTYPES = (torch.int32, torch.int64)

_ARGS = "Tensor table_offsets, Tensor indices, Tensor offsets, int pooling"
LIB.define(f"embedding_bag_forward(Tensor weight, {_ARGS}) -> Tensor")
LIB.define(f"embedding_bag_row_grad(Tensor grad_output, {_ARGS}) -> (Tensor, Tensor)")
LIB.define(f"embedding_bag_backward_sgd_(Tensor(a!) weight, Tensor grad_output, {_ARGS}, float lr) -> ()")
LIB.define(
    f"embedding_bag_backward_rowwise_adagrad_(Tensor(a!) weight, Tensor(b!) state, Tensor grad_output, {_ARGS}, "
    "float lr, float eps) -> ()"
)


# --------------------------------------------------------------------------------------------- validation
def _check_layout(table_offsets: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, pooling: int
                  ) -> tuple[int, int]:
    """Checks the TBE arguments' ranks/dtypes and returns (F, B)."""
    if pooling not in _POOLINGS:
        raise ValueError(f"embedding_bag: pooling must be 0 (sum) or 1 (mean), got {pooling}")
    if table_offsets.dim() != 1 or table_offsets.numel() < 2:
        raise ValueError(f"embedding_bag: table_offsets must be (F + 1,) with F >= 1, got {tuple(table_offsets.shape)}")
    if indices.dim() != 1 or offsets.dim() != 1:
        raise ValueError(f"embedding_bag: indices and offsets must be 1-D, got {tuple(indices.shape)} and "
                         f"{tuple(offsets.shape)}")
    for name, t in (("table_offsets", table_offsets), ("indices", indices), ("offsets", offsets)):
        if t.dtype not in _INDEX_DTYPES:
            raise ValueError(f"embedding_bag: {name} must be int32 or int64, got {t.dtype}")
    num_tables = table_offsets.numel() - 1
    if offsets.numel() < 1 or (offsets.numel() - 1) % num_tables:
        raise ValueError(f"embedding_bag: offsets must have F * B + 1 entries with F = {num_tables}, "
                         f"got {offsets.numel()}")
    return num_tables, (offsets.numel() - 1) // num_tables


def _check_values(weight_rows: int, table_offsets: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor
                  ) -> None:
    """Value checks of the CPU reference (costly on a device, so CUDA kernels assert instead)."""
    if int(table_offsets[0]) != 0 or int(table_offsets[-1]) != weight_rows:
        raise ValueError(f"embedding_bag: table_offsets must run from 0 to the weight's {weight_rows} rows, "
                         f"got {int(table_offsets[0])}..{int(table_offsets[-1])}")
    if bool((table_offsets[1:] < table_offsets[:-1]).any()):
        raise ValueError("embedding_bag: table_offsets must be non-decreasing")
    if int(offsets[0]) != 0 or int(offsets[-1]) != indices.numel():
        raise ValueError(f"embedding_bag: offsets must run from 0 to len(indices) = {indices.numel()}, "
                         f"got {int(offsets[0])}..{int(offsets[-1])}")
    if bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError("embedding_bag: offsets must be non-decreasing")


def _global_rows(table_offsets: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, batch: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maps every index to its global weight row.

    Returns:
        rows: (T,) int64 global rows. bag: (T,) int64 bag id f * B + b of each index. lengths: (F * B,) int64.
    """
    offsets = offsets.long()
    lengths = offsets[1:] - offsets[:-1]  # (F * B,)
    num_bags = lengths.numel()
    bag = torch.repeat_interleave(torch.arange(num_bags, device=indices.device), lengths)  # (T,)
    table = bag // batch if batch else bag
    table_offsets = table_offsets.long()
    sizes = table_offsets[1:] - table_offsets[:-1]  # (F,)
    local = indices.long()
    bad = (local < 0) | (local >= sizes[table])
    if bool(bad.any()):
        pos = int(bad.nonzero()[0, 0])
        f = int(table[pos])
        raise IndexError(f"embedding_bag: index {int(local[pos])} at position {pos} (feature {f}) is outside "
                         f"table {f} of {int(sizes[f])} rows")
    return table_offsets[table] + local, bag, lengths


def _bag_scale(lengths: torch.Tensor, pooling: int, dtype: torch.dtype) -> torch.Tensor:
    """(F * B,) multiplier of each bag: 1 for sum, 1 / max(len, 1) for mean."""
    if pooling == POOLING_SUM:
        return torch.ones(lengths.shape, dtype=dtype, device=lengths.device)
    return 1.0 / lengths.clamp(min=1).to(dtype)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------- forward
@torch.library.register_kernel("recpipe::embedding_bag_forward", "cpu")
def _forward_cpu(weight: torch.Tensor, table_offsets: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                 pooling: int) -> torch.Tensor:
    num_tables, batch = _check_layout(table_offsets, indices, offsets, pooling)
    if weight.dim() != 2:
        raise ValueError(f"embedding_bag_forward: weight must be (R, D), got {tuple(weight.shape)}")
    _check_values(weight.shape[0], table_offsets, indices, offsets)
    dim = weight.shape[1]
    acc = _acc_dtype(weight.dtype)
    rows, bag, lengths = _global_rows(table_offsets, indices, offsets, batch)
    pooled = torch.zeros(num_tables * batch, dim, dtype=acc)  # (F * B, D)
    pooled.index_add_(0, bag, weight.index_select(0, rows).to(acc))
    pooled *= _bag_scale(lengths, pooling, acc)[:, None]
    out = pooled.view(num_tables, batch, dim).transpose(0, 1)  # (B, F, D)
    return out.contiguous().to(weight.dtype)


@torch.library.register_fake("recpipe::embedding_bag_forward")
def _forward_fake(weight, table_offsets, indices, offsets, pooling):
    num_tables, batch = _check_layout(table_offsets, indices, offsets, pooling)
    return weight.new_empty(batch, num_tables, weight.shape[1])


# --------------------------------------------------------------------------------------------- row gradient
def _per_index_grad(grad_output: torch.Tensor, bag: torch.Tensor, lengths: torch.Tensor, pooling: int,
                    acc: torch.dtype) -> torch.Tensor:
    """(T, D) gradient reaching each looked-up row: grad_output of its bag times the bag's pooling scale."""
    batch, num_tables, dim = grad_output.shape
    per_bag = grad_output.to(acc).transpose(0, 1).reshape(num_tables * batch, dim)  # (F * B, D)
    per_bag = per_bag * _bag_scale(lengths, pooling, acc)[:, None]
    return per_bag.index_select(0, bag)  # (T, D)


def _check_grad(grad_output: torch.Tensor, num_tables: int, batch: int) -> None:
    if grad_output.dim() != 3 or grad_output.shape[0] != batch or grad_output.shape[1] != num_tables:
        raise ValueError(f"embedding_bag: grad_output must be (B={batch}, F={num_tables}, D), "
                         f"got {tuple(grad_output.shape)}")


def _reference_row_grad(grad_output, table_offsets, indices, offsets, pooling):
    """Sorted unique rows (U,) and their float32 (float64 for float64 grads) summed gradients (U, D)."""
    num_tables, batch = _check_layout(table_offsets, indices, offsets, pooling)
    _check_grad(grad_output, num_tables, batch)
    _check_values(int(table_offsets[-1]), table_offsets, indices, offsets)
    acc = _acc_dtype(grad_output.dtype)
    rows, bag, lengths = _global_rows(table_offsets, indices, offsets, batch)
    per_index = _per_index_grad(grad_output, bag, lengths, pooling, acc)  # (T, D)
    sorted_rows, order = torch.sort(rows, stable=True)
    unique, inverse = torch.unique_consecutive(sorted_rows, return_inverse=True)
    grads = torch.zeros(unique.numel(), grad_output.shape[2], dtype=acc, device=grad_output.device)
    grads.index_add_(0, inverse, per_index.index_select(0, order))  # (U, D), summed in sorted (stable) order
    return unique, grads


@torch.library.register_kernel("recpipe::embedding_bag_row_grad", "cpu")
def _row_grad_cpu(grad_output, table_offsets, indices, offsets, pooling):
    return _reference_row_grad(grad_output, table_offsets, indices, offsets, pooling)


@torch.library.register_fake("recpipe::embedding_bag_row_grad")
def _row_grad_fake(grad_output, table_offsets, indices, offsets, pooling):
    _check_layout(table_offsets, indices, offsets, pooling)
    unique = torch.library.get_ctx().new_dynamic_size()
    acc = _acc_dtype(grad_output.dtype)
    return (indices.new_empty(unique, dtype=torch.int64),
            grad_output.new_empty(unique, grad_output.shape[2], dtype=acc))


# --------------------------------------------------------------------------------------------- fused updates
def _check_update(weight: torch.Tensor, grad_output: torch.Tensor, table_offsets: torch.Tensor) -> None:
    if weight.dim() != 2 or grad_output.dim() != 3 or weight.shape[1] != grad_output.shape[2]:
        raise ValueError(f"embedding_bag update: weight (R, D) and grad_output (B, F, D) disagree: "
                         f"{tuple(weight.shape)} vs {tuple(grad_output.shape)}")
    if int(table_offsets[-1]) != weight.shape[0]:
        raise ValueError(f"embedding_bag update: table_offsets end at {int(table_offsets[-1])}, "
                         f"weight has {weight.shape[0]} rows")


@torch.library.register_kernel("recpipe::embedding_bag_backward_sgd_", "cpu")
def _sgd_cpu(weight, grad_output, table_offsets, indices, offsets, pooling, lr):
    _check_update(weight, grad_output, table_offsets)
    rows, grads = _reference_row_grad(grad_output, table_offsets, indices, offsets, pooling)
    acc = _acc_dtype(weight.dtype)
    new = weight.index_select(0, rows).to(acc) - lr * grads.to(acc)  # (U, D)
    weight.index_copy_(0, rows, new.to(weight.dtype))


@torch.library.register_kernel("recpipe::embedding_bag_backward_rowwise_adagrad_", "cpu")
def _adagrad_cpu(weight, state, grad_output, table_offsets, indices, offsets, pooling, lr, eps):
    _check_update(weight, grad_output, table_offsets)
    if state.shape != (weight.shape[0],) or state.dtype != torch.float32:
        raise ValueError(f"embedding_bag rowwise_adagrad: state must be float32 ({weight.shape[0]},), "
                         f"got {state.dtype} {tuple(state.shape)}")
    rows, grads = _reference_row_grad(grad_output, table_offsets, indices, offsets, pooling)
    acc = _acc_dtype(weight.dtype)
    grads = grads.to(acc)
    new_state = state.index_select(0, rows) + grads.pow(2).mean(dim=1).to(torch.float32)  # (U,)
    state.index_copy_(0, rows, new_state)
    step = lr / (new_state.to(acc).sqrt() + eps)  # (U,)
    new = weight.index_select(0, rows).to(acc) - step[:, None] * grads  # (U, D)
    weight.index_copy_(0, rows, new.to(weight.dtype))


@torch.library.register_fake("recpipe::embedding_bag_backward_sgd_")
def _sgd_fake(weight, grad_output, table_offsets, indices, offsets, pooling, lr):
    _check_layout(table_offsets, indices, offsets, pooling)


@torch.library.register_fake("recpipe::embedding_bag_backward_rowwise_adagrad_")
def _adagrad_fake(weight, state, grad_output, table_offsets, indices, offsets, pooling, lr, eps):
    _check_layout(table_offsets, indices, offsets, pooling)


# --------------------------------------------------------------------------------------------- autograd
def _setup_context(ctx, inputs, output):
    weight, table_offsets, indices, offsets, pooling = inputs
    ctx.save_for_backward(table_offsets, indices, offsets)
    ctx.pooling = pooling
    ctx.weight_shape = weight.shape
    ctx.weight_dtype = weight.dtype


def _backward(ctx, grad_output):
    table_offsets, indices, offsets = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    rows, grads = torch.ops.recpipe.embedding_bag_row_grad(
        grad_output.contiguous(), table_offsets, indices, offsets, ctx.pooling)
    grad_weight = torch.sparse_coo_tensor(rows[None], grads.to(ctx.weight_dtype), ctx.weight_shape,
                                          is_coalesced=True, check_invariants=False)
    return grad_weight, None, None, None, None


torch.library.register_autograd("recpipe::embedding_bag_forward", _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------- public API
def _ensure_kernels(t: torch.Tensor) -> None:
    """Builds/loads the CUDA kernels on first use with a CUDA tensor; raises with the build error otherwise."""
    if t.is_cuda and not torch.compiler.is_compiling() and not cuda_kernels_loaded():
        if not load_cuda_kernels():
            raise RuntimeError("recpipe CUDA kernels are not available (see the logged build error); "
                               "move the tensors to the CPU or fix the build")


def embedding_bag(weight: torch.Tensor, table_offsets: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                  pooling: int = POOLING_SUM) -> torch.Tensor:
    """Pools the bags of all F tables in one call.

    Args:
        weight: (R, D) float32/float16/bfloat16/float64 flat weight of all tables.
        table_offsets: (F + 1,) int first row of each table in ``weight``; the last entry is R.
        indices: (T,) int32/int64 ids local to each bag's table.
        offsets: (F * B + 1,) int bag boundaries, feature-major (``recpipe.data.batch.Batch`` layout).
        pooling: 0 sum, 1 mean (empty bags give zeros).

    Returns:
        (B, F, D) pooled embeddings in weight's dtype (accumulated in float32). Differentiable w.r.t.
        ``weight`` with a sparse COO gradient of the touched rows.
    """
    _ensure_kernels(weight)
    return torch.ops.recpipe.embedding_bag_forward(weight, table_offsets, indices, offsets, pooling)


def embedding_bag_row_grad(grad_output: torch.Tensor, table_offsets: torch.Tensor, indices: torch.Tensor,
                           offsets: torch.Tensor, pooling: int = POOLING_SUM) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight gradient of :func:`embedding_bag` as rows.

    Args:
        grad_output: (B, F, D) gradient of the pooled output.
        table_offsets, indices, offsets, pooling: as in :func:`embedding_bag`.

    Returns:
        rows: (U,) int64 sorted unique global rows. grads: (U, D) float32 summed gradient of each row.
    """
    _ensure_kernels(grad_output)
    return torch.ops.recpipe.embedding_bag_row_grad(grad_output, table_offsets, indices, offsets, pooling)


@dataclass(frozen=True)
class SGD:
    """Plain SGD on the touched rows: ``w -= lr * g``."""

    lr: float = 0.01


@dataclass(frozen=True)
class RowwiseAdagrad:
    """Row-wise Adagrad: ``state += mean_D(g**2); w -= lr * g / (sqrt(state) + eps)``; one float32 per row."""

    lr: float = 0.01
    eps: float = 1e-8


def apply_fused_update(weight: torch.Tensor, state: torch.Tensor | None, grad_output: torch.Tensor,
                       table_offsets: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, pooling: int,
                       optimizer: SGD | RowwiseAdagrad) -> None:
    """Applies one optimizer step to the rows touched by a batch, in place, from the pooled gradient.

    Args:
        weight: (R, D) flat weight, updated in place.
        state: (R,) float32 row-wise Adagrad state (updated in place); ignored (may be None) for SGD.
        grad_output: (B, F, D) gradient of the pooled output.
        table_offsets, indices, offsets, pooling: as in :func:`embedding_bag`.
        optimizer: :class:`SGD` or :class:`RowwiseAdagrad`.
    """
    _ensure_kernels(weight)
    grad_output = grad_output.contiguous()
    if isinstance(optimizer, RowwiseAdagrad):
        if state is None:
            raise ValueError("apply_fused_update: RowwiseAdagrad needs a (R,) float32 state")
        torch.ops.recpipe.embedding_bag_backward_rowwise_adagrad_(
            weight, state, grad_output, table_offsets, indices, offsets, pooling, optimizer.lr, optimizer.eps)
    elif isinstance(optimizer, SGD):
        torch.ops.recpipe.embedding_bag_backward_sgd_(
            weight, grad_output, table_offsets, indices, offsets, pooling, optimizer.lr)
    else:
        raise TypeError(f"apply_fused_update: unknown optimizer {optimizer!r}")


class _FusedFunction(torch.autograd.Function):
    """Forward = pooled lookup; backward = fused optimizer step on the weight (no gradient returned)."""

    @staticmethod
    def forward(ctx, trigger, weight, state, table_offsets, indices, offsets, pooling, optimizer):
        del trigger  # only there so that autograd reaches backward
        ctx.save_for_backward(table_offsets, indices, offsets)
        ctx.weight, ctx.state, ctx.pooling, ctx.optimizer = weight, state, pooling, optimizer
        return torch.ops.recpipe.embedding_bag_forward(weight, table_offsets, indices, offsets, pooling)

    @staticmethod
    def backward(ctx, grad_output):
        table_offsets, indices, offsets = ctx.saved_tensors
        apply_fused_update(ctx.weight, ctx.state, grad_output, table_offsets, indices, offsets, ctx.pooling,
                           ctx.optimizer)
        return (None,) * 8


class FusedEmbeddingBag(torch.nn.Module):
    """Table-batched embedding bags whose backward applies the optimizer step in place.

    Args:
        weight: (R, D) flat weight of all tables (registered as a buffer-like parameter without grad).
        table_offsets: (F + 1,) first row of each table; the last entry is R.
        optimizer: :class:`RowwiseAdagrad` (default) or :class:`SGD`.
        pooling: 0 sum, 1 mean.
    """

    def __init__(self, weight: torch.Tensor, table_offsets: torch.Tensor,
                 optimizer: SGD | RowwiseAdagrad | None = None, pooling: int = POOLING_SUM) -> None:
        super().__init__()
        self.optimizer = optimizer if optimizer is not None else RowwiseAdagrad()
        self.pooling = pooling
        self.weight = torch.nn.Parameter(weight.detach(), requires_grad=False)
        self.register_buffer("table_offsets", table_offsets.detach().to(weight.device, torch.int64))
        self.register_buffer("state", torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device))
        self.trigger = torch.nn.Parameter(torch.zeros(0, device=weight.device))

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """(T,) ids and (F * B + 1,) offsets -> (B, F, D); backward updates ``weight``/``state`` in place."""
        _ensure_kernels(self.weight)
        if not torch.is_grad_enabled():
            return torch.ops.recpipe.embedding_bag_forward(self.weight, self.table_offsets, indices, offsets,
                                                           self.pooling)
        return _FusedFunction.apply(self.trigger, self.weight, self.state, self.table_offsets, indices, offsets,
                                    self.pooling, self.optimizer)
