"""Step ``search``: AutoCTR architecture search, then a full-fidelity comparison with hand-crafted baselines.

``run`` does everything in one step (trials in local worker processes):

1. reads ``train_days`` (rows capped by ``max_train_rows``) and ``eval_days`` from processed Parquet; the last
   ``valid_fraction`` of the training rows (latest in time) is the validation split for trials and early stop;
2. evolutionary search with ranker guidance over low-fidelity trials, resumable from ``history.jsonl``;
3. retrains the ``retrain_top_k`` best architectures and the baselines (DLRM, DCN, DeepFM) under the SAME
   full-fidelity budget and scores them on the ``eval_days`` rows.

Outputs in ``output_dir``: ``history.jsonl`` (every trial), ``ranked.json`` (successful trials, best first),
``best_spec.json`` (the winner's :class:`ArchSpec`, loadable with ``ArchSpec.load``), ``comparison.json``
(per-contender metrics, summary, search cost in multiples of one full training).

For a KFP ``ParallelFor`` over trial batches the same search runs as separate steps: :func:`propose` writes the
next generation's specs in ``num_batches`` files, :func:`run_trials` evaluates one file, :func:`commit`
appends the results to the history, and :func:`finalize` does step 3 from a finished history. The ``fanout_*``
functions wrap the first three around self-contained folders (one per pipeline artifact; a pod cannot read
another pod's local paths): ``fanout_propose`` → proposals folder (``history.jsonl`` so far, ``context.json``,
``batch-<i>.json`` for EVERY slot, empty ones once the budget runs short, ``pending.json``); ``fanout_trials``
→ outcomes folder (``outcomes.json``); ``fanout_commit`` → history folder (``history.jsonl``).

Run: ``python -m recpipe.tasks.search --dataset-root D --output-dir O --train-days 2026-01-01,2026-01-02
--eval-days 2026-01-03 [--config JSON] [--history H]`` (with ``--history``: only the final comparison).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from recpipe.config import JsonConfig
from recpipe.data.loader import LoaderConfig, ParquetLoader
from recpipe.data.parquet_io import day_files, read_schema
from recpipe.models.spec import ArchSpec
from recpipe.schema import Schema
from recpipe.search.compare import Contender, baseline_specs, compare
from recpipe.search.data import TensorRows
from recpipe.search.evolution import EvolutionConfig, EvolutionarySearch, Proposal, ranked
from recpipe.search.history import TrialOutcome, TrialRecord, load_history
from recpipe.search.space import SearchSpace, SpaceConfig, spec_from_mapping
from recpipe.search.trials import TrialConfig, TrialRunner
from recpipe.tasks.base import Result, read_json, step_tracker, write_json
from recpipe.tracking.base import MemoryTracker, Tracker

logger = logging.getLogger(__name__)

HISTORY, RANKED, BEST, COMPARISON, PENDING = "history.jsonl", "ranked.json", "best_spec.json", "comparison.json", \
    "pending.json"
CONTEXT, OUTCOMES = "context.json", "outcomes.json"


def _full_fidelity() -> TrialConfig:
    return TrialConfig(max_train_rows=None, max_valid_rows=None, hash_cap=None, embedding_dim=None,
                       max_steps=3000, eval_every=250, patience=3)


@dataclass(frozen=True)
class SearchConfig(JsonConfig):
    """Settings of the ``search`` step.

    Attributes:
        space: the search space (K blocks, widths ...).
        evolution: budget, population, selection, survival and ranker settings.
        trial: LOW-fidelity trial settings (subsample, hash cap, small D, few steps, early stop).
        full: FULL-fidelity settings shared by the retrained winners and every baseline (the same budget).
        baselines: presets compared against (``recpipe.models.spec.PRESETS`` names).
        retrain_top_k: best searched architectures retrained at full fidelity (winner chosen on validation).
        valid_fraction: latest share of the training rows used for validation.
        max_train_rows: rows read from the training days (earliest first); None: all.
        max_eval_rows: rows read from the evaluation days; None: all.
        read_batch_size: loader batch size while reading.
        workers: trial worker processes (spawned); 1 runs trials inline.
    """

    space: SpaceConfig = field(default_factory=SpaceConfig)
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    full: TrialConfig = field(default_factory=_full_fidelity)
    baselines: tuple[str, ...] = ("dlrm", "dcn", "deepfm")
    retrain_top_k: int = 3
    valid_fraction: float = 0.2
    max_train_rows: int | None = 1_000_000
    max_eval_rows: int | None = 500_000
    read_batch_size: int = 8192
    workers: int = 2


# ---------------------------------------------------------------------- data
def _schema(dataset_root: str, days: Sequence[str]) -> Schema:
    for d in days:
        files = day_files(dataset_root, d)
        if files:
            return read_schema(dataset_root, files[0])
    raise FileNotFoundError(f"{dataset_root}: no Parquet files in days {list(days)}")


def read_rows(dataset_root: str, days: Sequence[str], *, max_rows: int | None, batch_size: int = 8192) -> TensorRows:
    """Reads ``days`` of processed Parquet (time order, first ``max_rows`` rows) into memory."""
    if not days:
        raise ValueError(f"{dataset_root}: no days given")
    loader = ParquetLoader(dataset_root, LoaderConfig(batch_size=batch_size), days=list(days))
    rows = TensorRows.from_batches(loader, loader.schema.table_sizes(), max_rows=max_rows)
    logger.info("read %d rows of %s from %s", rows.num_rows, list(days), dataset_root)
    return rows


def _split_train(cfg: SearchConfig, dataset_root: str, train_days: Sequence[str]) -> tuple[TensorRows, TensorRows]:
    rows = read_rows(dataset_root, train_days, max_rows=cfg.max_train_rows, batch_size=cfg.read_batch_size)
    return rows.split(cfg.valid_fraction)


def _space(cfg: SearchConfig, data: Schema | TensorRows) -> SearchSpace:
    """The search space for a dataset with ``data.num_dense`` dense and ``data.num_sparse`` sparse features."""
    return SearchSpace(cfg.space, data.num_dense, data.num_sparse)


# ---------------------------------------------------------------------- one-step search
def run(cfg: SearchConfig, *, dataset_root: str, output_dir: str, train_days: Sequence[str],
        eval_days: Sequence[str], tracker: Tracker | None = None) -> Result:
    """Searches, retrains the best and the baselines at full fidelity, and writes the four outputs.

    Args:
        cfg: step settings.
        dataset_root: processed Parquet root (``day=YYYY-MM-DD/part-*.parquet``).
        output_dir: where ``history.jsonl`` (read first: the search resumes), ``ranked.json``,
            ``best_spec.json`` and ``comparison.json`` go.
        train_days: days for training and validation (validation = their latest rows).
        eval_days: held-out days for the final comparison.
        tracker: parent run; each trial and each final training is a nested run.

    Returns:
        metrics ``search/*`` (trials, best low-fidelity NE, searched vs best baseline test AUC/NE, cost multiples);
        outputs: the four paths.
    """
    tracker = tracker or MemoryTracker("search")
    tracker.log_params({"search_config": cfg.to_json(), "train_days": ",".join(train_days),
                        "eval_days": ",".join(eval_days)})
    os.makedirs(output_dir, exist_ok=True)
    train, valid = _split_train(cfg, dataset_root, train_days)
    test = read_rows(dataset_root, eval_days, max_rows=cfg.max_eval_rows, batch_size=cfg.read_batch_size)
    space = _space(cfg, train)
    history_path = os.path.join(output_dir, HISTORY)
    with TrialRunner(cfg.trial.prepare(train, valid=False), cfg.trial.prepare(valid, valid=True), cfg.trial,
                     workers=cfg.workers) as runner:
        history = EvolutionarySearch(space, cfg.evolution, runner, history_path=history_path, tracker=tracker).run()
    return _finish(cfg, history, history_path=history_path, output_dir=output_dir, data=(train, valid, test),
                   train_days=train_days, eval_days=eval_days, tracker=tracker)


# ---------------------------------------------------------------------- ranking + full-fidelity comparison
def _finish(cfg: SearchConfig, history: list[TrialRecord], *, history_path: str, output_dir: str,
            data: tuple[TensorRows, TensorRows, TensorRows], train_days: Sequence[str], eval_days: Sequence[str],
            tracker: Tracker) -> Result:
    """Ranks ``history``, retrains the top-k and the baselines at full fidelity, writes the outputs (see run)."""
    train, valid, test = data
    best = ranked(history, higher_is_better=cfg.evolution.higher_is_better)
    if not best:
        raise RuntimeError(f"{history_path}: no trial succeeded; see the errors in the history")
    ranked_path = os.path.join(output_dir, RANKED)
    write_json(ranked_path, {"objective": cfg.evolution.objective, "architectures": [
        {"rank": i + 1, "fingerprint": r.fingerprint, "quality": r.quality, "complexity": r.complexity,
         "trial": r.trial, "origin": r.origin, "metrics": r.outcome.metrics, "spec": r.spec}
        for i, r in enumerate(best)]})

    top = [Contender(f"searched-{i + 1}-{r.fingerprint}", "searched", r.arch())
           for i, r in enumerate(best[: cfg.retrain_top_k])]
    contenders = top + baseline_specs(cfg.baselines, cfg.space.embedding_dim)
    result = compare(contenders, train, valid, test, cfg.full, tracker=tracker)
    winner = result["runs"][result["best_searched"]] if result["best_searched"] else None
    if winner is None:
        raise RuntimeError("full-fidelity retraining failed for every searched architecture: "
                           + "; ".join(f"{n}: {r['error']}" for n, r in result["runs"].items()))
    best_path = os.path.join(output_dir, BEST)
    write_json(best_path, winner["spec"])

    trial_examples = sum(r.outcome.train_examples for r in history)
    trial_wall = sum(r.outcome.wall_s for r in history)
    trial_cpu = sum(r.outcome.cpu_s for r in history)
    retrain_examples = sum(result["runs"][c.name]["train_examples"] for c in top)
    retrain_cpu = sum(result["runs"][c.name]["cpu_s"] for c in top)
    full_examples, full_cpu = max(winner["train_examples"], 1), max(winner["cpu_s"], 1e-9)
    cost = {"trials": len(history), "trial_train_examples": trial_examples, "trial_wall_s": trial_wall,
            "trial_cpu_s": trial_cpu, "full_train_examples": winner["train_examples"],
            "full_wall_s": winner["wall_s"], "full_cpu_s": winner["cpu_s"],
            "search_x_examples": trial_examples / full_examples,
            "search_x_cpu": trial_cpu / full_cpu,
            "search_x_wall": trial_wall / max(winner["wall_s"], 1e-9),
            "search_plus_retrain_x_examples": (trial_examples + retrain_examples) / full_examples,
            "search_plus_retrain_x_cpu": (trial_cpu + retrain_cpu) / full_cpu}
    comparison = {**result, "cost": cost, "train_days": list(train_days), "eval_days": list(eval_days),
                  "rows": {"train": train.num_rows, "valid": valid.num_rows, "test": test.num_rows}}
    comparison_path = os.path.join(output_dir, COMPARISON)
    write_json(comparison_path, comparison)
    tracker.log_dict(winner["spec"], BEST)
    tracker.log_dict(comparison, COMPARISON)

    metrics = {"search/trials": float(len(history)), "search/best_low_fidelity": best[0].quality,
               **{f"search/{k}": float(v) for k, v in result["summary"].items()},
               "search/cost_x_examples": cost["search_x_examples"], "search/cost_x_cpu": cost["search_x_cpu"],
               "search/cost_x_wall": cost["search_x_wall"]}
    tracker.log_metrics(metrics)
    spec = ArchSpec.from_dict(winner["spec"])
    return Result(metrics=metrics,
                  metadata={"best_fingerprint": spec.fingerprint(), "best_canonical": spec.canonical(),
                            "trials": len(history), "config": cfg.to_dict(), "mlflow_run_id": tracker.run_id},
                  outputs={"history": history_path, "ranked": ranked_path, "best_spec": best_path,
                           "comparison": comparison_path})


def finalize(cfg: SearchConfig, *, dataset_root: str, history_path: str, output_dir: str,
             train_days: Sequence[str], eval_days: Sequence[str], tracker: Tracker | None = None) -> Result:
    """Step 3 of :func:`run` for a history evaluated elsewhere (the fan-out): rank, retrain, compare.

    Args:
        cfg: step settings (the same as the search's: ``full``, ``baselines``, ``retrain_top_k`` ... apply here).
        dataset_root: processed Parquet root.
        history_path: a finished ``history.jsonl``; copied into ``output_dir`` (which becomes self-contained).
        output_dir: where ``history.jsonl``, ``ranked.json``, ``best_spec.json`` and ``comparison.json`` go.
        train_days / eval_days / tracker: as in :func:`run`.

    Returns:
        the same metrics, metadata and outputs as :func:`run`.
    """
    history = load_history(history_path)
    if not history:
        raise FileNotFoundError(f"{history_path}: no trials to rank (missing or empty history)")
    tracker = tracker or MemoryTracker("search")
    tracker.log_params({"search_config": cfg.to_json(), "train_days": ",".join(train_days),
                        "eval_days": ",".join(eval_days)})
    os.makedirs(output_dir, exist_ok=True)
    own = os.path.join(output_dir, HISTORY)
    if os.path.abspath(history_path) != os.path.abspath(own):
        shutil.copyfile(history_path, own)
    train, valid = _split_train(cfg, dataset_root, train_days)
    test = read_rows(dataset_root, eval_days, max_rows=cfg.max_eval_rows, batch_size=cfg.read_batch_size)
    return _finish(cfg, history, history_path=own, output_dir=output_dir, data=(train, valid, test),
                   train_days=train_days, eval_days=eval_days, tracker=tracker)


# ---------------------------------------------------------------------- ParallelFor building blocks
def _search(cfg: SearchConfig, space: SearchSpace, history_path: str, tracker: Tracker | None) -> EvolutionarySearch:
    def no_local_evaluation(specs: Sequence[ArchSpec]) -> list[TrialOutcome]:
        raise RuntimeError("the split search evaluates through run_trials, not in-process")

    search = EvolutionarySearch(space, cfg.evolution, no_local_evaluation, history_path=history_path, tracker=tracker)
    search.resume()
    return search


def propose(cfg: SearchConfig, *, dataset_root: str, history_path: str, output_dir: str, train_days: Sequence[str],
            num_batches: int) -> Result:
    """Writes the next generation's specs as ``batch-<i>.json`` files (and ``pending.json`` for :func:`commit`).

    Returns:
        outputs ``batches`` (comma-separated paths, empty when the budget is spent) and ``pending``;
        metadata ``generation`` and ``done`` (True when nothing is left to evaluate).
    """
    if num_batches < 1:
        raise ValueError(f"propose: num_batches must be >= 1, got {num_batches}")
    search = _search(cfg, _space(cfg, _schema(dataset_root, train_days)), history_path, None)
    generation, props = search.propose_next()
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for i in range(min(num_batches, len(props))):
        part = props[i::num_batches]
        path = os.path.join(output_dir, f"batch-{i}.json")
        write_json(path, {"generation": generation, "specs": [p.spec.to_dict() for p in part]})
        paths.append(path)
    pending = os.path.join(output_dir, PENDING)
    write_json(pending, {"generation": generation, "num_batches": len(paths), "proposals": [
        {"spec": p.spec.to_dict(), "origin": p.origin, "detail": p.detail, "parent": p.parent, "guided": p.guided}
        for p in props]})
    return Result(metadata={"generation": generation, "done": not props, "proposals": len(props)},
                  outputs={"batches": ",".join(paths), "pending": pending})


def run_trials(cfg: SearchConfig, *, dataset_root: str, specs_path: str, output_path: str,
               train_days: Sequence[str], tracker: Tracker | None = None) -> Result:
    """Evaluates ONE file of specs (``{"specs": [...]}`` or a bare list) with the low-fidelity trial settings.

    Reads and splits ``train_days`` exactly as :func:`run` does, so results are interchangeable. Writes
    ``{"generation", "outcomes": [{"fingerprint", "metrics", "wall_s", "cpu_s", "train_examples", "error"}]}`` to
    ``output_path`` (``generation`` copied from the specs file, None for a bare list). An empty file of specs
    gives empty outcomes without reading any data.
    """
    raw = read_json(specs_path)
    items = raw["specs"] if isinstance(raw, dict) else raw
    generation = raw.get("generation") if isinstance(raw, dict) else None
    specs = [spec_from_mapping(d, where=f"{specs_path}: spec {i}") for i, d in enumerate(items)]
    if not specs:  # a fan-out slot left empty (budget spent, or fewer proposals than slots): nothing to read
        write_json(output_path, {"generation": generation, "outcomes": []})
        return Result(metrics={"search/batch_trials": 0.0, "search/batch_failed": 0.0},
                      outputs={"outcomes": output_path})
    train, valid = _split_train(cfg, dataset_root, train_days)
    with TrialRunner(cfg.trial.prepare(train, valid=False), cfg.trial.prepare(valid, valid=True), cfg.trial,
                     workers=min(cfg.workers, len(specs))) as runner:
        outcomes = runner(specs)
    write_json(output_path, {"generation": generation, "outcomes": [
        {"fingerprint": s.fingerprint(), "metrics": o.metrics, "wall_s": o.wall_s, "cpu_s": o.cpu_s,
         "train_examples": o.train_examples, "error": o.error} for s, o in zip(specs, outcomes)]})
    failed = sum(bool(o.error) for o in outcomes)
    metrics = {"search/batch_trials": float(len(specs)), "search/batch_failed": float(failed)}
    (tracker or MemoryTracker("search-trials")).log_metrics(metrics)
    return Result(metrics=metrics, outputs={"outcomes": output_path})


def commit(cfg: SearchConfig, *, dataset_root: str, history_path: str, pending_path: str,
           outcome_paths: Sequence[str], train_days: Sequence[str], tracker: Tracker | None = None) -> Result:
    """Appends a generation evaluated by :func:`run_trials` to the history (matched by fingerprint).

    Raises:
        ValueError: an outcome file belongs to another generation, or holds an architecture not proposed.
        KeyError: a proposal has no outcome.
    """
    pending = read_json(pending_path)
    generation = int(pending["generation"])
    by_fp: dict[str, dict[str, Any]] = {}
    for p in outcome_paths:
        raw = read_json(p)
        if raw.get("generation") is not None and int(raw["generation"]) != generation:
            raise ValueError(f"commit: {p} holds generation {raw['generation']}, {pending_path} generation "
                             f"{generation}")
        for o in raw["outcomes"]:
            by_fp[o["fingerprint"]] = o
    props = [Proposal(spec_from_mapping(d["spec"], where=f"{pending_path}: proposal {i}"), d["origin"], d["detail"],
                      d["parent"], d["guided"]) for i, d in enumerate(pending["proposals"])]
    missing = [p.spec.fingerprint() for p in props if p.spec.fingerprint() not in by_fp]
    if missing:
        raise KeyError(f"commit: no outcome for proposals {missing} in {list(outcome_paths)}")
    unknown = sorted(set(by_fp) - {p.spec.fingerprint() for p in props})
    if unknown:
        raise ValueError(f"commit: outcomes for architectures {unknown} that {pending_path} did not propose")
    if not props:  # nothing was proposed: the budget was spent (or the space exhausted) before this generation
        n = len(load_history(history_path))
        return Result(metrics={"search/trials": float(n)},
                      metadata={"generation": generation, "committed": 0, "done": True},
                      outputs={"history": history_path})
    outcomes = [TrialOutcome(**{k: v for k, v in by_fp[p.spec.fingerprint()].items() if k != "fingerprint"})
                for p in props]
    search = _search(cfg, _space(cfg, _schema(dataset_root, train_days)), history_path, tracker)
    records = search.commit(generation, props, outcomes)
    done = len(search.history) >= cfg.evolution.budget
    return Result(metrics={"search/trials": float(len(search.history))},
                  metadata={"generation": generation, "committed": len(records), "done": done},
                  outputs={"history": history_path})


# ---------------------------------------------------------------------- fan-out over artifact folders
def resolve_days(pointer: Mapping[str, Any], train_days: Sequence[str] = (),
                 eval_days: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Search days from a dataset pointer (``ingest_examples``' JSON); given days win.

    Default (as in the ``search_architecture`` component): training = every dataset day but the newest (all of
    them when there is one), evaluation = the newest.
    """
    days = sorted(pointer.get("dataset_days") or pointer.get("days") or [])
    train, held_out = list(train_days) or days[:-1] or days, list(eval_days) or days[-1:]
    if not train or not held_out:
        raise ValueError(f"dataset pointer {pointer.get('dataset_root', '?')}: no days listed and none given")
    return train, held_out


def _context(proposals_dir: str) -> tuple[SearchConfig, dict[str, Any]]:
    path = os.path.join(proposals_dir, CONTEXT)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not a proposals folder written by fanout_propose")
    ctx = read_json(path)
    return SearchConfig.from_dict(ctx["config"]), ctx


def fanout_propose(cfg: SearchConfig, *, dataset_root: str, train_days: Sequence[str], proposals_dir: str,
                   num_batches: int, history_dir: str | None = None) -> Result:
    """Fan-out step 1: the next generation in a self-contained proposals folder.

    Args:
        cfg: step settings (stored in ``context.json`` for the trial and commit steps).
        dataset_root / train_days: the data the trials use (stored in ``context.json``).
        proposals_dir: receives ``history.jsonl`` (the history so far), ``context.json``, ``pending.json`` and
            ``batch-<i>.json`` for every ``i < num_batches`` (``{"specs": []}`` for slots left empty).
        num_batches: trial slots (the pipeline's ParallelFor width).
        history_dir: the previous :func:`fanout_commit` folder; None starts (or, with a ``history.jsonl`` already
            in ``proposals_dir``, resumes) the search.

    Returns:
        :func:`propose`'s result (``batches`` lists only the non-empty files).
    """
    os.makedirs(proposals_dir, exist_ok=True)
    history_path = os.path.join(proposals_dir, HISTORY)
    if history_dir is not None:
        src = os.path.join(history_dir, HISTORY)
        if not os.path.exists(src):
            raise FileNotFoundError(f"{src}: the history folder holds no {HISTORY}")
        shutil.copyfile(src, history_path)
    write_json(os.path.join(proposals_dir, CONTEXT), {"dataset_root": dataset_root, "train_days": list(train_days),
                                                      "num_batches": num_batches, "config": cfg.to_dict()})
    result = propose(cfg, dataset_root=dataset_root, history_path=history_path, output_dir=proposals_dir,
                     train_days=train_days, num_batches=num_batches)
    filled = len([b for b in result.outputs["batches"].split(",") if b])
    for i in range(filled, num_batches):
        write_json(os.path.join(proposals_dir, f"batch-{i}.json"),
                   {"generation": result.metadata["generation"], "specs": []})
    return result


def fanout_trials(*, proposals_dir: str, batch_index: int, outcomes_dir: str,
                  tracker: Tracker | None = None) -> Result:
    """Fan-out step 2: evaluates ``batch-<batch_index>.json`` into ``outcomes_dir/outcomes.json``.

    Settings, data root and days come from the proposals folder's ``context.json``. An empty slot writes empty
    outcomes.
    """
    cfg, ctx = _context(proposals_dir)
    if not 0 <= batch_index < int(ctx["num_batches"]):
        raise ValueError(f"{proposals_dir}: batch_index {batch_index} outside 0..{int(ctx['num_batches']) - 1}")
    os.makedirs(outcomes_dir, exist_ok=True)
    return run_trials(cfg, dataset_root=ctx["dataset_root"],
                      specs_path=os.path.join(proposals_dir, f"batch-{batch_index}.json"),
                      output_path=os.path.join(outcomes_dir, OUTCOMES), train_days=ctx["train_days"], tracker=tracker)


def fanout_commit(*, proposals_dir: str, outcome_dirs: Sequence[str], history_dir: str,
                  tracker: Tracker | None = None) -> Result:
    """Fan-out step 3: the proposals folder's history plus this generation's outcomes → ``history_dir``.

    Each trial becomes a nested run of ``tracker`` (as in :func:`run`). ``history_dir/history.jsonl`` always
    exists afterwards, so the next :func:`fanout_propose` or :func:`finalize` can read it.
    """
    cfg, ctx = _context(proposals_dir)
    os.makedirs(history_dir, exist_ok=True)
    history_path = os.path.join(history_dir, HISTORY)
    src = os.path.join(proposals_dir, HISTORY)
    if os.path.exists(src):
        shutil.copyfile(src, history_path)
    else:
        open(history_path, "a", encoding="utf-8").close()
    return commit(cfg, dataset_root=ctx["dataset_root"], history_path=history_path,
                  pending_path=os.path.join(proposals_dir, PENDING),
                  outcome_paths=[os.path.join(d, OUTCOMES) for d in outcome_dirs], train_days=ctx["train_days"],
                  tracker=tracker)


# ---------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> Result:
    """CLI: ``python -m recpipe.tasks.search --dataset-root D --output-dir O --train-days ... --eval-days ...``.

    With ``--specs S --trials-output T`` it evaluates one trial batch instead (:func:`run_trials`); with
    ``--history H`` it only ranks H and runs the full-fidelity comparison (:func:`finalize`).
    """
    ap = argparse.ArgumentParser(prog="recpipe search", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="", help="SearchConfig as JSON")
    ap.add_argument("--dataset-root", required=True)
    ap.add_argument("--train-days", required=True, help="comma-separated ISO days")
    ap.add_argument("--eval-days", default="", help="comma-separated ISO days (full search only)")
    ap.add_argument("--output-dir", default=None, help="full search: where the four outputs go")
    ap.add_argument("--specs", default=None, help="trial batch mode: JSON file of specs")
    ap.add_argument("--trials-output", default=None, help="trial batch mode: outcomes JSON path")
    ap.add_argument("--history", default=None, help="finalize mode: rank this history.jsonl and compare, no trials")
    args = ap.parse_args(argv)
    cfg = SearchConfig.from_json(args.config)
    train_days = [d for d in args.train_days.split(",") if d]
    with step_tracker("search") as tracker:
        if args.specs:
            if not args.trials_output:
                ap.error("--specs needs --trials-output")
            return run_trials(cfg, dataset_root=args.dataset_root, specs_path=args.specs,
                              output_path=args.trials_output, train_days=train_days, tracker=tracker)
        eval_days = [d for d in args.eval_days.split(",") if d]
        if not args.output_dir or not eval_days:
            ap.error("a full search needs --output-dir and --eval-days")
        if args.history:
            return finalize(cfg, dataset_root=args.dataset_root, history_path=args.history,
                            output_dir=args.output_dir, train_days=train_days, eval_days=eval_days, tracker=tracker)
        return run(cfg, dataset_root=args.dataset_root, output_dir=args.output_dir, train_days=train_days,
                   eval_days=eval_days, tracker=tracker)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
