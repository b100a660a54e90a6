"""Adaptive dense-to-sparse pruning of the MLP and interaction weights (after arXiv 2010.08655).

The paper (Ye et al., "Adaptive Dense-to-Sparse Paradigm for Pruning Online Recommendation System with
Non-Stationary Data") observes that a pruned recommendation model that keeps its sparsity pattern frozen
loses accuracy under incremental training on drifting data, because the pattern that was right yesterday is
not the one needed today; it prunes gradually from a dense model and lets per-layer sparsity be learned
instead of hand-set. This module implements that idea with three independent pieces:

* **Schedule** — :func:`scheduled_sparsity`: zero before ``start_step``, a cubic ramp
  ``s(t) = s_f * (1 - (1 - (t - t0) / (t1 - t0)) ** 3)`` up to ``end_step`` (Zhu & Gupta, 2017), then the
  target ``s_f``.
* **Learned per-layer sparsity** — :func:`compute_masks`: one GLOBAL threshold over layer-normalised
  magnitude scores ``|w| / rms(W_layer)`` of every prunable weight. Normalising by the layer's RMS removes
  the scale differences that initialisation (∝ 1/sqrt(fan_in)) puts between layers, so what decides a
  layer's sparsity is the *shape* of its weight distribution: a layer whose mass sits in a few large weights
  ends up sparser than one whose weights are all alike. Exactly ``round((1 - s) * total)`` weights are kept
  overall (so per-layer pruned counts add up to the global target), with a floor of ``min_layer_density`` per
  layer so that no layer is cut off entirely.
* **Adaptive pattern with regrowth** — in ``mode="adaptive"`` the masks keep being recomputed every
  ``update_every`` steps after the ramp has ended, for as long as incremental training runs, and pruned
  weights can come back (counted in ``prune/regrown``). Two regrowth rules:

  - ``regrow="gradient"`` (default; RigL-style, Evci et al., "Rigging the Lottery", ICML 2020): the pruned
    weights still receive their (dense) gradient from autograd; its square is accumulated between mask
    updates (then the gradient is masked, so pruned weights stay exactly zero). At each update, after the
    magnitude step of the ramp, a ``regrow_fraction`` of the kept weights is swapped: the weakest kept weights
    (layer-normalised magnitude) are dropped and the pruned weights with the largest layer-normalised RMS
    gradient are grown, starting at ZERO so the served function does not jump. Newly grown weights are
    protected from the next drop. On drifting data, connections the new data needs show large gradients
    and are grown back.
  - ``regrow="shadow"`` (the paper's dense-to-sparse idea at every step, as in Lin et al., "Dynamic Model
    Pruning with Feedback", ICLR 2020): DENSE SHADOW weights are trained with the gradient taken at the sparse
    weights; the forward pass sees ``shadow * mask`` and the masks are re-ranked on the shadow, so a pruned
    weight whose shadow grows past the threshold returns. With ``bound_shadow`` (default) a pruned shadow
    weight is clamped after every step to the weakest kept magnitude of its layer: Adam's normalised steps
    would otherwise let an unused weight drift far on a small but consistent gradient and re-enter with a jump.

  ``mode="fixed"`` is the baseline: the same ramp and the same global threshold, but pruned weights are
  zeroed, their gradients masked (they can never return), and the mask is frozen once the ramp ends.
  ``benchmarks/pruning.py`` compares the three; see its results before choosing (on our synthetic drift
  the fixed mask was hard to beat).

The model's own parameters always hold the masked (served) weights, so ``model.state_dict()`` is the sparse
model and :func:`recpipe.train.prune_export.export_compact` can pack it; the pruner's :meth:`Pruner.state_dict`
(masks, shadows / gradient statistics, step) goes into checkpoints beside it.

Integration with a training loop is two calls per step::

    loss.backward()
    pruner.before_step()      # masks the gradients (gradient regrowth: after recording them);
                              # shadow regrowth: restores the dense shadow weights instead
    optimizer.step()
    pruner.after_step()       # shadow: saves it; all: maybe recompute masks, then re-apply them
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from recpipe.config import JsonConfig
from recpipe.train.prune_masks import RMS_EPS, compute_masks, layer_scores, scheduled_sparsity, select_prunable
from recpipe.train.loop import Callback, Trainer

logger = logging.getLogger(__name__)

__all__ = ["MODES", "REGROW", "PruneConfig", "Pruner", "PruningCallback", "compute_masks", "layer_scores",
           "scheduled_sparsity", "select_prunable"]

MODES = ("none", "fixed", "adaptive")
REGROW = ("gradient", "shadow")
NORMALIZATIONS = ("rms", "none")


@dataclass(frozen=True)
class PruneConfig(JsonConfig):
    """Pruning settings.

    Attributes:
        mode: ``"none"`` (dense), ``"fixed"`` (gradual magnitude pruning, mask frozen after the ramp) or
            ``"adaptive"`` (masks recomputed for ever, pruned weights can regrow; see ``regrow``).
        target_sparsity: final fraction of prunable weights set to zero, in [0, 1).
        start_step: optimizer step at which the ramp starts (dense before).
        end_step: step at which the ramp reaches ``target_sparsity``.
        update_every: masks are recomputed every this many steps (and at ``end_step``).
        normalize: score normalisation, ``"rms"`` (``|w| / rms(layer)``, default) or ``"none"`` (raw |w|).
        min_layer_density: every layer keeps at least this fraction of its weights.
        regrow: adaptive mode's regrowth rule: ``"gradient"`` (drop the weakest kept weights, grow the pruned
            ones with the largest mean squared gradient since the last update, starting at zero) or
            ``"shadow"`` (dense shadow weights trained through the sparse forward; masks re-ranked on them).
        regrow_fraction: ``"gradient"``: fraction of the kept weights swapped at every mask update.
        bound_shadow: ``"shadow"``: clamp pruned shadow weights to the weakest kept magnitude of their layer.
        include: regexes over module names selecting prunable ``nn.Linear`` modules; empty = all of them.
        exclude: regexes over module names removed from the selection.
    """

    mode: str = "none"
    target_sparsity: float = 0.9
    start_step: int = 0
    end_step: int = 1000
    update_every: int = 50
    normalize: str = "rms"
    min_layer_density: float = 0.02
    regrow: str = "gradient"
    regrow_fraction: float = 0.05
    bound_shadow: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"PruneConfig.mode: {self.mode!r} not in {MODES}")
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"PruneConfig.target_sparsity must be in [0, 1), got {self.target_sparsity}")
        if self.start_step < 0 or self.end_step < self.start_step:
            raise ValueError(f"PruneConfig: need 0 <= start_step <= end_step, got {self.start_step}, "
                             f"{self.end_step}")
        if self.update_every < 1:
            raise ValueError(f"PruneConfig.update_every must be >= 1, got {self.update_every}")
        if self.regrow not in REGROW:
            raise ValueError(f"PruneConfig.regrow: {self.regrow!r} not in {REGROW}")
        if not 0.0 <= self.regrow_fraction < 1.0:
            raise ValueError(f"PruneConfig.regrow_fraction must be in [0, 1), got {self.regrow_fraction}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"PruneConfig.normalize: {self.normalize!r} not in {NORMALIZATIONS}")
        if not 0.0 < self.min_layer_density <= 1.0:
            raise ValueError(f"PruneConfig.min_layer_density must be in (0, 1], got {self.min_layer_density}")


class Pruner:
    """Holds the masks (and the regrowth state) of a model's prunable Linear layers.

    Args:
        model: the model whose ``nn.Linear`` weights (see :func:`select_prunable`) are pruned in place.
        cfg: :class:`PruneConfig`; ``mode="none"`` makes every method a no-op.

    Attributes:
        step: optimizer steps seen (drives the schedule; saved in :meth:`state_dict`).
        masks: layer name -> (O, I) bool mask.
        shadow: layer name -> (O, I) dense weights (``regrow="shadow"`` only).
        grad_sq: layer name -> (O, I) squared gradients summed since the last update (``regrow="gradient"``).
        regrown_total: pruned weights that came back, summed over all mask updates.
    """

    def __init__(self, model: nn.Module, cfg: PruneConfig) -> None:
        self.cfg = cfg
        self.step = 0
        self.regrown_total = 0
        self.last_regrown = 0
        self.layers: dict[str, nn.Linear] = (
            select_prunable(model, cfg.include, cfg.exclude) if cfg.mode != "none" else {})
        self.masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in self.layers.items()}
        self.uses_shadow = cfg.mode == "adaptive" and cfg.regrow == "shadow"
        self.uses_grads = cfg.mode == "adaptive" and cfg.regrow == "gradient"
        self.shadow = {n: m.weight.detach().clone() for n, m in self.layers.items()} if self.uses_shadow else {}
        self.bounds: dict[str, torch.Tensor] = {}
        # "gradient" regrowth: squared gradients summed since the last mask update, and last update's growth.
        self.grad_sq = {n: torch.zeros_like(m.weight) for n, m in self.layers.items()} if self.uses_grads else {}
        self.grad_steps = 0
        self.protected = {n: torch.zeros_like(m.weight, dtype=torch.bool) for n, m in self.layers.items()} \
            if self.uses_grads else {}
        self.frozen = False

    # ------------------------------------------------------------------ training-loop hooks
    @property
    def enabled(self) -> bool:
        return self.cfg.mode != "none"

    @torch.no_grad()
    def before_step(self) -> None:
        """Call after ``backward()``, before ``optimizer.step()``.

        Fixed mode zeroes the gradients of pruned weights. Adaptive ``"gradient"`` mode first adds the squared
        (dense) gradients to its regrowth statistics, then does the same. Adaptive ``"shadow"`` mode puts the
        dense shadow weights back into the parameters so the optimizer updates them with the gradient taken
        at the sparse weights.
        """
        if not self.enabled:
            return
        if self.uses_grads:
            self.grad_steps += 1
        for n, m in self.layers.items():
            if self.uses_shadow:
                m.weight.copy_(self.shadow[n])
            elif m.weight.grad is not None:
                if self.uses_grads:
                    self.grad_sq[n].add_(m.weight.grad.detach().pow(2))
                m.weight.grad.mul_(self.masks[n])

    @torch.no_grad()
    def after_step(self) -> bool:
        """Call after ``optimizer.step()``: saves shadows, advances the schedule, maybe updates masks.

        Returns:
            Whether the masks were recomputed at this step.
        """
        if not self.enabled:
            return False
        if self.uses_shadow:
            for n, m in self.layers.items():
                self.shadow[n].copy_(m.weight)
                if n in self.bounds:
                    b = self.bounds[n]
                    self.shadow[n].copy_(torch.where(self.masks[n], self.shadow[n], self.shadow[n].clamp(-b, b)))
        self.step += 1
        due = self._due(self.step)
        if due:
            self.update_masks()
        self.apply_masks()
        return due

    def _due(self, step: int) -> bool:
        c = self.cfg
        if step < c.start_step or self.frozen:
            return False
        if step >= c.end_step:
            # The ramp is over: adaptive keeps re-deciding the pattern, fixed takes its last mask once.
            return step == c.end_step or (
                self.cfg.mode == "adaptive" and (step - c.end_step) % c.update_every == 0)
        return (step - c.start_step) % c.update_every == 0

    # ------------------------------------------------------------------ masks
    def current_weights(self) -> dict[str, torch.Tensor]:
        """Weights the scores are computed from: the dense shadow (``"shadow"``) or the parameters."""
        if self.uses_shadow:
            return dict(self.shadow)
        return {n: m.weight.detach() for n, m in self.layers.items()}

    @torch.no_grad()
    def update_masks(self, sparsity: float | None = None) -> dict[str, torch.Tensor]:
        """Recomputes every mask at the scheduled sparsity (or ``sparsity``) and returns them.

        Fixed mode never brings a pruned weight back and freezes its mask once the ramp has ended. Adaptive
        ``"gradient"`` mode prunes monotonically by magnitude to the target, then swaps a ``regrow_fraction``
        of the kept weights (see :meth:`_swap`). Adaptive ``"shadow"`` mode re-ranks all shadow weights.
        """
        c = self.cfg
        target = scheduled_sparsity(self.step, c.target_sparsity, c.start_step, c.end_step) \
            if sparsity is None else sparsity
        allowed = None if self.uses_shadow else self.masks
        new = compute_masks(self.current_weights(), target, normalize=c.normalize,
                            min_layer_density=c.min_layer_density, allowed=allowed)
        if self.uses_grads:
            new = self._swap(new)
        regrown = sum(int((n_m & ~self.masks[n]).sum()) for n, n_m in new.items())
        self.last_regrown = regrown
        self.regrown_total += regrown
        self.masks = new
        if self.uses_shadow and c.bound_shadow:
            for n, mk in new.items():
                kept = self.shadow[n].abs()[mk]
                self.bounds[n] = kept.min() if kept.numel() else torch.zeros((), dtype=self.shadow[n].dtype)
        if c.mode == "fixed" and self.step >= c.end_step:
            self.frozen = True
        logger.debug("pruning step %d: target %.4f, global %.4f, regrown %d", self.step, target,
                     self.global_sparsity(), regrown)
        return new

    @torch.no_grad()
    def _swap(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Gradient regrowth (after RigL, Evci et al. 2020, applied to streaming data): drop the ``n`` kept
        weights with the lowest layer-normalised magnitude and grow the ``n`` pruned weights with the largest
        layer-normalised RMS gradient since the last update; ``n = regrow_fraction * kept``.

        Grown weights start at zero (the served function does not jump) and are protected from being dropped
        at the next update, so they get one interval to become useful; each layer keeps its
        ``min_layer_density`` floor. The gradient statistics are reset afterwards.
        """
        c = self.cfg
        names = list(masks)
        kept_total = sum(int(masks[n].sum()) for n in names)
        grow_s, drop_s = [], []
        for n in names:
            mk = masks[n]
            g = (self.grad_sq[n] / max(self.grad_steps, 1)).sqrt()
            g = g / g.pow(2).mean().sqrt().clamp_min(RMS_EPS)
            grow_s.append(torch.where(mk, torch.full_like(g, -1.0), g).flatten())
            w = layer_scores(self.layers[n].weight, c.normalize)
            d = torch.where(mk & ~self.protected[n], w, torch.full_like(w, math.inf)).flatten()
            floor = min(int(mk.sum()), int(math.ceil(c.min_layer_density * mk.numel())))
            if floor > 0:  # the layer's best `floor` weights may not be dropped
                top = torch.topk(torch.where(mk, w, torch.full_like(w, -1.0)).flatten(), floor).indices
                d[top] = math.inf
            drop_s.append(d)
        grow_all, drop_all = torch.cat(grow_s), torch.cat(drop_s)  # (total,) each
        n_swap = min(int(round(c.regrow_fraction * kept_total)), int((grow_all > 0).sum()),
                     int(torch.isfinite(drop_all).sum()))
        flat = torch.cat([masks[n].flatten() for n in names])
        grown = torch.zeros_like(flat)
        if n_swap > 0:
            grow_idx = torch.sort(grow_all, descending=True, stable=True).indices[:n_swap]
            drop_idx = torch.sort(drop_all, stable=True).indices[:n_swap]
            flat = flat.clone()
            flat[drop_idx] = False
            flat[grow_idx] = True
            grown[grow_idx] = True
        out, start = {}, 0
        for n in names:
            size = masks[n].numel()
            out[n] = flat[start:start + size].view_as(masks[n])
            self.protected[n] = grown[start:start + size].view_as(masks[n])
            self.grad_sq[n].zero_()
            start += size
        self.grad_steps = 0
        return out

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Writes ``weight * mask`` into every prunable parameter (the served, sparse weights)."""
        for n, m in self.layers.items():
            m.weight.mul_(self.masks[n])

    def layer_sparsity(self) -> dict[str, float]:
        """Fraction of zeros in each layer's mask."""
        return {n: 1.0 - float(mk.float().mean()) for n, mk in self.masks.items()}

    def global_sparsity(self) -> float:
        """Fraction of zeros over all prunable weights together."""
        total = sum(mk.numel() for mk in self.masks.values())
        kept = sum(int(mk.sum()) for mk in self.masks.values())
        return 1.0 - kept / total if total else 0.0

    def metrics(self) -> dict[str, float]:
        """``prune/sparsity/<layer>``, ``prune/global``, ``prune/regrown`` (last update), ``prune/target``."""
        if not self.enabled:
            return {}
        c = self.cfg
        out = {f"prune/sparsity/{n}": v for n, v in self.layer_sparsity().items()}
        out["prune/global"] = self.global_sparsity()
        out["prune/regrown"] = float(self.last_regrown)
        out["prune/target"] = scheduled_sparsity(self.step, c.target_sparsity, c.start_step, c.end_step)
        return out

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Masks, shadows, step and counters (CPU copies, safe to keep while training goes on)."""
        return {"config": self.cfg.to_dict(), "step": self.step, "frozen": self.frozen,
                "regrown_total": self.regrown_total,
                "masks": {n: m.detach().cpu().clone() for n, m in self.masks.items()},
                "shadow": {n: s.detach().cpu().clone() for n, s in self.shadow.items()},
                "bounds": {n: b.detach().cpu().clone() for n, b in self.bounds.items()},
                "grad_sq": {n: g.detach().cpu().clone() for n, g in self.grad_sq.items()},
                "protected": {n: p.detach().cpu().clone() for n, p in self.protected.items()},
                "grad_steps": self.grad_steps}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any], *, source: str = "<pruner state>") -> None:
        """Restores masks, shadows and step; layers absent from ``state`` stay dense.

        Raises:
            ValueError: a saved mask names an unknown layer or has the wrong shape (the message says which).
        """
        if not self.enabled:
            return
        self.step = int(state["step"])
        self.frozen = bool(state.get("frozen", False))
        self.regrown_total = int(state.get("regrown_total", 0))
        self.grad_steps = int(state.get("grad_steps", 0)) if self.uses_grads else 0
        kinds = [("masks", self.masks)] + ([("shadow", self.shadow)] if self.uses_shadow else []) + \
            ([("grad_sq", self.grad_sq), ("protected", self.protected)] if self.uses_grads else [])
        for kind, table in kinds:
            for n, t in state.get(kind, {}).items():
                if n not in self.layers:
                    raise ValueError(f"{source}: {kind} for unknown layer {n!r}; model layers: {sorted(self.layers)}")
                want = self.layers[n].weight.shape
                if tuple(t.shape) != tuple(want):
                    raise ValueError(f"{source}: {kind}[{n!r}] has shape {tuple(t.shape)}, layer has {tuple(want)}")
                dev = self.layers[n].weight.device
                dtype = torch.bool if kind in ("masks", "protected") else self.layers[n].weight.dtype
                table[n] = t.to(dev, dtype=dtype).clone()
        self.bounds = {n: b.to(self.layers[n].weight.device).clone() for n, b in state.get("bounds", {}).items()
                       if n in self.layers}
        if self.uses_shadow:
            # Layers without a saved shadow start from their current (possibly already sparse) weights.
            for n, m in self.layers.items():
                if n not in state.get("shadow", {}):
                    self.shadow[n] = m.weight.detach().clone()
        self.apply_masks()


class PruningCallback(Callback):
    """Hooks a :class:`Pruner` into :class:`recpipe.train.loop.Trainer` and logs sparsity on mask updates.

    ``after_backward`` → :meth:`Pruner.before_step`; ``after_step`` → :meth:`Pruner.after_step`; the pruner's
    state rides in the trainer's checkpoints through ``state_dict``/``load_state_dict``. Whenever the masks
    change (every ``update_every`` steps during the ramp, and afterwards in adaptive mode) the metrics of
    :meth:`Pruner.metrics` go to ``trainer.tracker`` at the trainer's step.
    """

    def __init__(self, pruner: Pruner) -> None:
        self.pruner = pruner

    def after_backward(self, trainer: Trainer) -> None:
        self.pruner.before_step()

    def after_step(self, trainer: Trainer, loss: torch.Tensor) -> None:
        updated = self.pruner.after_step()
        if updated:
            trainer.tracker.log_metrics(self.pruner.metrics(), step=trainer.state.step)

    def state_dict(self) -> dict[str, Any]:
        return self.pruner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruner.load_state_dict(state, source="checkpoint callback state")
