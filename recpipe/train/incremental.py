"""Streaming incremental training over day partitions, with prequential evaluation and exact resume.

:class:`IncrementalTrainer` consumes ``<root>/day=YYYY-MM-DD`` partitions in ascending day order, in ONE pass:

1. **Grow** the embedding tables when the dataset's ``_manifest.json`` reports larger ``table_sizes`` than the
   model has (vocabulary delta: new ids appended; old rows are untouched, see the model's ``grow``).
2. **Prequential evaluation** (test-then-train): the whole day is scored with the model as it stood at the end
   of the previous day, BEFORE any of its rows is trained on; NE and AUC go to the tracker as ``preq/ne`` and
   ``preq/auc`` with ``step`` = the day's index in the stream.
3. **Train** on the day, one step per batch, the pruner (:mod:`recpipe.train.pruning`) hooked around the
   optimizer step.

Every ``checkpoint_every`` steps, and at the end of every day, a checkpoint is written atomically holding the
model, optimizer and pruner states, the step, the days finished, the prequential results and the LOADER CURSOR
(rows of the current day already trained). A run started with the same ``checkpoint_dir`` resumes from the
newest checkpoint: rows trained after it were lost with the process and are trained again, rows before it are
never seen again — so each row is reflected in the model exactly once. A day whose prequential evaluation was
done before the kill is not evaluated again (its result is in the checkpoint).

``follow=True`` keeps polling the dataset root for new day partitions after the last one is trained and stops
when none has appeared for ``max_idle_s`` seconds. Days that land out of order (older than the last day
trained) are skipped with a warning: the stream never goes back in time.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from recpipe.config import JsonConfig
from recpipe.data.batch import Batch
from recpipe.data.loader import LoaderConfig, ParquetLoader
from recpipe.data.parquet_io import list_days
from recpipe.metrics.streaming import AUC, Moments, sync_distributed
from recpipe.schema import Schema
from recpipe.tracking.base import MemoryTracker, Tracker
from recpipe.train.checkpoint import CheckpointManager
from recpipe.train.distributed import EqualShards, is_main_process
from recpipe.train.loop import Callback, Trainer, TrainConfig, resolve_device, seed_everything
from recpipe.train.pruning import PruneConfig, Pruner, PruningCallback

DayLoaderFactory = Callable[[str, int], Any]
"""``(day, batch_size) -> loader``: an iterable of :class:`Batch` over ONE day, in file/row order, with
``state_dict()``/``load_state_dict()`` (its cursor) — e.g. :func:`recpipe.data.loader` bound to a root."""

logger = logging.getLogger(__name__)

MANIFEST = "_manifest.json"


@dataclass(frozen=True)
class IncrementalConfig(JsonConfig):
    """Settings of the streaming driver (the optimizer and batch size come from the trainer config).

    Attributes:
        checkpoint_every: steps between mid-day checkpoints (a checkpoint also closes every day); 0 = days only.
        keep_checkpoints: newest checkpoints kept in ``checkpoint_dir``.
        prequential: evaluate each day before training on it.
        eval_batch_size: rows per batch of the prequential pass.
        follow: keep polling for new day partitions after the last one.
        poll_interval_s: seconds between polls in follow mode.
        max_idle_s: follow mode stops after this long without a new day.
        log_every: steps between ``train/loss`` logs.
    """

    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    prequential: bool = True
    eval_batch_size: int = 8192
    follow: bool = False
    poll_interval_s: float = 10.0
    max_idle_s: float = 600.0
    log_every: int = 100

    def __post_init__(self) -> None:
        if self.checkpoint_every < 0:
            raise ValueError(f"IncrementalConfig.checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"IncrementalConfig.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.poll_interval_s <= 0 or self.max_idle_s < 0:
            raise ValueError("IncrementalConfig: poll_interval_s must be > 0 and max_idle_s >= 0")


# ---------------------------------------------------------------------------------------------- dataset root
def list_day_partitions(root: str | os.PathLike[str]) -> list[str]:
    """ISO days of the ``day=YYYY-MM-DD`` partitions under ``root``, ascending ([] while it does not exist)."""
    return list_days(root) if os.path.isdir(os.fspath(root)) else []


def parquet_day_factory(root: str | os.PathLike[str], schema: Schema | None = None,
                        validate_ids: bool = True, rank: int = 0, world_size: int = 1) -> DayLoaderFactory:
    """A :data:`DayLoaderFactory` over processed Parquet: one :class:`ParquetLoader` per day, time-ordered.

    With ``world_size > 1`` each rank reads its shard of the day, and every rank yields the same number of
    batches (:class:`recpipe.train.distributed.EqualShards`) so data-parallel steps pair up.
    """
    root = os.fspath(root)

    def open_day(day: str, batch_size: int) -> Any:
        loader = ParquetLoader(root, LoaderConfig(batch_size=batch_size, validate_ids=validate_ids), schema=schema,
                               days=[day], rank=rank, world_size=world_size)
        return EqualShards(loader, world_size) if world_size > 1 else loader

    return open_day


def manifest_table_sizes(root: str | os.PathLike[str], feature_names: Sequence[str] | None,
                         num_tables: int) -> list[int] | None:
    """Per-table sizes from ``<root>/_manifest.json``, in table order, or None without a manifest/sizes.

    The manifest's ``table_sizes`` may be a mapping feature -> size (``feature_names`` needed) or a list in
    schema order.

    Raises:
        ValueError: the manifest's table_sizes do not fit the model's tables (the message names the file).
    """
    path = os.path.join(os.fspath(root), MANIFEST)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        try:
            sizes = json.load(fh).get("table_sizes")
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON: {e}") from e
    if sizes is None:
        return None
    if isinstance(sizes, Mapping):
        if feature_names is None:
            raise ValueError(f"{path}: table_sizes is keyed by feature name but the model's feature names are "
                             f"unknown (build it with a schema)")
        missing = [n for n in feature_names if n not in sizes]
        if missing:
            raise ValueError(f"{path}: table_sizes lacks features {missing}")
        return [int(sizes[n]) for n in feature_names]
    if len(sizes) != num_tables:
        raise ValueError(f"{path}: table_sizes has {len(sizes)} entries, the model has {num_tables} tables")
    return [int(s) for s in sizes]


def iter_new_days(root: str, *, after: str | None, only: Iterable[str] | None = None, follow: bool = False,
                  poll_interval_s: float = 10.0, max_idle_s: float = 600.0,
                  sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> Iterator[str]:
    """Yields day partitions later than ``after``, oldest first, re-listing the root after each one.

    Args:
        root: dataset root.
        after: last day already trained (exclusive lower bound), or None.
        only: if given, only these days are yielded (others are ignored).
        follow: keep polling when no new day is available.
        poll_interval_s: sleep between polls.
        max_idle_s: in follow mode, stop after this long without a new day.
        sleep, clock: injectable for tests.
    """
    wanted = set(only) if only is not None else None
    last = after
    idle_since = clock()
    while True:
        days = [d for d in list_day_partitions(root) if wanted is None or d in wanted]
        late = [d for d in days if last is not None and d < last]
        fresh = [d for d in days if last is None or d > last]
        if late:
            logger.debug("%s: ignoring %d day(s) older than %s", root, len(late), last)
        if fresh:
            last = fresh[0]
            yield last
            idle_since = clock()
            continue
        if not follow or clock() - idle_since >= max_idle_s:
            return
        sleep(poll_interval_s)


# ---------------------------------------------------------------------------------------------- state
@dataclass
class StreamState:
    """What a checkpoint records beside the tensors.

    Attributes:
        step: optimizer steps done.
        days_done: days fully trained, in order.
        current_day: day being trained (None between days).
        cursor: loader cursor inside ``current_day`` (None = start of the day).
        rows: rows trained so far (all days).
        preq: day -> {"ne", "auc", "logloss", "rows", "index"} of the prequential evaluation.
        last_loss: loss of the last step.
    """

    step: int = 0
    days_done: list[str] = field(default_factory=list)
    current_day: str | None = None
    cursor: dict[str, Any] | None = None
    rows: int = 0
    preq: dict[str, dict[str, float]] = field(default_factory=dict)
    last_loss: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "days_done": list(self.days_done), "current_day": self.current_day,
                "cursor": self.cursor, "rows": self.rows, "preq": self.preq, "last_loss": self.last_loss}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StreamState":
        return cls(step=int(d["step"]), days_done=list(d["days_done"]), current_day=d.get("current_day"),
                   cursor=d.get("cursor"), rows=int(d["rows"]), preq=dict(d.get("preq", {})),
                   last_loss=float(d.get("last_loss", float("nan"))))


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_stream(model: nn.Module, batches: Iterable[Batch], device: torch.device | str = "cpu") -> dict[str, float]:
    """Scores every batch with ``model`` in eval mode; returns ne, auc, logloss, rows.

    NE's base rate is the empirical label rate of the evaluated rows (see :mod:`recpipe.metrics`).
    """
    was_training = model.training
    model.eval()
    moments, auc = Moments(), AUC()
    with torch.no_grad():
        for b in batches:
            b = b.to(device)
            p = torch.sigmoid(model(b).float())  # (B,)
            moments.update(p.cpu(), b.labels.cpu())
            auc.update(p.cpu(), b.labels.cpu())
    sync_distributed(moments)  # data-parallel: every rank scored its shard; no-op in one process
    sync_distributed(auc)
    model.train(was_training)
    m = moments.metrics()
    return {"ne": m["ne"], "auc": auc.compute() if m["count"] else float("nan"), "logloss": m["logloss"],
            "rows": m["count"]}


# ---------------------------------------------------------------------------------------------- the driver
@dataclass
class StreamResult:
    """What :meth:`IncrementalTrainer.run` did (cumulative over resumes, from the stream state)."""

    days_trained: list[str]
    rows: int
    steps: int
    last_loss: float
    preq: dict[str, dict[str, float]]
    resumed_from: str | None = None
    grown: list[dict[str, Any]] = field(default_factory=list)

    def preq_overall(self) -> dict[str, float]:
        """Row-weighted mean prequential NE/logloss and mean AUC over the evaluated days (nan if none)."""
        rows = [v for v in self.preq.values() if v.get("rows", 0) > 0]
        total = sum(v["rows"] for v in rows)
        if not total:
            return {"preq/ne": float("nan"), "preq/auc": float("nan"), "preq/logloss": float("nan")}
        return {"preq/ne": sum(v["ne"] * v["rows"] for v in rows) / total,
                "preq/logloss": sum(v["logloss"] * v["rows"] for v in rows) / total,
                "preq/auc": sum(v["auc"] for v in rows) / len(rows)}


class IncrementalTrainer:
    """Streams day partitions through a :class:`Trainer` (see the module docstring for the protocol).

    Args:
        model: the model (already warm-started if wanted); must expose ``table_sizes`` and the
            ``embedding`` collection for growth (``GraphModel`` does).
        train_cfg: optimizer, batch size, seed, device (``epochs``/``max_steps``/``checkpoint_every`` of the
            trainer config are not used: the stream is one pass and checkpoints follow ``cfg``).
        cfg: the :class:`IncrementalConfig`.
        open_day: the :data:`DayLoaderFactory`.
        prune: pruning settings (dense if None).
        tracker: where ``train/loss``, ``preq/*`` and ``prune/*`` go.
        feature_names: sparse feature names in table order, to read ``table_sizes`` from a manifest mapping
            (default: ``model.schema``'s).
    """

    def __init__(self, model: nn.Module, train_cfg: TrainConfig, cfg: IncrementalConfig, open_day: DayLoaderFactory,
                 *, prune: PruneConfig | None = None, tracker: Tracker | None = None,
                 feature_names: Sequence[str] | None = None, callbacks: Sequence[Callback] = ()) -> None:
        self.cfg = cfg
        self.train_cfg = train_cfg
        self.open_day = open_day
        self.tracker: Tracker = tracker if tracker is not None else MemoryTracker("incremental")
        model = model.to(resolve_device(train_cfg.device))  # before the pruner makes masks on the model's device
        self.pruner = Pruner(model, prune or PruneConfig())
        hooks = ([PruningCallback(self.pruner)] if self.pruner.enabled else []) + list(callbacks)
        self.trainer = Trainer(model, train_cfg, self.tracker, hooks)
        self.model = self.trainer.model
        schema = getattr(model, "schema", None)
        if feature_names is None and schema is not None:
            feature_names = schema.sparse_names
        self.feature_names = list(feature_names) if feature_names is not None else None
        self.state = StreamState()
        self.grown: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ pieces
    def _save(self, manager: CheckpointManager | None, loader: Any) -> None:
        if manager is None or not is_main_process():  # data-parallel ranks hold identical state: rank 0 writes
            return
        self.state.cursor = loader.state_dict() if loader is not None else None
        payload = self.trainer.checkpoint_payload(loader)
        payload["stream"] = self.state.to_dict()
        manager.save(payload, self.trainer.state.step)

    def _resume(self, manager: CheckpointManager) -> tuple[str, Any]:
        """Restores the newest checkpoint; returns (its path, the loader of the unfinished day or None)."""
        path = manager.latest()
        assert path is not None
        payload = manager.load(path)
        if "stream" not in payload:
            raise ValueError(f"{path}: not an incremental-training checkpoint (no 'stream' state)")
        self.state = StreamState.from_dict(payload["stream"])
        sizes = (payload.get("table_sizes") or {}).get("embedding")
        if sizes and list(sizes) != list(self.model.table_sizes):
            self.trainer.grow_tables(sizes)
        loader = None
        if self.state.current_day is not None:
            loader = self.open_day(self.state.current_day, self.train_cfg.batch_size)
        self.trainer.load_payload(payload, loader if payload.get("data") is not None else None)
        logger.info("resumed from %s: step %d, %d days done, in day %s", path, self.state.step,
                    len(self.state.days_done), self.state.current_day)
        return path, loader

    def maybe_grow(self, root: str, day: str) -> None:
        """Grows the embedding tables to the manifest's ``table_sizes`` where those are larger."""
        current = list(self.model.table_sizes)
        if not current:
            return
        wanted = manifest_table_sizes(root, self.feature_names, len(current))
        if wanted is None:
            return
        target = [max(a, b) for a, b in zip(current, wanted)]
        if target != current:
            self.trainer.grow_tables(target)
            added = sum(target) - sum(current)
            self.grown.append({"day": day, "old": current, "new": target})
            self.tracker.log_metrics({"incr/grown_rows": float(added)}, step=len(self.state.days_done))
            logger.info("day %s: grew embedding tables %s -> %s (+%d rows)", day, current, target, added)

    def _evaluate_day(self, day: str) -> None:
        res = evaluate_stream(self.model, self.open_day(day, self.cfg.eval_batch_size), self.trainer.device)
        idx = len(self.state.days_done)
        self.state.preq[day] = {**res, "index": float(idx)}
        self.tracker.log_metrics({"preq/ne": res["ne"], "preq/auc": res["auc"], "preq/logloss": res["logloss"]},
                                 step=idx)
        logger.info("day %s (#%d) prequential: ne %.5f auc %.5f over %d rows", day, idx, res["ne"], res["auc"],
                    int(res["rows"]))

    def _train_day(self, day: str, loader: Any, manager: CheckpointManager | None,
                   on_step: Callable[[int, Batch], None] | None) -> None:
        self.state.current_day = day
        window, window_steps = 0.0, 0
        every = self.cfg.checkpoint_every
        for batch in loader:
            loss = float(self.trainer.train_step(batch))
            self.state.step = self.trainer.state.step
            self.state.rows += batch.batch_size
            self.state.last_loss = loss
            window += loss
            window_steps += 1
            if on_step is not None:
                on_step(self.state.step, batch)
            if self.state.step % self.cfg.log_every == 0:
                self.tracker.log_metrics({"train/loss": window / window_steps}, step=self.state.step)
                window, window_steps = 0.0, 0
            if every and self.state.step % every == 0:
                self._save(manager, loader)
        if window_steps:
            self.tracker.log_metrics({"train/loss": window / window_steps}, step=self.state.step)
        self.state.days_done.append(day)
        self.state.current_day = None
        self._save(manager, None)

    # ------------------------------------------------------------------ the stream
    def run(self, root: str, *, days: Iterable[str] | None = None, start_after: str | None = None,
            checkpoint_dir: str | None = None, on_step: Callable[[int, Batch], None] | None = None) -> StreamResult:
        """Evaluates-then-trains every new day of ``root`` in order (resuming from ``checkpoint_dir``).

        Args:
            root: the dataset root (``day=YYYY-MM-DD`` partitions, optional ``_manifest.json``).
            days: restrict to these days (still in time order); None = every day present (and, in follow
                mode, every day that lands).
            start_after: skip days up to and including this one (e.g. the warm-start model's last day); a
                resumed stream continues after its own last finished day instead.
            checkpoint_dir: where checkpoints go and where a killed run is resumed from.
            on_step: called after every optimizer step with (step, batch) — progress reporting and tests.

        Returns:
            The :class:`StreamResult`.
        """
        manager = CheckpointManager(checkpoint_dir, self.cfg.keep_checkpoints) if checkpoint_dir else None
        resumed_from, loader = None, None
        if manager is not None and manager.latest() is not None:
            resumed_from, loader = self._resume(manager)
        elif self.trainer.state.step == 0:
            seed_everything(self.train_cfg.seed)
        only = list(days) if days is not None else None
        if self.state.current_day is not None:
            self._train_day(self.state.current_day, loader, manager, on_step)
        last = self.state.days_done[-1] if self.state.days_done else start_after
        for day in iter_new_days(root, after=last, only=only, follow=self.cfg.follow,
                                 poll_interval_s=self.cfg.poll_interval_s, max_idle_s=self.cfg.max_idle_s):
            self.maybe_grow(root, day)
            if self.cfg.prequential and day not in self.state.preq:
                self._evaluate_day(day)
            self._train_day(day, self.open_day(day, self.train_cfg.batch_size), manager, on_step)
        if self.pruner.enabled:
            self.tracker.log_metrics(self.pruner.metrics(), step=self.state.step)
        return StreamResult(days_trained=list(self.state.days_done), rows=self.state.rows, steps=self.state.step,
                            last_loss=self.state.last_loss, preq=dict(self.state.preq), resumed_from=resumed_from,
                            grown=list(self.grown))

