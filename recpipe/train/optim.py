"""Optimizers: a dense one (Adam / Adagrad) for MLP and interaction weights, a sparse ROW-WISE Adagrad for
embedding tables.

Row-wise Adagrad (as in FBGEMM's ``rowwise_adagrad`` and DLRM) keeps ONE float32 accumulator per embedding row
instead of one per element — D times less state — and only touches the rows a batch used::

    g   = sum of the gradients of row r in this batch          (duplicates summed first)
    s_r += mean_D(g ** 2)
    w_r -= lr * g / (sqrt(s_r) + eps)

Rows absent from the batch are untouched (weight AND state).
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from recpipe.config import JsonConfig
from recpipe.modules.embedding import EmbeddingCollection, remap_rows

logger = logging.getLogger(__name__)

DENSE_OPTIMIZERS = ("adam", "adagrad", "sgd")
SPARSE_OPTIMIZERS = ("rowwise_adagrad", "sgd")


@dataclass(frozen=True)
class OptimConfig(JsonConfig):
    """Optimizer choices.

    Attributes:
        dense: ``"adam"``, ``"adagrad"`` or ``"sgd"`` for every non-embedding parameter.
        dense_lr: its learning rate.
        dense_weight_decay: L2 on dense parameters (embeddings never decay).
        sparse: ``"rowwise_adagrad"`` or ``"sgd"`` for embedding tables.
        sparse_lr: its learning rate.
        eps: Adagrad/Adam epsilon (both optimizers).
    """

    dense: str = "adam"
    dense_lr: float = 1e-3
    dense_weight_decay: float = 0.0
    sparse: str = "rowwise_adagrad"
    sparse_lr: float = 0.05
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.dense not in DENSE_OPTIMIZERS:
            raise ValueError(f"OptimConfig.dense: {self.dense!r} not in {DENSE_OPTIMIZERS}")
        if self.sparse not in SPARSE_OPTIMIZERS:
            raise ValueError(f"OptimConfig.sparse: {self.sparse!r} not in {SPARSE_OPTIMIZERS}")
        for name in ("dense_lr", "sparse_lr", "eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"OptimConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.dense_weight_decay < 0:
            raise ValueError(f"OptimConfig.dense_weight_decay must be >= 0, got {self.dense_weight_decay}")


def _rows_and_values(grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(U,) touched rows (None = all rows) and (U, D) their summed gradients, duplicates coalesced."""
    if grad.is_sparse:
        g = grad.coalesce()  # sums duplicate rows; rows come out sorted, so the result is deterministic
        return g.indices()[0], g.values()
    return None, grad


class RowSparseOptimizer(torch.optim.Optimizer, abc.ABC):
    """Base of the embedding optimizers: the ``step`` scaffolding (closure, skipping parameters without a
    gradient, coalescing sparse gradients) around a per-parameter :meth:`update`."""

    @abc.abstractmethod
    def update(self, p: torch.Tensor, rows: torch.Tensor | None, g: torch.Tensor, group: dict[str, Any]) -> None:
        """Updates one parameter in place.

        Args:
            p: (R, D) the parameter.
            rows: (U,) unique touched rows, ascending; None = every row (dense gradient).
            g: (U, D) summed gradient of each touched row ((R, D) when ``rows`` is None).
            group: the parameter's group (hyper-parameters).
        """

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: D401 - torch API
        """Applies one update to every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    rows, g = _rows_and_values(p.grad)  # (U,), (U, D)
                    self.update(p, rows, g, group)
        return loss


class RowWiseAdagrad(RowSparseOptimizer):
    """Row-wise Adagrad for 2-D embedding weights (R, D); accepts sparse (preferred) or dense gradients.

    With a dense gradient every row is updated, which is numerically the same as the sparse path for rows
    whose gradient is zero (their accumulator gains 0 and they move by 0).

    State per parameter: ``sum`` (R,) float32 accumulator, ``step`` count.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 0.05, eps: float = 1e-8,
                 initial_accumulator_value: float = 0.0) -> None:
        if lr <= 0 or eps <= 0 or initial_accumulator_value < 0:
            raise ValueError(f"RowWiseAdagrad: need lr > 0, eps > 0, initial value >= 0 (got {lr}, {eps}, "
                             f"{initial_accumulator_value})")
        super().__init__(params, {"lr": lr, "eps": eps, "initial_accumulator_value": initial_accumulator_value})
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"RowWiseAdagrad: parameters must be (R, D), got {tuple(p.shape)}")

    def row_state(self, p: torch.Tensor, init: float) -> dict[str, Any]:
        """``p``'s state ``{"sum": (R,) float32, "step": int}``, created with accumulator ``init`` on first use
        (also used by the optimizer-in-backward path, ``recpipe.train.fused``, so both keep one layout)."""
        st = self.state[p]
        if not st:
            st["sum"] = torch.full((p.shape[0],), init, dtype=torch.float32, device=p.device)
            st["step"] = 0
        return st

    def update(self, p: torch.Tensor, rows: torch.Tensor | None, g: torch.Tensor, group: dict[str, Any]) -> None:
        lr, eps = group["lr"], group["eps"]
        st = self.row_state(p, group["initial_accumulator_value"])
        g32 = g.float()
        if rows is None:
            st["sum"].add_(g32.pow(2).mean(dim=1))
            denom = st["sum"].sqrt().add_(eps)  # (R,)
            p.sub_((lr * g32 / denom[:, None]).to(p.dtype))
        else:
            acc = st["sum"].index_select(0, rows) + g32.pow(2).mean(dim=1)  # (U,)
            st["sum"].index_copy_(0, rows, acc)
            # rows are unique after coalesce, so index_add_ of -update == w_r - update exactly
            p.index_add_(0, rows, (-lr * g32 / (acc.sqrt() + eps)[:, None]).to(p.dtype))
        st["step"] += 1


class SparseSGD(RowSparseOptimizer):
    """Plain SGD that keeps sparse gradients sparse (only touched rows move): ``w_r -= lr * g_r``."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 0.01) -> None:
        if lr <= 0:
            raise ValueError(f"SparseSGD: lr must be > 0, got {lr}")
        super().__init__(params, {"lr": lr})

    def update(self, p: torch.Tensor, rows: torch.Tensor | None, g: torch.Tensor, group: dict[str, Any]) -> None:
        if rows is None:
            p.sub_(g, alpha=group["lr"])
        else:
            p.index_add_(0, rows, g.to(p.dtype), alpha=-group["lr"])


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(dense, sparse) trainable parameters: ``sparse`` = every :class:`EmbeddingCollection` weight."""
    sparse: list[nn.Parameter] = [m.weight for m in model.modules()
                                  if isinstance(m, EmbeddingCollection) and m.weight.requires_grad]
    ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return dense, sparse


class Optimizers:
    """The dense and the sparse optimizer of one model, stepped, zeroed and saved together.

    Attributes:
        dense: optimizer of the non-embedding parameters (None if there are none).
        sparse: optimizer of the embedding weights (None if there are none).
    """

    def __init__(self, model: nn.Module, cfg: OptimConfig) -> None:
        self.cfg = cfg
        dense, sparse = split_parameters(model)
        self.dense_params = dense
        self.dense: torch.optim.Optimizer | None = None
        self.sparse: torch.optim.Optimizer | None = None
        if dense:
            if cfg.dense == "adam":
                self.dense = torch.optim.Adam(dense, lr=cfg.dense_lr, eps=cfg.eps, weight_decay=cfg.dense_weight_decay)
            elif cfg.dense == "adagrad":
                self.dense = torch.optim.Adagrad(dense, lr=cfg.dense_lr, eps=cfg.eps,
                                                 weight_decay=cfg.dense_weight_decay)
            else:
                self.dense = torch.optim.SGD(dense, lr=cfg.dense_lr, weight_decay=cfg.dense_weight_decay)
        if sparse:
            if cfg.sparse == "rowwise_adagrad":
                self.sparse = RowWiseAdagrad(sparse, lr=cfg.sparse_lr, eps=cfg.eps)
            else:
                self.sparse = SparseSGD(sparse, lr=cfg.sparse_lr)

    def _all(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.dense, self.sparse) if o is not None]

    def zero_grad(self) -> None:
        """Drops every gradient (``set_to_none``), so sparse gradients never accumulate across steps."""
        for o in self._all():
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        """Steps the dense, then the sparse optimizer."""
        for o in self._all():
            o.step()

    def state_dict(self) -> dict[str, Any]:
        """``{"dense": state or None, "sparse": state or None}``."""
        return {"dense": self.dense.state_dict() if self.dense is not None else None,
                "sparse": self.sparse.state_dict() if self.sparse is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`; the model must have the same parameter groups."""
        for key, opt in (("dense", self.dense), ("sparse", self.sparse)):
            saved = state.get(key)
            if (saved is None) != (opt is None):
                raise ValueError(f"optimizer state: {key!r} optimizer is "
                                 f"{'missing' if saved is None else 'present'} in the checkpoint but the model "
                                 f"{'has' if opt is not None else 'has no'} {key} parameters")
            if opt is not None:
                opt.load_state_dict(saved)

    def replace_embedding(self, old: nn.Parameter, new: nn.Parameter, old_sizes: Sequence[int],
                          new_sizes: Sequence[int]) -> None:
        """Points the sparse optimizer at a grown embedding weight, moving per-row state with its rows.

        Appended rows start with a zero accumulator (a fresh row, as if never seen).
        """
        if self.sparse is None:
            raise ValueError("replace_embedding: no sparse optimizer")
        for group in self.sparse.param_groups:
            for i, p in enumerate(group["params"]):
                if p is old:
                    group["params"][i] = new
                    st = self.sparse.state.pop(old, None)
                    if st:
                        if "sum" in st:
                            st["sum"] = remap_rows(st["sum"], old_sizes, new_sizes, 0.0)
                        self.sparse.state[new] = st
                    return
        raise ValueError("replace_embedding: the old weight is not managed by the sparse optimizer")
