"""``recpipe schedule``: a KFP recurring run of ``daily_retrain``.

The day each run processes comes from KFP's scheduled-time placeholder (the run scheduled for 2026-11-25 03:00
UTC processes 2026-11-24 with the default one-day lag), so a late or replayed run still processes its own day.
Catch-up is OFF by default: after an outage only the newest interval runs; replay missed days with the
``backfill`` pipeline (or ``--catchup`` to let KFP run every missed interval in order).
"""
import os
import tempfile
from typing import Any

from kfp import Client, compiler

from recpipe.pipelines import BuildOptions, build_daily_retrain


def kfp_cron(cron: str) -> str:
    """KFP's cron has a leading seconds field: pads a 5-field cron with ``0`` seconds; checks field count."""
    fields = cron.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise ValueError(f"cron {cron!r}: expected 5 fields (min hour dom month dow) or 6 (with seconds)")


def create_recurring_run(*, host: str, raw_inputs: str, dataset_root: str, cron: str = "0 3 * * *",
                         experiment: str = "recpipe", name: str = "recpipe-daily-retrain", catchup: bool = False,
                         max_concurrency: int = 1, gpu: bool = False, namespace: str | None = None,
                         params: dict[str, Any] | None = None, client: Client | None = None) -> dict[str, str]:
    """Compiles ``daily_retrain`` and creates a recurring run of it on the KFP API server at ``host``.

    Returns:
        ``{"recurring_run_id", "experiment_id", "cron"}``.
    """
    client = client or Client(host=host, namespace=namespace or "kubeflow")
    exp = client.create_experiment(experiment, namespace=namespace)
    with tempfile.TemporaryDirectory(prefix="recpipe-schedule-") as tmp:
        path = os.path.join(tmp, "daily_retrain.yaml")
        compiler.Compiler().compile(build_daily_retrain(BuildOptions(scheduled=True, gpu=gpu)), path)
        rr = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name, cron_expression=kfp_cron(cron),
            no_catchup=not catchup, max_concurrency=max_concurrency, pipeline_package_path=path,
            params={"raw_inputs": raw_inputs, "dataset_root": dataset_root, **(params or {})},
            enable_caching=True)
    return {"recurring_run_id": rr.recurring_run_id, "experiment_id": exp.experiment_id, "cron": kfp_cron(cron)}
