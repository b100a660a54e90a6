"""The ``recpipe`` command.

``recpipe run``       the daily pipeline end to end on this machine (kfp.local, local MLflow, synthetic data).
``recpipe compile``   write the pipelines' IR YAML for a Kubeflow cluster.
``recpipe schedule``  create a KFP recurring run of ``daily_retrain`` (catch-up off by default).
``recpipe synth``     write synthetic Criteo-format raw logs.
``recpipe <step>``    run one step without KFP: ingest, train, quantize, evaluate, promote, search.

Only ``run``/``compile``/``schedule`` touch KFP (imported inside those commands); every step runs as plain
``recpipe <step>`` or ``python -m recpipe.tasks.<step>`` on a laptop or a Kubernetes Job.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

LOG = logging.getLogger("recpipe")

STEPS = {"ingest": "recpipe.tasks.ingest", "train": "recpipe.tasks.train", "quantize": "recpipe.tasks.quantize",
         "evaluate": "recpipe.tasks.evaluate", "promote": "recpipe.tasks.promote", "search": "recpipe.tasks.search"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("RECPIPE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in STEPS:
        mod = importlib.import_module(STEPS[argv[0]])
        rc = mod.main(argv[1:])
        return rc if isinstance(rc, int) else 0  # some steps return their Result
    if argv and argv[0] == "synth":
        from recpipe.data import synthetic

        rc = synthetic.main(argv[1:])
        return rc if isinstance(rc, int) else 0
    parser = argparse.ArgumentParser(prog="recpipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in (*STEPS, "synth"):
        sub.add_parser(name, help=f"run the {name} step (see `recpipe {name} --help`)", add_help=False)

    r = sub.add_parser("run", help="run the daily pipeline locally over several synthetic (or given) days")
    r.add_argument("--data", help="folder of raw logs named YYYY-MM-DD.tsv[.gz] (default: generate synthetic)")
    r.add_argument("--days", type=int, default=3, help="synthetic days to generate (default 3)")
    r.add_argument("--rows-per-day", type=int, default=20000)
    r.add_argument("--workdir", default="recpipe-work", help="dataset, pipeline outputs, raw data")
    r.add_argument("--tracking-uri", default=None, help="MLflow store (default sqlite:///mlruns.db)")
    r.add_argument("--config", default=None, help="JSON file of per-step configs {ingest, train, ...}")
    r.add_argument("--seed", type=int, default=0)

    c = sub.add_parser("compile", help="compile pipelines to KFP IR YAML")
    c.add_argument("--pipeline", default="daily_retrain",
                   choices=["daily_retrain", "architecture_search", "architecture_search_fanout", "backfill", "all"])
    c.add_argument("--output", default="pipelines-yaml", help="output folder (one YAML per pipeline)")
    c.add_argument("--gpu", action="store_true", help="request a GPU for training/search steps")
    c.add_argument("--mlflow-uri", default="http://mlflow.recpipe.svc.cluster.local:5000")

    s = sub.add_parser("schedule", help="create a KFP recurring run of daily_retrain")
    s.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow:80")
    s.add_argument("--cron", default="0 3 * * *", help="cron in UTC; KFP wants 6 fields, 5 are padded")
    s.add_argument("--raw-inputs", required=True, help="raw log location, {day} is replaced, e.g. gs://b/{day}.tsv.gz")
    s.add_argument("--dataset-root", required=True)
    s.add_argument("--experiment", default="recpipe")
    s.add_argument("--name", default="recpipe-daily-retrain")
    s.add_argument("--catchup", action="store_true", help="backfill missed intervals (off by default)")
    s.add_argument("--max-concurrency", type=int, default=1)
    s.add_argument("--gpu", action="store_true")
    s.add_argument("--namespace", default=None)
    args = parser.parse_args(argv)

    if args.cmd == "run":
        from recpipe.pipelines.local import run_local

        return run_local(data=args.data, days=args.days, rows_per_day=args.rows_per_day, workdir=args.workdir,
                         tracking_uri=args.tracking_uri, config_path=args.config, seed=args.seed)
    if args.cmd == "compile":
        from recpipe.pipelines.compile import compile_pipelines

        for path in compile_pipelines(args.pipeline, args.output, gpu=args.gpu, mlflow_uri=args.mlflow_uri):
            print(path)
        return 0
    if args.cmd == "schedule":
        from recpipe.pipelines.schedule import create_recurring_run

        info = create_recurring_run(host=args.host, cron=args.cron, raw_inputs=args.raw_inputs,
                                    dataset_root=args.dataset_root, experiment=args.experiment, name=args.name,
                                    catchup=args.catchup, max_concurrency=args.max_concurrency, gpu=args.gpu,
                                    namespace=args.namespace)
        print(f"recurring run {info['recurring_run_id']} created in experiment {info['experiment_id']} "
              f"(cron {info['cron']}, catch-up {'on' if args.catchup else 'off'})")
        return 0
    parser.error(f"unknown command {args.cmd}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
