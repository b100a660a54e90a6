"""Mask arithmetic of :mod:`recpipe.train.pruning`: the cubic schedule, the choice of prunable layers, the
layer-normalised scores and the global-threshold masks (pure functions of tensors, no training state)."""
from __future__ import annotations

import math
import re
from typing import Mapping

import torch
from torch import nn

RMS_EPS = 1e-12
"""Guards the RMS normalisation of an all-zero layer (its scores are then all zero, not NaN)."""


def scheduled_sparsity(step: int, target: float, start_step: int, end_step: int) -> float:
    """The cubic ramp: sparsity wanted after ``step`` optimizer steps.

    Args:
        step: optimizer steps done so far.
        target: final sparsity ``s_f``.
        start_step: ``t0``; 0 sparsity at and before it.
        end_step: ``t1``; ``s_f`` at and after it (a zero-length ramp jumps at ``t0``).

    Returns:
        ``0`` for ``step <= t0``, ``s_f * (1 - (1 - (step - t0)/(t1 - t0))**3)`` inside, ``s_f`` after.
    """
    if step < start_step or (step == start_step and end_step > start_step):
        return 0.0
    if step >= end_step:
        return float(target)
    frac = (step - start_step) / (end_step - start_step)
    return float(target) * (1.0 - (1.0 - frac) ** 3)


def select_prunable(model: nn.Module, include: tuple[str, ...] = (),
                    exclude: tuple[str, ...] = ()) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules to prune, by module name, in registration order.

    Embedding tables are never ``nn.Linear`` and so are never selected.

    Raises:
        ValueError: when nothing matches (the message lists the Linear modules that exist).
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    chosen = {n: m for n, m in linears.items()
              if (not include or any(re.search(p, n) for p in include))
              and not any(re.search(p, n) for p in exclude)}
    if not chosen:
        raise ValueError(f"pruning: no nn.Linear matches include={list(include)} exclude={list(exclude)}; "
                         f"Linear modules: {sorted(linears)}")
    return chosen


def layer_scores(weight: torch.Tensor, normalize: str) -> torch.Tensor:
    """Importance scores of one layer's weights.

    Args:
        weight: (O, I) dense (shadow) weights.
        normalize: ``"rms"`` divides |w| by the layer's root-mean-square, ``"none"`` keeps |w|.

    Returns:
        (O, I) non-negative float32 scores comparable across layers.
    """
    a = weight.detach().abs().float()
    if normalize == "rms":
        a = a / a.pow(2).mean().sqrt().clamp_min(RMS_EPS)
    return a


def compute_masks(weights: Mapping[str, torch.Tensor], sparsity: float, *, normalize: str = "rms",
                  min_layer_density: float = 0.0,
                  allowed: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Global-threshold masks: exactly ``round((1 - sparsity) * total)`` weights kept across all layers.

    Each layer first keeps its ``ceil(min_layer_density * n)`` best weights; the remaining budget goes to the
    globally best scores (ties broken by position, so the result is deterministic).

    Args:
        weights: layer name -> (O, I) weights to score.
        sparsity: global fraction to prune, in [0, 1).
        normalize: see :func:`layer_scores`.
        min_layer_density: per-layer floor on the kept fraction.
        allowed: optional layer name -> (O, I) bool; False entries are never kept (monotone pruning). The
            floor and the budget are capped by the number of allowed entries.

    Returns:
        layer name -> (O, I) bool mask (True = kept).
    """
    names = list(weights)
    sizes = [weights[n].numel() for n in names]
    total = sum(sizes)
    keep_total = int(round((1.0 - sparsity) * total))
    flat_scores = []
    for n in names:
        s = layer_scores(weights[n], normalize).flatten()
        if allowed is not None:
            s = torch.where(allowed[n].flatten(), s, torch.full_like(s, -1.0))
        flat_scores.append(s)
    if allowed is not None:
        keep_total = min(keep_total, int(sum(int(allowed[n].sum()) for n in names)))
    # Floor: mark each layer's best ceil(d * n) (allowed) entries as forced.
    boosted = []
    forced = 0
    for s, size in zip(flat_scores, sizes):
        k = min(size, int(math.ceil(min_layer_density * size)), int((s >= 0).sum()))
        b = s.clone()
        if k > 0:
            top = torch.topk(s, k, sorted=False).indices
            b[top] = math.inf
        forced += k
        boosted.append(b)
    keep_total = max(keep_total, forced)
    all_scores = torch.cat(boosted)  # (total,)
    keep = torch.zeros(total, dtype=torch.bool, device=all_scores.device)  # indexed by `order` below
    if keep_total > 0:
        # Stable sort: equal scores keep their order, so the choice is deterministic.
        order = torch.sort(all_scores, descending=True, stable=True).indices
        keep[order[:keep_total]] = True
    masks: dict[str, torch.Tensor] = {}
    start = 0
    for n, size in zip(names, sizes):
        masks[n] = keep[start:start + size].view_as(weights[n]).to(weights[n].device)
        start += size
    return masks
