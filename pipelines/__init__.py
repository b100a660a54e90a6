"""recpipe.pipelines: the KFP pipelines built from recpipe.components.

* :func:`daily_retrain` — ingest day D → incremental train (warm start from ``champion``, pruning) on the days
  before D → quantize → evaluate the served (quantized) model vs the champion on day D → promote.
* :func:`architecture_search` — ingest a day range → AutoCTR search → full training of the winner → evaluate.
* :func:`backfill` — ingest a range of missed days, then one time-ordered incremental pass over them.

Pipelines are built by factories so that the cluster build (scheduled-time placeholder, GPU requests,
in-cluster MLflow address, secrets) and the local build (``kfp.local``, which cannot resolve the scheduled-time
placeholder) come from the same code. The module-level objects are the cluster builds.
"""

from dataclasses import dataclass
from functools import partial

from kfp import dsl

from recpipe.components import (
    IMAGE,
    evaluate_model,
    ingest_examples,
    promote_model,
    quantize_embeddings,
    search_architecture,
    train_model,
)
from recpipe.components.search import commit_trials, finalize_search, propose_trials, run_trial_batch


@dataclass(frozen=True)
class BuildOptions:
    """Compile-time settings of a pipeline build.

    Attributes:
        scheduled: the day defaults to the recurring run's scheduled time minus ``lag_days`` (cluster only).
        gpu: request one ``nvidia.com/gpu`` for training/search (and a GPU node toleration).
        mlflow_uri: MLFLOW_TRACKING_URI set on every step ("" = inherit the environment, as locally).
        secret: Kubernetes secret holding S3/MinIO and database credentials (exposed as env vars), "" = none.
    """

    scheduled: bool = True
    gpu: bool = False
    mlflow_uri: str = "http://mlflow.recpipe.svc.cluster.local:5000"
    secret: str = "recpipe-credentials"
    lag_days: int = 1


LOCAL = BuildOptions(scheduled=False, gpu=False, mlflow_uri="", secret="")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def resolve_day(day: str, scheduled_time: str, lag_days: int) -> str:
    """The day to process: ``day`` when given, else the scheduled time's UTC date minus ``lag_days``."""
    import datetime as dt

    if day:
        return dt.date.fromisoformat(day).isoformat()
    if not scheduled_time:
        raise ValueError("resolve_day: neither 'day' nor a scheduled time was given")
    t = dt.datetime.fromisoformat(scheduled_time.replace("Z", "+00:00"))
    return (t.astimezone(dt.timezone.utc).date() - dt.timedelta(days=lag_days)).isoformat()


def _setup(task: dsl.PipelineTask, opts: BuildOptions, *, gpu: bool = False, cache: bool = False) -> dsl.PipelineTask:
    task.set_caching_options(cache)
    if opts.mlflow_uri:
        task.set_env_variable("MLFLOW_TRACKING_URI", opts.mlflow_uri)
    if opts.secret:
        from kfp import kubernetes

        kubernetes.use_secret_as_env(task, secret_name=opts.secret, secret_key_to_env={
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
            "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL"})
    if gpu and opts.gpu:
        from kfp import kubernetes

        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        task.set_memory_request("32G").set_cpu_request("8")
        kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    return task


def _day_task(day: str, opts: BuildOptions) -> dsl.PipelineTask:
    sched = dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER if opts.scheduled else ""
    t = resolve_day(day=day, scheduled_time=sched, lag_days=opts.lag_days)
    return _setup(t, opts)


def build_daily_retrain(opts: BuildOptions = BuildOptions()):
    """Builds the daily retraining pipeline for ``opts``."""

    @dsl.pipeline(name="recpipe-daily-retrain",
                  description="Ingest day D, train incrementally from the champion, quantize, gate, promote.")
    def daily_retrain(raw_inputs: str, dataset_root: str, day: str = "", model_name: str = "recpipe-ctr",
                      ingest_config: dict = {}, train_config: dict = {}, quantize_config: dict = {},
                      evaluate_config: dict = {}, promote_config: dict = {}, quantize: bool = True,
                      mlflow_parent_run_id: str = "") -> str:
        d = _day_task(day, opts)
        data = _setup(ingest_examples(raw_inputs=raw_inputs, dataset_root=dataset_root, day=d.output,
                                      config=ingest_config, mlflow_parent_run_id=mlflow_parent_run_id),
                      opts, cache=True)
        champion = f"models:/{model_name}@champion"
        trained = _setup(train_model(examples=data.outputs["examples"], before_day=d.output, warm_start=champion,
                                     config=train_config, mlflow_parent_run_id=mlflow_parent_run_id),
                         opts, gpu=True)
        # no eval data for quantize: day D is the gate's held-out day, and bit widths measured on it would leak
        # into the gate; evaluate_model reports the float model beside the quantized one on day D instead
        q = _setup(quantize_embeddings(model=trained.outputs["model"], config=quantize_config, enabled=quantize,
                                       mlflow_parent_run_id=mlflow_parent_run_id), opts)
        ev = _setup(evaluate_model(examples=data.outputs["examples"], model=q.outputs["quantized_model"],
                                   float_model=trained.outputs["model"], eval_day=d.output, champion=champion,
                                   config=evaluate_config, mlflow_parent_run_id=mlflow_parent_run_id), opts)
        pr = _setup(promote_model(blessing=ev.outputs["blessing"], model=q.outputs["quantized_model"],
                                  model_name=model_name, config=promote_config,
                                  mlflow_parent_run_id=mlflow_parent_run_id), opts)
        return pr.outputs["Output"]

    return daily_retrain


def build_architecture_search(opts: BuildOptions = BuildOptions(), fanout_generations: int = 0,
                              trial_batches: int = 4):
    """Builds the architecture-search pipeline for ``opts``.

    Args:
        opts: compile-time settings.
        fanout_generations: 0 runs the whole search in one ``search_architecture`` step (trials in local worker
            processes). N > 0 unrolls N generations, each ``propose_trials`` → ``dsl.ParallelFor`` over
            ``trial_batches`` ``run_trial_batch`` pods → ``commit_trials`` (history threaded from generation to
            generation), then ``finalize_search``. The search stops at its budget (later generations then
            propose nothing), so set ``evolution.budget <= N * evolution.batch_size`` to spend it all, and
            ``evolution.batch_size`` a multiple of ``trial_batches`` to fill every slot.
        trial_batches: ParallelFor width of a fanned-out generation.
    """
    if fanout_generations < 0 or trial_batches < 1:
        raise ValueError(f"build_architecture_search: fanout_generations ({fanout_generations}) must be >= 0 and "
                         f"trial_batches ({trial_batches}) >= 1")
    fanout = fanout_generations > 0
    name = "recpipe-architecture-search" + ("-fanout" if fanout else "")
    where = f"{fanout_generations} generations x {trial_batches} parallel trial batches" if fanout else "one step"
    description = f"AutoCTR search ({where}) on a day range, full training of the winner, evaluation."

    @dsl.pipeline(name=name, description=description)
    def architecture_search(raw_inputs: str, dataset_root: str, eval_day: str, search_config: dict = {},
                            train_config: dict = {}, ingest_config: dict = {}, evaluate_config: dict = {},
                            mlflow_parent_run_id: str = ""):
        data = _setup(ingest_examples(raw_inputs=raw_inputs, dataset_root=dataset_root, day="",
                                      config=ingest_config, mlflow_parent_run_id=mlflow_parent_run_id),
                      opts, cache=True)
        examples = data.outputs["examples"]
        if not fanout:
            s = _setup(search_architecture(examples=examples, eval_days=[eval_day], config=search_config,
                                           mlflow_parent_run_id=mlflow_parent_run_id), opts, gpu=True)
        else:
            history = None
            for g in range(fanout_generations):
                previous = {} if history is None else {"history": history}
                p = _setup(propose_trials(examples=examples, config=search_config, trial_batches=trial_batches,
                                          **previous), opts)
                p.set_display_name(f"propose-generation-{g}")
                with dsl.ParallelFor(items=list(range(trial_batches)), parallelism=trial_batches) as batch:
                    t = _setup(run_trial_batch(proposals=p.outputs["proposals"], batch_index=batch,
                                               mlflow_parent_run_id=mlflow_parent_run_id), opts, gpu=True)
                    t.set_display_name(f"trials-generation-{g}")
                c = _setup(commit_trials(proposals=p.outputs["proposals"],
                                         outcomes=dsl.Collected(t.outputs["outcomes"]),
                                         mlflow_parent_run_id=mlflow_parent_run_id), opts)
                c.set_display_name(f"commit-generation-{g}")
                history = c.outputs["history"]
            s = _setup(finalize_search(examples=examples, history=history, eval_days=[eval_day],
                                       config=search_config, mlflow_parent_run_id=mlflow_parent_run_id),
                       opts, gpu=True)
        trained = _setup(train_model(examples=examples, before_day=eval_day, spec=s.outputs["best_spec"],
                                     config=train_config, mlflow_parent_run_id=mlflow_parent_run_id), opts, gpu=True)
        _setup(evaluate_model(examples=examples, model=trained.outputs["model"], eval_day=eval_day,
                              config=evaluate_config, mlflow_parent_run_id=mlflow_parent_run_id), opts)

    return architecture_search


def build_backfill(opts: BuildOptions = BuildOptions()):
    """Builds the backfill pipeline: ingest a range of missed days, then one time-ordered incremental pass."""

    @dsl.pipeline(name="recpipe-backfill",
                  description="Replay missed days: ingest them, train through them in day order, gate, promote.")
    def backfill(raw_inputs: str, dataset_root: str, eval_day: str, model_name: str = "recpipe-ctr",
                 ingest_config: dict = {}, train_config: dict = {}, evaluate_config: dict = {},
                 promote_config: dict = {}, mlflow_parent_run_id: str = "") -> str:
        # raw_inputs covers every missed day (days are read off the file names); the trainer consumes the
        # day partitions in time order in one pass, warm-started from the champion.
        data = _setup(ingest_examples(raw_inputs=raw_inputs, dataset_root=dataset_root, day="",
                                      config=ingest_config, mlflow_parent_run_id=mlflow_parent_run_id),
                      opts, cache=True)
        champion = f"models:/{model_name}@champion"
        trained = _setup(train_model(examples=data.outputs["examples"], before_day=eval_day, warm_start=champion,
                                     config=train_config, mlflow_parent_run_id=mlflow_parent_run_id),
                         opts, gpu=True)
        ev = _setup(evaluate_model(examples=data.outputs["examples"], model=trained.outputs["model"],
                                   eval_day=eval_day, champion=champion, config=evaluate_config,
                                   mlflow_parent_run_id=mlflow_parent_run_id), opts)
        pr = _setup(promote_model(blessing=ev.outputs["blessing"], model=trained.outputs["model"],
                                  model_name=model_name, config=promote_config,
                                  mlflow_parent_run_id=mlflow_parent_run_id), opts)
        return pr.outputs["Output"]

    return backfill


daily_retrain = build_daily_retrain()
architecture_search = build_architecture_search()
architecture_search_fanout = build_architecture_search(BuildOptions(), fanout_generations=3)
backfill = build_backfill()

PIPELINES = {"daily_retrain": build_daily_retrain, "architecture_search": build_architecture_search,
             "architecture_search_fanout": partial(build_architecture_search, fanout_generations=3),
             "backfill": build_backfill}

__all__ = ["BuildOptions", "LOCAL", "daily_retrain", "architecture_search", "architecture_search_fanout", "backfill",
           "build_daily_retrain", "build_architecture_search", "build_backfill", "PIPELINES", "resolve_day"]
