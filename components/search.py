"""KFP components for the fanned-out AutoCTR search: one generation = propose → ParallelFor trials → commit.

``search_architecture`` (in :mod:`recpipe.components`) runs the whole search in one pod. These four split it so
a pipeline can spread each generation's trials over pods (``recpipe.pipelines.build_architecture_search`` with
``fanout_generations > 0``)::

    history = None
    for g in range(generations):                       # unrolled at compile time
        p = propose_trials(examples=..., trial_batches=B, **({"history": history} if history else {}))
        with dsl.ParallelFor(list(range(B))) as i:
            t = run_trial_batch(proposals=p.outputs["proposals"], batch_index=i)
        c = commit_trials(proposals=p.outputs["proposals"], outcomes=dsl.Collected(t.outputs["outcomes"]))
        history = c.outputs["history"]
    finalize_search(examples=..., history=history)     # ranked + best_spec, as search_architecture

Every artifact is a self-contained folder (files are copied, never referenced by another pod's path):
``proposals`` (history so far, ``context.json``, ``batch-<i>.json`` for each slot, ``pending.json``),
``outcomes`` (``outcomes.json``), ``history`` (``history.jsonl``). Slots left without work once the budget is
spent get an empty batch and write empty outcomes, so the fan-out width is fixed at compile time.
"""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from recpipe.components import IMAGE

_component = dict(base_image=IMAGE, install_kfp_package=False)


@dsl.component(**_component)
def propose_trials(examples: Input[Dataset], proposals: Output[Artifact], config: dict = {}, train_days: list = [],
                   trial_batches: int = 4, history: Input[Artifact] = None):
    """Proposes the next generation of architectures, split into ``trial_batches`` batch files.

    Args:
        examples: dataset pointer from ``ingest_examples``.
        config: ``recpipe.tasks.search.SearchConfig`` as a dict.
        train_days: days for the trials (empty = every dataset day but the newest).
        trial_batches: slots of the ParallelFor that evaluates the batches (empty slots get empty batches).
        history: the previous ``commit_trials`` history; absent for the first generation.
        proposals: folder with the history so far, ``context.json``, ``batch-<i>.json`` and ``pending.json``.
    """
    from recpipe.tasks import search
    from recpipe.tasks.base import read_json

    ds = read_json(examples.path)
    tr, _ = search.resolve_days(ds, train_days)
    result = search.fanout_propose(search.SearchConfig.from_dict(config), dataset_root=ds["dataset_root"],
                                   train_days=tr, proposals_dir=proposals.path, num_batches=trial_batches,
                                   history_dir=history.path if history is not None else None)
    proposals.metadata.update(result.metadata)


@dsl.component(**_component)
def run_trial_batch(proposals: Input[Artifact], batch_index: int, outcomes: Output[Artifact],
                    mlflow_parent_run_id: str = ""):
    """Trains and scores batch ``batch_index`` of ``proposals`` at low fidelity (empty batch → empty outcomes).

    Args:
        proposals: ``propose_trials`` folder (its ``context.json`` holds the settings, data root and days).
        batch_index: which ``batch-<i>.json`` to evaluate.
        outcomes: folder with ``outcomes.json`` (per architecture: fingerprint, metrics, cost, error).
    """
    from recpipe.tasks import search
    from recpipe.tasks.base import step_tracker

    with step_tracker("search", run_name=f"search-trials-{batch_index}",
                      parent_run_id=mlflow_parent_run_id) as tracker:
        result = search.fanout_trials(proposals_dir=proposals.path, batch_index=batch_index,
                                      outcomes_dir=outcomes.path, tracker=tracker)
    outcomes.metadata.update({**result.metrics, "batch_index": batch_index})


@dsl.component(**_component)
def commit_trials(proposals: Input[Artifact], outcomes: Input[List[Artifact]], history: Output[Artifact],
                  metrics: Output[Metrics], mlflow_parent_run_id: str = ""):
    """Appends one generation's outcomes (collected from every ParallelFor slot) to the search history.

    Args:
        proposals: ``propose_trials`` folder.
        outcomes: every ``run_trial_batch`` output of the generation (``dsl.Collected`` over the ParallelFor).
        history: folder with ``history.jsonl`` (every trial so far; each trial is also a nested MLflow run).
        metrics: trials so far.
    """
    from recpipe.tasks import search
    from recpipe.tasks.base import step_tracker

    with step_tracker("search", run_name="search-commit", parent_run_id=mlflow_parent_run_id) as tracker:
        result = search.fanout_commit(proposals_dir=proposals.path, outcome_dirs=[o.path for o in outcomes],
                                      history_dir=history.path, tracker=tracker)
        result.metadata["mlflow_run_id"] = tracker.run_id
    history.metadata.update(result.metadata)
    for k, v in result.metrics.items():
        metrics.log_metric(k, v)


@dsl.component(**_component)
def finalize_search(examples: Input[Dataset], history: Input[Artifact], best_spec: Output[Artifact],
                    ranked: Output[Artifact], metrics: Output[Metrics], train_days: list = [], eval_days: list = [],
                    config: dict = {}, mlflow_parent_run_id: str = ""):
    """Ranks the history, retrains the best and the baselines at full fidelity; outputs as ``search_architecture``.

    Args:
        examples: dataset pointer.
        history: the last ``commit_trials`` history.
        train_days: days for the retraining (empty = every dataset day but the newest), as ``propose_trials``.
        eval_days: held-out days of the comparison (empty = the newest).
        config: ``recpipe.tasks.search.SearchConfig`` as a dict (the search's).
        best_spec: JSON architecture spec of the winner (a file, for ``train_model``'s ``spec``).
        ranked: folder with ``history.jsonl``, ``ranked.json``, ``best_spec.json`` and ``comparison.json``.
    """
    import os
    import shutil

    from recpipe.tasks import search
    from recpipe.tasks.base import read_json, step_tracker

    ds = read_json(examples.path)
    tr, ev = search.resolve_days(ds, train_days, eval_days)
    with step_tracker("search", run_name="search-finalize", parent_run_id=mlflow_parent_run_id) as tracker:
        result = search.finalize(search.SearchConfig.from_dict(config), dataset_root=ds["dataset_root"],
                                 history_path=os.path.join(history.path, search.HISTORY), output_dir=ranked.path,
                                 train_days=tr, eval_days=ev, tracker=tracker)
        result.metadata["mlflow_run_id"] = tracker.run_id
    shutil.copyfile(result.outputs["best_spec"], best_spec.path)
    best_spec.metadata.update(result.metadata)
    for k, v in result.metrics.items():
        metrics.log_metric(k, v)


__all__ = ["propose_trials", "run_trial_batch", "commit_trials", "finalize_search"]
