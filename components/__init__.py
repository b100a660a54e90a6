"""recpipe.components: typed KFP v2 components, thin shims over ``recpipe.tasks``.

Use them in your own pipelines::

    from kfp import dsl
    from recpipe.components import ingest_examples, train_model, evaluate_model

    @dsl.pipeline
    def my_pipeline(day: str, raw: str, root: str):
        data = ingest_examples(raw_inputs=raw, day=day, dataset_root=root)
        model = train_model(examples=data.outputs["examples"], until_day=day)
        evaluate_model(examples=data.outputs["examples"], model=model.outputs["model"], eval_day=day)

Every component runs the same container image (:data:`IMAGE`, tagged with the package version; override with
``RECPIPE_IMAGE`` at compile time). Bodies only translate artifacts to paths and call ``recpipe.tasks.<step>.run``;
provenance goes to artifact ``.metadata`` and scalar results to ``Metrics``. Every step logs to MLflow: into
``MLFLOW_RUN_ID`` when KFP injects it, else as a nested run under ``mlflow_parent_run_id`` when given.

The dataset is a long-lived, day-partitioned location (``dataset_root``: a local path, ``gs://``, ``s3://``);
the ``examples`` artifact is a small JSON pointer to it (root, days, schema version, table sizes).
"""

import os
from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from recpipe import __version__

IMAGE = os.environ.get("RECPIPE_IMAGE", f"ghcr.io/recpipe/recpipe:{__version__}")
"""The one image every step runs in (see the Dockerfile); its tag is the package version."""

_component = dict(base_image=IMAGE, install_kfp_package=False)


@dsl.component(**_component)
def ingest_examples(raw_inputs: str, dataset_root: str, examples: Output[Dataset], statistics: Output[Metrics],
                    day: str = "", config: dict = {}, mlflow_parent_run_id: str = ""):
    """Ingests raw logs (Criteo TSV or schema-described CSV/Parquet) into day-partitioned Parquet.

    Args:
        raw_inputs: comma-separated files, globs or folders (local, gs://, s3://); ``{day}`` in it is replaced
            by the day, so a schedule can point at ``gs://logs/{day}/*.tsv.gz``.
        dataset_root: the long-lived processed dataset the day is written into (atomic replace).
        day: ISO day of the input; empty infers it from the file names (``YYYY-MM-DD.tsv``).
        config: ``recpipe.tasks.ingest.IngestConfig`` as a dict (schema, encoding, Beam options ...).
        examples: JSON pointer to the dataset (root, days written, schema version, table sizes).
        statistics: rows, dead-lettered rows, label rate, new-id rate.
    """
    from recpipe.tasks import ingest
    from recpipe.tasks.base import step_tracker, write_json

    inputs = [s.strip().replace("{day}", day) for s in raw_inputs.split(",") if s.strip()]
    with step_tracker("ingest", run_name=f"ingest-{day}", parent_run_id=mlflow_parent_run_id) as tracker:
        result = ingest.run(ingest.IngestConfig.from_dict(config), inputs=inputs, dataset_root=dataset_root,
                            day=day or None, tracker=tracker)
        result.metadata["mlflow_run_id"] = tracker.run_id
    write_json(examples.path, result.metadata)
    examples.metadata.update(result.metadata)
    for k, v in result.metrics.items():
        statistics.log_metric(k, v)


@dsl.component(**_component)
def train_model(examples: Input[Dataset], model: Output[Model], metrics: Output[Metrics], before_day: str = "",
                warm_start: str = "", spec: Input[Artifact] = None, config: dict = {},
                mlflow_parent_run_id: str = ""):
    """Trains (incrementally when warm-started) the CTR model on the days of ``examples``.

    Args:
        examples: dataset pointer from ``ingest_examples``.
        before_day: train, in time order, on the days before this one that the warm-start model has not seen
            (empty = every day of the dataset). The day itself stays held out for evaluation.
        warm_start: a model folder or ``models:/<name>@<alias>`` (e.g. ``@champion``); empty, or an alias that
            does not exist yet (first run), trains from scratch.
        spec: optional architecture spec JSON (e.g. ``search_architecture``'s ``best_spec``); overrides config.
        config: ``recpipe.tasks.train.TrainTaskConfig`` as a dict (architecture, optimizer, pruning ...).
        model: the trained model folder (weights + JSON spec, no pickles).
        metrics: final loss, prequential NE/AUC, sparsity, model bytes.
    """
    from recpipe.tasks import train
    from recpipe.tasks.base import read_json, step_tracker

    ds = read_json(examples.path)
    cfg = dict(config)
    if spec is not None:
        cfg["spec"] = read_json(spec.path)
    with step_tracker("train", run_name=f"train-before-{before_day}", parent_run_id=mlflow_parent_run_id) as tracker:
        result = train.run(train.TrainTaskConfig.from_dict(cfg), dataset_root=ds["dataset_root"],
                           model_dir=model.path, before_day=before_day or None, warm_start=warm_start or None,
                           tracker=tracker)
        result.metadata["mlflow_run_id"] = tracker.run_id
    model.metadata.update(result.metadata)
    for k, v in result.metrics.items():
        metrics.log_metric(k, v)


@dsl.component(**_component)
def quantize_embeddings(model: Input[Model], quantized_model: Output[Model], metrics: Output[Metrics],
                        examples: Input[Dataset] = None, eval_day: str = "", config: dict = {},
                        enabled: bool = True, mlflow_parent_run_id: str = ""):
    """Quantizes the embedding tables row-wise (int8/int4/int2, greedy clipping) or with codebooks.

    Args:
        model: float model folder.
        examples: optional dataset pointer; with ``eval_day`` the quantized model's NE/AUC is measured.
        config: ``recpipe.tasks.quantize.QuantizeConfig`` as a dict (bits, method, mixed precision).
        enabled: False passes the float model through unchanged (so one pipeline serves both cases).
        quantized_model: quantized model folder (FBGEMM-layout fused rows + JSON), same forward API.
        metrics: bytes before/after, ratio to fp32, reconstruction MSE, NE delta.
    """
    from recpipe.tasks import quantize
    from recpipe.tasks.base import read_json, step_tracker

    if not enabled:
        import shutil

        shutil.copytree(model.path, quantized_model.path, dirs_exist_ok=True)
        quantized_model.metadata.update(model.metadata)
        return
    root = read_json(examples.path)["dataset_root"] if examples is not None else None
    with step_tracker("quantize", run_name="quantize", parent_run_id=mlflow_parent_run_id) as tracker:
        result = quantize.run(quantize.QuantizeConfig.from_dict(config), model_dir=model.path,
                              output_dir=quantized_model.path, eval_dataset_root=root,
                              eval_days=[eval_day] if (root and eval_day) else None, tracker=tracker)
        result.metadata["mlflow_run_id"] = tracker.run_id
    quantized_model.metadata.update({**model.metadata, **result.metadata})
    for k, v in result.metrics.items():
        metrics.log_metric(k, v)


@dsl.component(**_component)
def evaluate_model(examples: Input[Dataset], model: Input[Model], metrics: Output[Metrics],
                   roc: Output[ClassificationMetrics], report: Output[Markdown], report_html: Output[HTML],
                   blessing: Output[Artifact],
                   eval_day: str = "", champion: str = "", float_model: Input[Model] = None,
                   config: dict = {}, mlflow_parent_run_id: str = ""):
    """Evaluates the model to be served on held-out day(s) against the champion and writes the gate decision.

    Args:
        examples: dataset pointer; ``eval_day`` selects the held-out day (empty = the newest day).
        model: the model that will be served (quantized when the pipeline quantizes).
        float_model: optional float model, reported beside the served one.
        champion: ``models:/<name>@champion`` or a folder; empty or missing alias = first-run rule.
        config: ``recpipe.tasks.evaluate.EvaluateConfig`` (slices, bootstrap, thresholds, override).
        metrics / roc / report / report_html: AUC, log loss, NE, calibration (+CIs) per slice, ROC curve, and
            the report (Markdown; HTML with the ROC, calibration, NE-by-day and slice plots inlined).
        blessing: JSON gate decision with reasons.
    """
    from recpipe.tasks import evaluate
    from recpipe.tasks.base import read_json, step_tracker

    ds = read_json(examples.path)
    days = [eval_day] if eval_day else ds["days"][-1:]
    cfg = dict(config)
    champion_dir = None
    if champion.startswith("models:/"):  # models:/<name>@champion → resolved from the registry
        cfg.update(champion_from_registry=True, registry_model=champion[len("models:/"):].split("@")[0])
    elif champion:
        champion_dir = champion
    with step_tracker("evaluate", run_name=f"evaluate-{days[-1]}", parent_run_id=mlflow_parent_run_id) as tracker:
        result = evaluate.run(evaluate.EvaluateConfig.from_dict(cfg), model_dir=model.path,
                              dataset_root=ds["dataset_root"], days=days, output_dir=blessing.path,
                              champion_model_dir=champion_dir,
                              float_model_dir=float_model.path if float_model is not None else None,
                              tracker=tracker)
        result.metadata["mlflow_run_id"] = tracker.run_id
    for k, v in result.metrics.items():
        metrics.log_metric(k, v)
    curve = result.metadata.get("roc", {})
    if curve:
        roc.log_roc_curve(curve["fpr"], curve["tpr"], curve["thresholds"])
    import shutil

    shutil.copyfile(result.outputs["report_md"], report.path)
    shutil.copyfile(result.outputs["report_html"], report_html.path)
    blessing.metadata.update({k: v for k, v in result.metadata.items() if k not in ("roc", "report_markdown")})


@dsl.component(**_component)
def promote_model(blessing: Input[Artifact], model: Input[Model], promotion: Output[Artifact],
                  model_name: str = "recpipe-ctr", config: dict = {}, mlflow_parent_run_id: str = "") -> str:
    """Registers the model and moves the ``champion`` alias when the blessing passed; tags it rejected otherwise.

    Args:
        blessing: ``evaluate_model``'s gate decision. model: the model that was evaluated (and will be served).
        model_name: registered model name. config: ``recpipe.tasks.promote.PromoteConfig`` as a dict.

    Returns:
        ``"promoted"`` or ``"rejected"``.
    """
    import os

    from recpipe.tasks import promote
    from recpipe.tasks.base import step_tracker, write_json

    with step_tracker("promote", run_name="promote", parent_run_id=mlflow_parent_run_id) as tracker:
        result = promote.run(promote.PromoteConfig.from_dict({**config, "model_name": model_name}),
                             blessing_path=os.path.join(blessing.path, "blessing.json"), model_dir=model.path,
                             tracker=tracker)
    write_json(promotion.path, result.to_dict())
    promotion.metadata.update(result.metadata)
    return str(result.metadata.get("decision", "rejected"))


@dsl.component(**_component)
def search_architecture(examples: Input[Dataset], best_spec: Output[Artifact], ranked: Output[Artifact],
                        metrics: Output[Metrics], train_days: list = [], eval_days: list = [],
                        config: dict = {}, mlflow_parent_run_id: str = ""):
    """AutoCTR search: evolution over block DAGs with a learned ranker and low-fidelity trials.

    Args:
        examples: dataset pointer.
        train_days / eval_days: days for trials and for the full-fidelity comparison (empty = all but the
            newest / the newest).
        config: ``recpipe.tasks.search.SearchConfig`` as a dict.
        best_spec: JSON architecture spec of the winner; ranked: every evaluated architecture, best first.
    """
    from recpipe.tasks import search
    from recpipe.tasks.base import read_json, step_tracker

    ds = read_json(examples.path)
    days = sorted(ds.get("dataset_days") or ds["days"])  # every day in the dataset, not only today's ingest
    tr = list(train_days) or days[:-1] or days
    ev = list(eval_days) or days[-1:]
    with step_tracker("search", run_name="search", parent_run_id=mlflow_parent_run_id) as tracker:
        result = search.run(search.SearchConfig.from_dict(config), dataset_root=ds["dataset_root"],
                            output_dir=ranked.path, train_days=tr, eval_days=ev, tracker=tracker)
    import shutil

    shutil.copyfile(result.outputs["best_spec"], best_spec.path)
    best_spec.metadata.update(result.metadata)
    for k, v in result.metrics.items():
        metrics.log_metric(k, v)


# the search fan-out components import IMAGE from this package, so they come after it is defined
from recpipe.components.search import commit_trials, finalize_search, propose_trials, run_trial_batch  # noqa: E402

__all__ = ["IMAGE", "ingest_examples", "train_model", "quantize_embeddings", "evaluate_model", "promote_model",
           "search_architecture", "propose_trials", "run_trial_batch", "commit_trials", "finalize_search"]
