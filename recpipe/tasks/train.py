"""Train step executor: plain or streaming-incremental training of the CTR model, with optional pruning.

Modes (``TrainTaskConfig.incremental``):

* **incremental** (default) — :class:`recpipe.train.incremental.IncrementalTrainer`: the selected days are
  streamed once in time order, each evaluated BEFORE it is trained on (prequential ``preq/ne``/``preq/auc``
  per day), embedding tables grown to the dataset manifest's sizes, checkpoints with the data cursor every
  ``stream.checkpoint_every`` steps (a killed step re-run with the same ``checkpoint_dir`` resumes exactly),
  and ``stream.follow`` keeps polling for new day partitions.
* **plain** — :class:`recpipe.train.loop.Trainer` over all selected days as one loader (``trainer.epochs``
  passes, optional bounded shuffle), resumable from ``checkpoint_dir`` too; no prequential metrics.

Warm start: ``warm_start`` is a model directory or ``models:/<name>@<alias>`` (resolved through
:func:`recpipe.tracking.registry.resolve_alias_dir`; an alias that does not exist yet means "first run, train
from scratch"). Days the warm-start model already saw (``extra.last_day`` in its ``model.json``) are skipped.

Outputs in ``model_dir``: ``model.json`` + ``model.pt`` (:func:`recpipe.models.save_model`, pruned weights
hold zeros), ``pruning.pt`` (masks + regrowth state, so the next warm start continues the adaptive pattern)
and ``model.pruned.pt`` (compact CSR/bitmask export, :mod:`recpipe.train.prune_export`) when pruning is on,
and ``train_result.json``.

CLI::

    python -m recpipe.tasks.train --dataset-root data/ --model-dir out/model \\
        --config '{"arch": "dlrm", "prune": {"mode": "adaptive", "target_sparsity": 0.9}}' \\
        [--days 2026-01-01,2026-01-02] [--before-day 2026-01-05] [--warm-start models:/recpipe-ctr@champion] \\
        [--checkpoint-dir ckpt/]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from recpipe.config import JsonConfig
from recpipe.data.loader import LoaderConfig, ParquetLoader
from recpipe.data.parquet_io import day_files, list_days, read_schema
from recpipe.models import PRESETS, ArchSpec, build_model, read_model_config, save_model
from recpipe.quant import training_model_dir
from recpipe.schema import SCHEMA_VERSION, Schema
from recpipe.tasks.base import Result, config_from_arg, step_tracker, write_json
from recpipe.tracking.base import MemoryTracker, Tracker
from recpipe.train.checkpoint import warm_start as load_warm_start
from recpipe.train.distributed import (
    DistInfo,
    EqualShards,
    GradientSync,
    broadcast_model,
    init_from_env,
    is_main_process,
)
from recpipe.train.incremental import (
    IncrementalConfig,
    IncrementalTrainer,
    manifest_table_sizes,
    parquet_day_factory,
)
from recpipe.train.loop import TrainConfig, Trainer, resolve_device
from recpipe.train.prune_export import export_compact
from recpipe.train.pruning import PruneConfig, Pruner, PruningCallback

logger = logging.getLogger(__name__)

PRUNER_FILE = "pruning.pt"
OPTIM_FILE = "optimizer.pt"
COMPACT_FILE = "model.pruned.pt"
RESULT_FILE = "train_result.json"
MANIFEST = "_manifest.json"
REGISTRY_PREFIX = "models:/"


@dataclass(frozen=True)
class TrainTaskConfig(JsonConfig):
    """The train step's settings.

    Attributes:
        arch: preset architecture name (``dlrm``, ``dcn``, ``deepfm``) used when ``spec`` is None.
        spec: a full :class:`recpipe.models.ArchSpec` as a dict (e.g. from architecture search); overrides
            ``arch``. With a warm start and no spec, the warm-start model's spec is used.
        embedding_dim: D for the preset.
        trainer: optimizer, batch size, seed, device (and epochs for plain mode).
        prune: pruning (``mode`` none / fixed / adaptive).
        incremental: True = stream days once with prequential evaluation; False = plain training.
        stream: settings of the incremental driver (checkpoint cadence, follow mode ...).
        days: days to train on (empty = every day present, minus those the warm-start model saw).
        shuffle_window: plain mode only: bounded shuffle window in batches (0 = time order).
        distributed: data-parallel under ``torchrun`` (``RANK``/``WORLD_SIZE`` from the environment; gloo on
            CPU, NCCL on GPU): each rank reads its shard, gradients are averaged, rank 0 writes the model,
            checkpoints and tracker logs (see :mod:`recpipe.train.distributed`).
    """

    arch: str = "dlrm"
    spec: Mapping[str, Any] | None = None
    embedding_dim: int = 16
    trainer: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    incremental: bool = True
    stream: IncrementalConfig = field(default_factory=IncrementalConfig)
    days: tuple[str, ...] = ()
    shuffle_window: int = 0
    distributed: bool = False

    def __post_init__(self) -> None:
        if self.spec is None and self.arch not in PRESETS:
            raise ValueError(f"TrainTaskConfig.arch: {self.arch!r} not in {sorted(PRESETS)} (or give spec)")


# ---------------------------------------------------------------------------------------------- inputs
def dataset_schema(root: str) -> Schema:
    """The dataset's schema (manifest ``schema``, else the first file's Parquet metadata), with the manifest's
    ``table_sizes`` applied so the model gets the current vocabulary capacity."""
    manifest_path = os.path.join(root, MANIFEST)
    manifest: dict[str, Any] = {}
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as fh:
            try:
                manifest = json.load(fh)
            except json.JSONDecodeError as e:
                raise ValueError(f"{manifest_path}: invalid JSON: {e}") from e
    if manifest.get("schema"):
        schema = Schema.from_dict(manifest["schema"], source=manifest_path)
    else:
        days = list_days(root)
        files = [f for d in days for f in day_files(root, d)]
        if not files:
            raise FileNotFoundError(f"{root}: no processed day partitions (day=YYYY-MM-DD/*.parquet)")
        schema = read_schema(root, files[0])
    sizes = manifest_table_sizes(root, schema.sparse_names, schema.num_sparse)
    if sizes is not None:
        schema = schema.with_table_sizes(dict(zip(schema.sparse_names, sizes)))
    return schema


def resolve_warm_start(source: str | None, scratch_dir: str) -> tuple[str | None, str]:
    """(local model dir or None, description) for a dir or ``models:/<name>@<alias>``.

    Raises:
        FileNotFoundError: a directory source that does not exist.
        ValueError: a malformed registry URI.
    """
    if not source:
        return None, "none"
    if source.startswith(REGISTRY_PREFIX):
        ref = source[len(REGISTRY_PREFIX):]
        if "@" not in ref or not ref.split("@", 1)[0] or not ref.split("@", 1)[1]:
            raise ValueError(f"warm_start {source!r}: want models:/<name>@<alias>")
        name, alias = ref.split("@", 1)
        from recpipe.tracking.registry import resolve_alias_dir

        local = resolve_alias_dir(alias, scratch_dir, name=name)
        if local is None:
            logger.warning("warm start %s: alias not set yet (first run); training from scratch", source)
            return None, f"{source} (alias not set: from scratch)"
        return training_model_dir(local), source  # a served (quantized) champion carries its float model
    if not os.path.isdir(source):
        raise FileNotFoundError(f"warm_start {source!r}: no such model directory")
    return training_model_dir(source), source


def select_days(root: str, *, wanted: Sequence[str] | None, before_day: str | None, after_day: str | None) -> list[str]:
    """Days to train, ascending: ``wanted`` (or all present), < ``before_day``, > ``after_day``.

    Raises:
        FileNotFoundError: a wanted day is not under ``root``.
    """
    present = list_days(root)
    if wanted:
        missing = sorted(set(wanted) - set(present))
        if missing:
            raise FileNotFoundError(f"{root}: requested days {missing} are not present")
        present = sorted(set(wanted))
    return [d for d in present if (before_day is None or d < before_day) and (after_day is None or d > after_day)]


def _build(cfg: TrainTaskConfig, schema: Schema, warm_dir: str | None) -> tuple[Any, ArchSpec, dict[str, Any]]:
    """The model (warm-started if ``warm_dir``), its spec, and the warm-start model's ``extra``."""
    warm_meta = read_model_config(warm_dir) if warm_dir else {}
    if cfg.spec is not None:
        spec = ArchSpec.from_dict(cfg.spec)
    elif warm_meta:
        spec = ArchSpec.from_dict(warm_meta["spec"])
    else:
        spec = PRESETS[cfg.arch](cfg.embedding_dim)
    torch.manual_seed(cfg.trainer.seed)
    warm_sizes = list(warm_meta.get("table_sizes") or [])
    if warm_dir and len(warm_sizes) == schema.num_sparse:
        # built at the warm model's sizes so its optimizer state fits; grown to the data's after it is loaded
        model = build_model(spec, schema.with_table_sizes(dict(zip(schema.sparse_names, map(int, warm_sizes)))))
    else:
        model = build_model(spec, schema)
    if warm_dir:
        info = load_warm_start(model, warm_dir)
        logger.info("warm start: %s", info)
    return model, spec, dict(warm_meta.get("extra") or {})


def _restore_optimizer(trainer: Trainer, warm_dir: str | None, schema: Schema) -> bool:
    """Loads the warm-start model's optimizer state (Adam moments, row-wise Adagrad sums) into ``trainer``, then
    grows the embedding tables to the data's sizes (the row state moves with the rows). Returns whether state
    was restored (a model saved without ``optimizer.pt`` restarts its accumulators)."""
    restored = False
    if warm_dir and os.path.exists(os.path.join(warm_dir, OPTIM_FILE)):
        trainer.optimizers.load_state_dict(torch.load(os.path.join(warm_dir, OPTIM_FILE), map_location="cpu",
                                                      weights_only=True))
        restored = True
    current = list(getattr(trainer.model, "table_sizes", []) or [])
    if current:
        target = [max(a, b) for a, b in zip(current, schema.table_sizes())]
        if target != current:
            trainer.grow_tables(target)
    return restored


# ---------------------------------------------------------------------------------------------- run
def run(cfg: TrainTaskConfig, *, dataset_root: str, model_dir: str, days: Sequence[str] | None = None,
        before_day: str | None = None, warm_start: str | None = None, checkpoint_dir: str | None = None,
        tracker: Tracker | None = None) -> Result:
    """Trains on ``dataset_root`` and writes the model to ``model_dir``.

    Args:
        cfg: the step config.
        dataset_root: processed dataset root (``day=YYYY-MM-DD`` partitions, ``_manifest.json``).
        model_dir: output model directory.
        days: days to train (overrides ``cfg.days``); None/empty = all present.
        before_day: only days strictly before this one (the held-out evaluation day of a pipeline run).
        warm_start: model dir or ``models:/<name>@<alias>``; None = from scratch.
        checkpoint_dir: checkpoints go here; a re-run with the same dir resumes where a killed one stopped.
        tracker: where metrics go (in-memory if None).

    Returns:
        Result with metrics ``train/loss``, ``train/rows``, ``train/days``, ``preq/ne``, ``preq/auc``,
        ``preq/logloss`` (row-weighted over the days, incremental mode), ``prune/global``, ``model/bytes``,
        ``model/compact_bytes``; metadata: spec, schema_version, days trained (this run and in total), rows,
        warm-start source, per-day prequential results.
    """
    tracker = tracker if tracker is not None else MemoryTracker("train")
    dist_info = init_from_env() if cfg.distributed else DistInfo()
    if dist_info.world_size > 1:
        if not is_main_process():
            tracker = MemoryTracker(f"train-rank{dist_info.rank}")  # rank 0 alone logs to the real tracker
        if cfg.trainer.device in ("auto", "cuda"):
            cfg = cfg.replace(trainer=cfg.trainer.replace(device=dist_info.device))
    sync = [GradientSync()] if dist_info.world_size > 1 else []
    schema = dataset_schema(dataset_root)
    with tempfile.TemporaryDirectory(prefix="recpipe-warm-") as scratch:
        warm_dir, warm_desc = resolve_warm_start(warm_start, scratch)
        model, spec, warm_extra = _build(cfg, schema, warm_dir)
        prior_days = list(warm_extra.get("days_trained", []))
        todo = select_days(dataset_root, wanted=list(days or cfg.days) or None, before_day=before_day,
                           after_day=warm_extra.get("last_day"))
        pruner_state = None
        if warm_dir and cfg.prune.mode != "none" and os.path.exists(os.path.join(warm_dir, PRUNER_FILE)):
            pruner_state = torch.load(os.path.join(warm_dir, PRUNER_FILE), map_location="cpu", weights_only=True)
    tracker.log_params({"train.mode": "incremental" if cfg.incremental else "plain", "train.spec": spec.to_json(),
                        "train.prune": cfg.prune.to_json(), "train.days": ",".join(todo),
                        "train.warm_start": warm_desc})
    logger.info("training %s on %d day(s) %s (warm start: %s)", spec.fingerprint(), len(todo), todo[:3], warm_desc)

    preq: dict[str, dict[str, float]] = {}
    metrics: dict[str, float] = {}
    if cfg.incremental:
        inc = IncrementalTrainer(model, cfg.trainer, cfg.stream,
                                 parquet_day_factory(dataset_root, schema, rank=dist_info.rank,
                                                     world_size=dist_info.world_size),
                                 prune=cfg.prune, tracker=tracker, feature_names=schema.sparse_names, callbacks=sync)
        optim_restored = _restore_optimizer(inc.trainer, warm_dir, schema)
        if sync:
            broadcast_model(inc.model)
        if pruner_state is not None:
            inc.pruner.load_state_dict(pruner_state, source=f"{warm_dir}/{PRUNER_FILE}")
        if cfg.stream.follow:  # open-ended: every day after the warm-start model's, as they land
            wanted = list(days or cfg.days) or None
            stream = inc.run(dataset_root, days=wanted, start_after=warm_extra.get("last_day"),
                             checkpoint_dir=checkpoint_dir)
        else:
            stream = inc.run(dataset_root, days=todo, checkpoint_dir=checkpoint_dir)
        pruner, trained, rows, last_loss, preq = inc.pruner, stream.days_trained, stream.rows, stream.last_loss, \
            stream.preq
        metrics.update(stream.preq_overall())
        model, optimizers = inc.model, inc.trainer.optimizers
    else:
        model = model.to(resolve_device(cfg.trainer.device))  # masks are made on the model's device
        pruner = Pruner(model, cfg.prune)
        if pruner_state is not None:
            pruner.load_state_dict(pruner_state, source=f"{warm_dir}/{PRUNER_FILE}")
        trainer = Trainer(model, cfg.trainer, tracker, ([PruningCallback(pruner)] if pruner.enabled else []) + sync)
        optim_restored = _restore_optimizer(trainer, warm_dir, schema)
        trained, rows, last_loss = list(todo), 0, float("nan")
        if todo:
            loader = ParquetLoader(dataset_root, LoaderConfig(batch_size=cfg.trainer.batch_size,
                                                              shuffle_window=cfg.shuffle_window,
                                                              seed=cfg.trainer.seed), schema=schema, days=todo,
                                   rank=dist_info.rank, world_size=dist_info.world_size)
            if sync:
                loader = EqualShards(loader, dist_info.world_size)
            summary = trainer.fit(loader, checkpoint_dir=checkpoint_dir, resume=True)
            rows, last_loss = trainer.state.examples, summary.last_window_loss
            metrics.update(summary.metrics())
        model, optimizers = trainer.model, trainer.optimizers
    if sync:
        rows = _sum_over_ranks(rows)  # each rank counted its own shard
    metrics.update({"train/loss": last_loss, "train/rows": float(rows), "train/days": float(len(trained))})

    all_days = prior_days + [d for d in trained if d not in prior_days]
    extra = {"days_trained": all_days, "last_day": all_days[-1] if all_days else None,
             "days_this_run": trained, "rows_this_run": rows, "warm_start": warm_desc,
             "prune": cfg.prune.to_dict(), "incremental": cfg.incremental}
    extra["optimizer_state_restored"] = optim_restored
    if is_main_process():  # every rank holds the same weights; one writes
        save_model(model, model_dir, schema=schema, extra=extra)
        torch.save(optimizers.state_dict(), os.path.join(model_dir, OPTIM_FILE))  # tomorrow's warm start
    state = model.state_dict()
    metrics["model/bytes"] = float(sum(t.numel() * t.element_size() for t in state.values()))
    outputs = {"model_dir": model_dir}
    if pruner.enabled and is_main_process():
        torch.save(pruner.state_dict(), os.path.join(model_dir, PRUNER_FILE))
        report = export_compact(state, [f"{n}.weight" for n in pruner.masks], os.path.join(model_dir, COMPACT_FILE),
                                meta={"spec": spec.to_dict(), "sparsity": pruner.layer_sparsity()})
        metrics.update(pruner.metrics())
        metrics.update({"model/compact_bytes": float(report.compact_bytes),
                        "model/pruned_dense_bytes": float(report.pruned_dense_bytes),
                        "model/pruned_compact_bytes": float(report.pruned_compact_bytes),
                        "model/compact_file_bytes": float(report.file_bytes)})
        outputs["compact_model"] = os.path.join(model_dir, COMPACT_FILE)
    else:
        metrics["model/compact_bytes"] = metrics["model/bytes"]
    # Per-day preq/* and per-layer prune/sparsity/* series are already in the tracker; add run-level summaries.
    summary = {k: v for k, v in metrics.items() if not k.startswith(("prune/sparsity/", "preq/"))}
    summary.update({f"preq/overall_{k[len('preq/'):]}": v for k, v in metrics.items() if k.startswith("preq/")})
    tracker.log_metrics(summary, step=len(all_days))
    metadata = {"spec": spec.to_dict(), "spec_fingerprint": spec.fingerprint(), "schema_version": SCHEMA_VERSION,
                "days_trained": trained, "all_days_trained": all_days, "rows": rows, "warm_start": warm_desc,
                "mode": "incremental" if cfg.incremental else "plain", "preq_by_day": preq,
                "mlflow_run_id": getattr(tracker, "run_id", None)}
    result = Result(metrics=metrics, metadata=metadata, outputs=outputs)
    if is_main_process():
        write_json(os.path.join(model_dir, RESULT_FILE), result.to_dict())
        tracker.log_artifact(model_dir, "model")  # the trained model travels with its MLflow run
    return result


def _sum_over_ranks(value: int) -> int:
    t = torch.tensor([value], dtype=torch.int64)
    torch.distributed.all_reduce(t)
    return int(t.item())


def main(argv: Sequence[str] | None = None) -> Result:
    """CLI: ``python -m recpipe.tasks.train --dataset-root D --model-dir M [--config JSON] [...]``."""
    ap = argparse.ArgumentParser(prog="recpipe train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="", help="TrainTaskConfig as JSON text, or a path to a JSON file")
    ap.add_argument("--dataset-root", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--days", default="", help="comma-separated ISO days (default: all)")
    ap.add_argument("--before-day", default=None, help="train only on days strictly before this one")
    ap.add_argument("--warm-start", default=None, help="model dir or models:/<name>@<alias>")
    ap.add_argument("--checkpoint-dir", default=None, help="checkpoints; re-running resumes from here")
    ap.add_argument("--follow", action="store_true", help="keep polling for new day partitions")
    ap.add_argument("--distributed", action="store_true", help="data-parallel under torchrun (env RANK/WORLD_SIZE)")
    args = ap.parse_args(argv)
    cfg = config_from_arg(TrainTaskConfig, args.config)
    if args.follow:
        cfg = cfg.replace(stream=cfg.stream.replace(follow=True))
    if args.distributed:
        cfg = cfg.replace(distributed=True)
        init_from_env()
    days = [d for d in args.days.split(",") if d] or None
    ctx = step_tracker("train") if is_main_process() else contextlib.nullcontext(MemoryTracker("train"))
    with ctx as tracker:
        result = run(cfg, dataset_root=args.dataset_root, model_dir=args.model_dir, days=days,
                     before_day=args.before_day, warm_start=args.warm_start, checkpoint_dir=args.checkpoint_dir,
                     tracker=tracker)
    logger.info("result: %s", json.dumps(result.to_dict(), default=str))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
