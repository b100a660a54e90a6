"""Trials: train one architecture and score it, at low fidelity (search) or full fidelity (final comparison).

Low fidelity (AutoCTR section 5) = a subsample of the rows, hash sizes capped by taking ids modulo a cap,
a small embedding dim, a few hundred steps, early stop on the validation NE. Every trial uses the same seed
for initialisation and data order, so a trial's result does not depend on which worker ran it.

Trials of a generation run in parallel in spawned worker processes (:class:`TrialRunner`); the data goes to
the workers once, as a ``torch.save`` file loaded in the pool initializer, and specs travel as JSON dicts.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, Sequence

import torch

from recpipe.config import JsonConfig
from recpipe.metrics.functional import summary
from recpipe.models.graph import GraphModel
from recpipe.models.predict import predict
from recpipe.models.spec import ArchSpec, SpecError
from recpipe.search.data import TensorRows
from recpipe.search.history import TrialOutcome
from recpipe.train.loop import TrainConfig, Trainer
from recpipe.train.optim import OptimConfig
from recpipe.tracking.base import MemoryTracker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialConfig(JsonConfig):
    """How one architecture is trained and scored.

    Attributes:
        max_train_rows: training rows subsampled (seeded) from the training data; None: all.
        max_valid_rows: validation rows subsampled; None: all.
        hash_cap: table sizes capped by ``id % hash_cap``; None: full tables.
        embedding_dim: D used instead of the spec's; None: the spec's own.
        batch_size: rows per step.
        max_steps: most optimizer steps (epochs repeat over the rows with a fresh seeded shuffle).
        eval_every: steps between validation passes.
        patience: validation passes without improvement before stopping early; 0 disables early stop.
        min_delta: NE improvement that counts as one.
        optim: dense + sparse optimizer settings (``recpipe.train.optim``).
        seed: seed of the initialisation and the data order.
        threads: torch intra-op threads per trial (1 when several trials share the CPU).
        device: where trials train (``"cpu"``, ``"cuda"``, ``"auto"``; see ``recpipe.train.loop``).
    """

    max_train_rows: int | None = 20_000
    max_valid_rows: int | None = 10_000
    hash_cap: int | None = 2_000
    embedding_dim: int | None = 8
    batch_size: int = 256
    max_steps: int = 300
    eval_every: int = 50
    patience: int = 2
    min_delta: float = 1e-4
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    threads: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_steps < 1 or self.eval_every < 1 or self.patience < 0:
            raise ValueError(f"TrialConfig: batch_size, max_steps, eval_every must be >= 1 and patience >= 0: "
                             f"{self.to_dict()}")

    def prepare(self, rows: TensorRows, *, valid: bool) -> TensorRows:
        """Subsamples (seeded) and caps hash sizes: the low-fidelity view of ``rows``."""
        n = self.max_valid_rows if valid else self.max_train_rows
        out = rows if n is None else rows.subsample(n, seed=self.seed + (1 if valid else 0))
        return out.capped(self.hash_cap)


@torch.no_grad()
def evaluate_rows(model: GraphModel, rows: TensorRows, batch_size: int = 4096) -> dict[str, float]:
    """AUC, log loss and NE of ``model`` on ``rows`` (keys without prefix: ``auc``, ``logloss``, ``ne``...)."""
    was_training = model.training
    preds, _ = predict(model, rows.batches(batch_size), next(model.parameters()).device)  # (R,)
    model.train(was_training)
    return summary(preds, rows.labels)


def fit(spec: ArchSpec, train: TensorRows, valid: TensorRows, cfg: TrialConfig, *,
        test: TensorRows | None = None) -> TrialOutcome:
    """Trains ``spec`` on ``train`` with early stopping on ``valid``, using ``cfg.threads`` torch threads.

    See :func:`_fit` for the returned metrics.
    """
    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    cpu0 = time.process_time()
    try:
        out = _fit(spec, train, valid, cfg, test=test)
    finally:
        torch.set_num_threads(prev)
    out.cpu_s = time.process_time() - cpu0  # robust to other load on the machine, unlike wall time
    return out


def _fit(spec: ArchSpec, train: TensorRows, valid: TensorRows, cfg: TrialConfig, *,
         test: TensorRows | None = None) -> TrialOutcome:
    """Trains ``spec`` on ``train`` with early stopping on ``valid``; optionally scores the best weights on ``test``.

    ``train``/``valid``/``test`` are used as given (call :meth:`TrialConfig.prepare` first for low fidelity);
    only ``cfg.embedding_dim`` is applied here.

    Returns:
        metrics ``eval/ne``, ``eval/auc``, ``eval/logloss`` (best validation pass), ``train/loss`` (mean over
        the last ``eval_every`` steps before it), ``train/steps``, ``train/best_step``, ``model/params``
        (dense, non-embedding), and ``test/*`` when ``test`` is given. A build failure or a diverged run
        comes back as ``error``.
    """
    if train.num_rows == 0 or valid.num_rows == 0:
        raise ValueError(f"fit: need training and validation rows, got {train.num_rows} and {valid.num_rows}")
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if cfg.embedding_dim is not None and cfg.embedding_dim != spec.embedding_dim:
        spec = spec.replace(embedding_dim=cfg.embedding_dim)
    try:
        model = GraphModel(spec, train.num_dense, train.table_sizes)
    except SpecError as e:
        return TrialOutcome(error=f"build failed: {e}", wall_s=time.perf_counter() - start)
    # The production training step (loss, hooks, optimizers) from recpipe.train.loop; this loop adds the
    # periodic validation and early stop a trial needs.
    trainer = Trainer(model, TrainConfig(optim=cfg.optim, batch_size=cfg.batch_size, seed=cfg.seed,
                                         device=cfg.device), tracker=MemoryTracker("trial"))
    dense_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("embedding."))
    best: dict[str, Any] = {"ne": math.inf}
    losses: list[float] = []
    step, examples, bad_evals, epoch, stop = 0, 0, 0, 0, False
    model.train()
    while not stop:
        for batch in train.batches(cfg.batch_size, shuffle_seed=cfg.seed * 1000 + epoch):
            loss = trainer.train_step(batch).item()
            if not math.isfinite(loss):
                return TrialOutcome(error=f"diverged: loss {loss} at step {step}",
                                    wall_s=time.perf_counter() - start, train_examples=examples)
            losses.append(loss)
            step += 1
            examples += batch.batch_size
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                m = evaluate_rows(model, valid)
                if m["ne"] < best["ne"] - cfg.min_delta:
                    recent = losses[-cfg.eval_every:]
                    best = {**m, "step": step, "train_loss": sum(recent) / len(recent),
                            "state": copy.deepcopy(model.state_dict()) if test is not None else None}
                    bad_evals = 0
                else:
                    bad_evals += 1
                stop = cfg.patience > 0 and bad_evals > cfg.patience
            if stop or step >= cfg.max_steps:
                stop = True
                break
        epoch += 1
    if not math.isfinite(best["ne"]):
        return TrialOutcome(error=f"validation NE never finite in {step} steps", wall_s=time.perf_counter() - start,
                            train_examples=examples)
    metrics = {"eval/ne": best["ne"], "eval/auc": best["auc"], "eval/logloss": best["logloss"],
               "train/loss": best["train_loss"], "train/steps": float(step), "train/best_step": float(best["step"]),
               "model/params": float(dense_params)}
    if test is not None:
        model.load_state_dict(best["state"])
        t = evaluate_rows(model, test)
        metrics.update({"test/ne": t["ne"], "test/auc": t["auc"], "test/logloss": t["logloss"]})
    return TrialOutcome(metrics=metrics, wall_s=time.perf_counter() - start, train_examples=examples)


# ---------------------------------------------------------------------- worker processes
_WORKER: dict[str, Any] = {}


def _init_worker(train_path: str, valid_path: str, cfg_json: str) -> None:
    cfg = TrialConfig.from_json(cfg_json)
    _WORKER.update(train=TensorRows.load(train_path), valid=TensorRows.load(valid_path), cfg=cfg)


def _run_in_worker(spec_dict: dict[str, Any]) -> dict[str, Any]:
    spec = ArchSpec.from_dict(spec_dict)
    out = fit(spec, _WORKER["train"], _WORKER["valid"], _WORKER["cfg"])
    return {"metrics": out.metrics, "wall_s": out.wall_s, "cpu_s": out.cpu_s, "train_examples": out.train_examples,
            "error": out.error}


class TrialRunner:
    """Evaluates batches of specs on fixed (already low-fidelity) data, in ``workers`` processes.

    Use as a context manager. ``workers <= 1`` runs trials inline in this process.

    Args:
        train: training rows (prepared).
        valid: validation rows (prepared).
        cfg: trial settings.
        workers: worker processes (spawn context; keep to the cores you have).
    """

    def __init__(self, train: TensorRows, valid: TensorRows, cfg: TrialConfig, workers: int = 2) -> None:
        self.train, self.valid, self.cfg, self.workers = train, valid, cfg, workers
        self._pool: ProcessPoolExecutor | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> "TrialRunner":
        if self.workers > 1:
            self._tmp = tempfile.TemporaryDirectory(prefix="recpipe-trials-")
            tp, vp = os.path.join(self._tmp.name, "train.pt"), os.path.join(self._tmp.name, "valid.pt")
            self.train.save(tp)
            self.valid.save(vp)
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"),
                                             initializer=_init_worker, initargs=(tp, vp, self.cfg.to_json()))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __call__(self, specs: Sequence[ArchSpec]) -> list[TrialOutcome]:
        """One outcome per spec, in order."""
        if self._pool is None:
            return [fit(s, self.train, self.valid, self.cfg) for s in specs]
        futures = [self._pool.submit(_run_in_worker, s.to_dict()) for s in specs]
        return [TrialOutcome(**f.result()) for f in futures]
