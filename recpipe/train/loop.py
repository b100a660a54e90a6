"""The training loop: BCE-with-logits on a stream of :class:`Batch`, dense + row-wise sparse optimizers,
callbacks, tracker logging and exact resume.

Extending the loop (pruning, incremental training ...) goes through :class:`Callback`::

    class MaskGrads(Callback):
        def after_backward(self, trainer):          # gradients exist, optimizer not stepped yet
            for p, m in masks: p.grad.mul_(m)
        def after_step(self, trainer, loss):        # parameters updated
            for p, m in masks: p.data.mul_(m)

    Trainer(model, TrainConfig(max_steps=1000), tracker, callbacks=[MaskGrads()]).fit(loader, checkpoint_dir=d)

Determinism: :meth:`Trainer.fit` seeds torch / random / NumPy from ``cfg.seed`` on a fresh start and restores
the saved RNG states on resume, so "N steps, checkpoint, resume, N steps" equals "2N steps" bit for bit on CPU.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from recpipe.config import JsonConfig
from recpipe.data.batch import Batch
from recpipe.tracking.base import MemoryTracker, Tracker
from recpipe.train.checkpoint import (
    FORMAT_VERSION,
    CheckpointManager,
    embedding_table_sizes,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from recpipe.train.fused import FUSED_MODES, attach_fused_updates
from recpipe.train.optim import OptimConfig, Optimizers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """How to train.

    Attributes:
        optim: optimizer choices and learning rates.
        batch_size: examples per batch; the Trainer consumes ready batches, the tasks layer gives this to the
            loader it builds.
        epochs: passes over ``data`` (each pass calls ``iter(data)`` again).
        max_steps: stop after this many optimizer steps in total (across resumes); None = no limit.
        grad_clip_norm: clip the global L2 norm of the DENSE gradients (embedding rows are already scaled
            per row by row-wise Adagrad); None = off.
        log_every: log ``train/loss`` (mean over the window) and throughput every this many steps.
        checkpoint_every: save a checkpoint every this many steps (needs a checkpoint dir); None = only at
            the end of :meth:`Trainer.fit` when a checkpoint dir is given.
        keep_checkpoints: how many recent checkpoints to keep.
        seed: seeds torch, ``random`` and NumPy on a fresh start.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:<i>"`` or ``"auto"`` (CUDA when available).
        fused_embedding_update: ``"auto"`` (on when the model is on CUDA and the CUDA kernels load), ``"on"`` or
            ``"off"``: apply the embedding optimizer step inside backward (see :mod:`recpipe.train.fused`).
    """

    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 2048
    epochs: int = 1
    max_steps: int | None = None
    grad_clip_norm: float | None = None
    log_every: int = 100
    checkpoint_every: int | None = None
    keep_checkpoints: int = 3
    seed: int = 0
    device: str = "cpu"
    fused_embedding_update: str = "auto"

    def __post_init__(self) -> None:
        if self.fused_embedding_update not in FUSED_MODES:
            raise ValueError(f"TrainConfig.fused_embedding_update: {self.fused_embedding_update!r} not in "
                             f"{FUSED_MODES}")
        for name in ("batch_size", "epochs", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "checkpoint_every"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1 or null, got {v}")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ValueError(f"TrainConfig.grad_clip_norm must be > 0 or null, got {self.grad_clip_norm}")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA if available else CPU; anything else as torch understands it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seeds torch (CPU and CUDA), Python's ``random`` and NumPy's global generator."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))


class Callback:
    """Hooks into :class:`Trainer`; override what you need (every hook defaults to doing nothing).

    ``state_dict``/``load_state_dict`` let a callback keep its own state in checkpoints (e.g. a schedule).
    """

    def on_fit_start(self, trainer: "Trainer") -> None:
        """Before the first step of :meth:`Trainer.fit` (after a resume has been applied)."""

    def after_backward(self, trainer: "Trainer") -> None:
        """Gradients are populated; the optimizers have not stepped (mask or edit gradients here)."""

    def after_step(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        """Parameters were updated; ``trainer.state.step`` already counts this step. ``loss``: () detached."""

    def on_fit_end(self, trainer: "Trainer", summary: "TrainSummary") -> None:
        """After the last step of :meth:`Trainer.fit`."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state  # stateless by default


@dataclass
class TrainState:
    """Progress counters, saved in checkpoints. ``batch_in_epoch`` counts batches consumed this epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    examples: int = 0


@dataclass
class TrainSummary:
    """What one :meth:`Trainer.fit` call did.

    Attributes:
        steps: optimizer steps taken in this call.
        examples: examples trained on in this call.
        mean_loss: mean batch loss over every step of this call.
        last_window_loss: mean batch loss over the last logging window (the last ``cfg.log_every`` steps, or
            fewer when the call ended mid-window) — what the final ``train/loss`` point shows; NaN without steps.
        seconds: wall time of the call.
        examples_per_sec: ``examples / seconds``.
        checkpoint: the checkpoint written at the end (None without a checkpoint dir).
    """

    steps: int
    examples: int
    mean_loss: float
    last_window_loss: float
    seconds: float
    examples_per_sec: float
    checkpoint: str | None = None

    def metrics(self) -> dict[str, float]:
        """Scalar metrics for a task Result (``train/`` prefix); ``train/loss`` is the mean over the last log
        window (:attr:`last_window_loss`), ``train/mean_loss`` the mean over the whole call."""
        return {"train/loss": self.last_window_loss, "train/mean_loss": self.mean_loss,
                "train/steps": float(self.steps), "train/examples": float(self.examples),
                "train/examples_per_sec": self.examples_per_sec}


def _on_writer(action: Callable[[], Any], result: Any) -> Any:
    """Runs ``action`` in the file-writing process only (rank 0 under an initialised ``torch.distributed``
    group, see :func:`recpipe.train.distributed.is_main_process`), then holds every rank at a barrier until it
    is done.

    Returns:
        What ``action`` returned on the writer, ``result`` on the other ranks.
    """
    # Imported here: recpipe.train.distributed builds on this module (Callback, Trainer).
    from recpipe.train.distributed import is_main_process

    out = action() if is_main_process() else result
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return out


class Trainer:
    """Trains a CTR model (anything mapping a :class:`Batch` to (B,) logits) with BCE-with-logits.

    Args:
        model: the model; moved to ``cfg.device``.
        cfg: the :class:`TrainConfig`.
        tracker: where ``train/loss``, ``train/examples_per_sec`` go (an in-memory tracker if None).
        callbacks: hooks, called in order.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, tracker: Tracker | None = None,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.tracker: Tracker = tracker if tracker is not None else MemoryTracker("train")
        self.callbacks = list(callbacks)
        self.optimizers = Optimizers(self.model, cfg.optim)
        self.fused_embedding_update = attach_fused_updates(self.model, self.optimizers,
                                                           cfg.fused_embedding_update, self.device)
        self.state = TrainState()
        self._resumed = False
        self._pending_skip = 0

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Batch) -> torch.Tensor:
        """Forward, backward, hooks, clipping, optimizer step. Returns the detached () loss."""
        batch = batch.to(self.device, non_blocking=True)
        self.model.train()
        self.optimizers.zero_grad()
        logits = self.model(batch)  # (B,)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels.to(logits.dtype))
        loss.backward()
        for cb in self.callbacks:
            cb.after_backward(self)
        if self.cfg.grad_clip_norm is not None and self.optimizers.dense_params:
            torch.nn.utils.clip_grad_norm_(self.optimizers.dense_params, self.cfg.grad_clip_norm)
        self.optimizers.step()
        self.state.step += 1
        self.state.examples += batch.batch_size
        detached = loss.detach()
        for cb in self.callbacks:
            cb.after_step(self, detached)
        return detached

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self, data: Any = None) -> dict[str, Any]:
        """Everything needed to resume: model, optimizers, counters, data cursor, RNG, config, callbacks."""
        cursor = data.state_dict() if data is not None and hasattr(data, "state_dict") else None
        return {
            "format_version": FORMAT_VERSION,
            "step": self.state.step, "epoch": self.state.epoch, "batch_in_epoch": self.state.batch_in_epoch,
            "examples": self.state.examples,
            "model": self.model.state_dict(),
            "optim": self.optimizers.state_dict(),
            "data": cursor,
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "table_sizes": embedding_table_sizes(self.model),
            "callbacks": [cb.state_dict() for cb in self.callbacks],
        }

    def load_payload(self, payload: dict[str, Any], data: Any = None) -> None:
        """Restores a :meth:`checkpoint_payload` into this trainer (and the data cursor into ``data``).

        The model must have the checkpoint's architecture. If the checkpointed run had grown its embedding
        tables, the model's tables are grown to match first (optimizer state follows).
        """
        sizes = embedding_table_sizes(self.model)
        saved = payload.get("table_sizes", sizes)
        emb = getattr(self.model, "embedding", None)
        if saved != sizes and set(saved) == set(sizes) == {"embedding"} and emb is not None and \
                len(saved["embedding"]) == len(sizes["embedding"]) and \
                all(a >= b for a, b in zip(saved["embedding"], sizes["embedding"])):
            self.grow_tables(saved["embedding"])  # the run grew its tables before this checkpoint
            sizes = embedding_table_sizes(self.model)
        if saved != sizes:
            raise ValueError(f"resume: checkpoint embedding tables {saved} differ from the model's {sizes}; "
                             f"build the model with the checkpoint's sizes")
        self.model.load_state_dict(payload["model"])
        self.optimizers.load_state_dict(payload["optim"])
        self.state = TrainState(step=int(payload["step"]), epoch=int(payload["epoch"]),
                                batch_in_epoch=int(payload["batch_in_epoch"]), examples=int(payload["examples"]))
        set_rng_state(payload["rng"])
        saved_cbs = payload.get("callbacks") or []
        if len(saved_cbs) != len(self.callbacks):
            raise ValueError(f"resume: checkpoint has state for {len(saved_cbs)} callbacks, trainer has "
                             f"{len(self.callbacks)}")
        for cb, st in zip(self.callbacks, saved_cbs):
            cb.load_state_dict(st)
        if payload.get("data") is not None:
            if data is None or not hasattr(data, "load_state_dict"):
                raise ValueError("resume: the checkpoint holds a data cursor but the data has no load_state_dict")
            # A cursor loader continues the interrupted pass from the cursor, and rewinds to its first row
            # for the passes after it (ParquetLoader does; tests/train/test_loop.py checks it).
            data.load_state_dict(payload["data"])
            self._pending_skip = 0
        else:  # no cursor saved: replay the epoch and skip what was already trained on
            self._pending_skip = self.state.batch_in_epoch
        self._resumed = True

    def save_checkpoint(self, manager: CheckpointManager, data: Any = None) -> str:
        """Writes a checkpoint of the current state through ``manager``.

        Under an initialised ``torch.distributed`` group only rank 0 writes (the replicas are identical; the
        data cursor and RNG states saved are rank 0's) and every rank then waits at a barrier, so no rank
        runs ahead of a checkpoint that is not on disk yet. Every rank must call this at the same step.

        Returns:
            The checkpoint's path.
        """
        return _on_writer(lambda: manager.save(self.checkpoint_payload(data), self.state.step),
                          manager.path_for(self.state.step))

    # ------------------------------------------------------------------ vocabulary growth
    def grow_tables(self, new_sizes: Sequence[int]) -> None:
        """Grows the model's embedding tables and moves the row-wise optimizer state with the rows."""
        emb = getattr(self.model, "embedding", None)
        if emb is None:
            raise ValueError("grow_tables: the model has no `embedding` collection")
        old_param, old_sizes = emb.weight, list(emb.table_sizes)
        emb.grow(new_sizes)
        if emb.weight is not old_param:
            self.optimizers.replace_embedding(old_param, emb.weight, old_sizes, list(new_sizes))

    # ------------------------------------------------------------------ the loop
    def _log(self, window_loss: torch.Tensor, window_steps: int, window_examples: int, seconds: float) -> float:
        mean = float(window_loss) / max(window_steps, 1)
        self.tracker.log_metrics({"train/loss": mean,
                                  "train/examples_per_sec": window_examples / max(seconds, 1e-9),
                                  "train/epoch": float(self.state.epoch)}, step=self.state.step)
        logger.info("step %d epoch %d loss %.5f (%.0f ex/s)", self.state.step, self.state.epoch, mean,
                    window_examples / max(seconds, 1e-9))
        return mean

    def fit(self, data: Iterable[Batch], checkpoint_dir: str | None = None, resume: bool | str = False
            ) -> TrainSummary:
        """Trains for ``cfg.epochs`` passes over ``data`` (or until ``cfg.max_steps``).

        Args:
            data: any iterable of :class:`Batch`; ``iter(data)`` is called once per epoch and must restart the
                data (lists and re-iterable loaders do). If it has ``state_dict()``/``load_state_dict()`` (a
                streaming loader's cursor), the cursor goes into checkpoints and is restored on resume; if not,
                resuming skips the batches already consumed in the current epoch (data must be replayable).
            checkpoint_dir: where checkpoints go (every ``cfg.checkpoint_every`` steps and at the end).
            resume: False = start fresh (seeding from ``cfg.seed`` if no step was taken yet); True = resume from
                the newest checkpoint in ``checkpoint_dir`` if there is one (fresh start otherwise); a path =
                resume from that file, moving the checkpoints of ``checkpoint_dir`` newer than it into
                ``<checkpoint_dir>/abandoned/`` (the resumed run is a new branch: its checkpoints become the
                newest, and retention never deletes them in favour of the old branch's). A state restored by
                :meth:`load_payload` before the call counts as a resume too. Without a resume, ``fit`` starts
                new epochs while the global step continues (so calling it again with the next day's data keeps
                training the same model).

        Returns:
            A :class:`TrainSummary` of this call.
        """
        manager = CheckpointManager(checkpoint_dir, self.cfg.keep_checkpoints) if checkpoint_dir else None
        if isinstance(resume, str):
            payload = load_checkpoint(resume)
            self.load_payload(payload, data)
            if manager is not None:  # newer checkpoints belong to the branch this resume abandons
                _on_writer(lambda: manager.abandon_after(int(payload["step"])), [])
        elif resume and manager is not None and manager.latest() is not None:
            self.load_payload(manager.load(), data)
        if not self._resumed:
            if self.state.step == 0:
                seed_everything(self.cfg.seed)
            # A new fit() on a trained model (e.g. the next day's data): new passes, global step continues.
            self.state.epoch = self.state.batch_in_epoch = 0
            self._pending_skip = 0
        self._resumed = False
        skip, self._pending_skip = self._pending_skip, 0
        for cb in self.callbacks:
            cb.on_fit_start(self)

        start_step, start_examples, t_start = self.state.step, self.state.examples, time.perf_counter()
        window_loss = torch.zeros((), device=self.device)
        window_steps = window_examples = 0
        t_window = t_start
        total_loss = torch.zeros((), device=self.device)
        last_window_loss = math.nan
        last_saved: str | None = None
        done = self.cfg.max_steps is not None and self.state.step >= self.cfg.max_steps
        while not done and self.state.epoch < self.cfg.epochs:
            for batch in data:
                if skip:
                    skip -= 1
                    continue
                loss = self.train_step(batch)
                self.state.batch_in_epoch += 1
                window_loss += loss
                total_loss += loss
                window_steps += 1
                window_examples += batch.batch_size
                if self.state.step % self.cfg.log_every == 0:
                    now = time.perf_counter()
                    last_window_loss = self._log(window_loss, window_steps, window_examples, now - t_window)
                    window_loss.zero_()
                    window_steps = window_examples = 0
                    t_window = now
                if manager is not None and self.cfg.checkpoint_every and \
                        self.state.step % self.cfg.checkpoint_every == 0:
                    last_saved = self.save_checkpoint(manager, data)
                if self.cfg.max_steps is not None and self.state.step >= self.cfg.max_steps:
                    done = True
                    break
            if not done:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                skip = 0
        if window_steps:
            last_window_loss = self._log(window_loss, window_steps, window_examples, time.perf_counter() - t_window)
        path = None
        if manager is not None:
            saved_now = last_saved is not None and last_saved == manager.path_for(self.state.step)
            path = last_saved if saved_now else self.save_checkpoint(manager, data)
        seconds = time.perf_counter() - t_start
        steps = self.state.step - start_step
        examples = self.state.examples - start_examples
        summary = TrainSummary(steps=steps, examples=examples,
                               mean_loss=float(total_loss) / steps if steps else math.nan,
                               last_window_loss=last_window_loss, seconds=seconds,
                               examples_per_sec=examples / max(seconds, 1e-9), checkpoint=path)
        for cb in self.callbacks:
            cb.on_fit_end(self, summary)
        return summary
