"""``recpipe run``: the daily pipeline on this machine with kfp.local, a local MLflow store and sample data.

What it does, in order:

1. Raw logs: ``--data DIR`` (files ``YYYY-MM-DD.tsv[.gz]``) or N days of synthetic Criteo-format logs.
2. One MLflow parent run for the whole invocation; every step logs a nested run under it.
3. Day 1: the ``backfill`` pipeline ingests days 0..1, trains on day 0 from scratch, evaluates on day 1
   (first-run rule: no champion yet) and promotes.
4. Each later day D: the ``daily_retrain`` pipeline ingests D, warm-starts from ``champion``, trains on the
   days before D it has not seen, quantizes, evaluates the quantized model vs the champion on D, promotes.
5. A summary table (per day: decision, AUC, NE of challenger and champion) and the ``mlflow ui`` command.
"""
import contextlib
import datetime as dt
import io
import json
import logging
import os
import re
import sys
import time
import warnings
from typing import Any, Callable, Iterator

from kfp import local

from recpipe.pipelines import LOCAL, build_backfill, build_daily_retrain

LOG = logging.getLogger(__name__)
DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.(tsv|tsv\.gz|csv|csv\.gz|parquet)$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TASK_DONE = re.compile(r"Task '([\w-]+)' finished with status (\w+)")

# Small, fast defaults for a laptop run; a --config file overrides per step.
DEFAULT_CONFIGS: dict[str, dict[str, Any]] = {
    "ingest": {"hash_buckets": 20000},
    "train": {"trainer": {"batch_size": 256}},
    "quantize": {"bits": 4, "method": "greedy"},
    "evaluate": {"bootstrap_samples": 100},
    "promote": {},
}


def _day_files(folder: str) -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(folder)):
        m = DAY_FILE.match(name)
        if m:
            out[m.group(1)] = os.path.join(folder, name)
    return out


def _load_configs(path: str | None) -> dict[str, dict[str, Any]]:
    cfgs = {k: dict(v) for k, v in DEFAULT_CONFIGS.items()}
    if path:
        with open(path, encoding="utf-8") as fh:
            user = json.load(fh)
        unknown = set(user) - set(cfgs)
        if unknown:
            raise ValueError(f"{path}: unknown step keys {sorted(unknown)}; expected {sorted(cfgs)}")
        for k, v in user.items():
            cfgs[k].update(v)
    return cfgs


class _ProgressLog(io.TextIOBase):
    """Sends kfp.local's verbose output to a log file and prints one line per finished task."""

    def __init__(self, path: str, out: Any) -> None:
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.out = out
        self.pending = ""
        self.t = time.time()

    def write(self, text: str) -> int:
        self.file.write(text)
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            m = TASK_DONE.search(ANSI.sub("", line))
            if m:
                now = time.time()
                self.out.write(f"    {m.group(1):<22} {m.group(2):<8} {now - self.t:5.0f}s\n")
                self.out.flush()
                self.t = now
        return len(text)

    def flush(self) -> None:
        if not self.file.closed:
            self.file.flush()

    def close(self) -> None:
        super().close()  # flushes first
        self.file.close()


@contextlib.contextmanager
def _quiet(log_path: str) -> Iterator[None]:
    """Routes everything kfp.local prints (it logs to sys.stdout) to ``log_path``; progress stays visible."""
    real = sys.stdout
    sink = _ProgressLog(log_path, real)
    try:
        with contextlib.redirect_stdout(sink):
            yield
    finally:
        sink.close()


def _run_pipeline(label: str, log_path: str, call: Callable[[], Any]) -> Any:
    _say(f"[recpipe] {label}")
    with _quiet(log_path):
        task = call()
    return task.output


def run_local(*, data: str | None = None, days: int = 3, rows_per_day: int = 20000, workdir: str = "recpipe-work",
              tracking_uri: str | None = None, config_path: str | None = None, seed: int = 0,
              model_name: str = "recpipe-ctr") -> int:
    """Runs the pipelines locally; returns a process exit code (0 = every pipeline run succeeded)."""
    t0 = time.time()
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.abspath('mlruns.db')}"
    os.environ["MLFLOW_TRACKING_URI"] = uri  # inherited by every step's subprocess
    cfgs = _load_configs(config_path)

    raw = data
    if raw is None:
        from recpipe.data import synthetic

        raw = os.path.join(workdir, "raw")
        start = (dt.date.today() - dt.timedelta(days=days)).isoformat()
        _say(f"[recpipe] generating {days} synthetic days x {rows_per_day} rows into {raw}")
        synthetic.generate(synthetic.SynthConfig(days=days, rows_per_day=rows_per_day, seed=seed, start_date=start),
                           raw)
    files = _day_files(raw)
    if len(files) < 2:
        raise SystemExit(f"recpipe run: {raw} needs raw files for at least 2 days named YYYY-MM-DD.tsv[.gz], "
                         f"found {sorted(files)}")
    day_list = sorted(files)
    dataset_root = os.path.join(workdir, "dataset")
    logging.getLogger().setLevel(logging.WARNING)  # kfp.local's own chatter goes to the step log instead
    # every step runs in this Python environment on purpose (SubprocessRunner(use_venv=False)), not in IMAGE
    warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.join(workdir, "kfp-outputs"),
               raise_on_error=True)

    rows: list[dict[str, Any]] = []
    try:
        run_id = _run_all(files, day_list, workdir, dataset_root, cfgs, model_name, rows)
    except RuntimeError as e:  # kfp.local: "Pipeline ... finished with status FAILURE. Inner task failed: ..."
        log = os.path.join(workdir, "pipeline.log")
        sys.stderr.write(f"[recpipe] {ANSI.sub('', str(e))}\n[recpipe] last lines of {log}:\n")
        with open(log, encoding="utf-8") as fh:
            sys.stderr.write("".join(fh.readlines()[-60:]))
        return 1
    _say(_table(rows))
    _say(f"[recpipe] done in {time.time() - t0:.0f}s; MLflow run {run_id}.\n"
         f"[recpipe] inspect: mlflow ui --backend-store-uri {uri}")
    return 0


def _run_all(files: dict[str, str], day_list: list[str], workdir: str, dataset_root: str,
             cfgs: dict[str, dict[str, Any]], model_name: str, rows: list[dict[str, Any]]) -> str:
    """Runs backfill then daily_retrain per day under one parent MLflow run; fills ``rows``; returns the run id."""
    from recpipe.tracking.mlflow_tracker import MlflowTracker, child_run_summaries

    with MlflowTracker("recpipe", run_name=f"local-{day_list[0]}..{day_list[-1]}",
                       tags={"recpipe.mode": "local"}) as parent:
        parent.log_params({"days": ",".join(day_list), "raw": os.path.dirname(files[day_list[0]]),
                           "dataset_root": dataset_root,
                           "configs": json.dumps(cfgs, sort_keys=True)})
        common = dict(dataset_root=dataset_root, model_name=model_name, ingest_config=cfgs["ingest"],
                      train_config=cfgs["train"], evaluate_config=cfgs["evaluate"],
                      promote_config=cfgs["promote"], mlflow_parent_run_id=parent.run_id)
        first, rest = day_list[1], day_list[2:]
        log = os.path.join(workdir, "pipeline.log")
        _say(f"[recpipe] step logs: {log}")
        decision = _run_pipeline(
            f"{day_list[0]}..{first}: backfill (ingest, train from scratch, evaluate on {first}, promote)", log,
            lambda: build_backfill(LOCAL)(raw_inputs=f"{files[day_list[0]]},{files[first]}", eval_day=first,
                                          **common))
        rows.append({"day": first, "pipeline": "backfill", "decision": decision})
        for day in rest:
            decision = _run_pipeline(
                f"{day}: daily_retrain (ingest, warm start from champion, train, quantize, gate, promote)", log,
                lambda: build_daily_retrain(LOCAL)(raw_inputs=files[day], day=day,  # noqa: B023 - called at once
                                                   quantize_config=cfgs["quantize"], **common))
            rows.append({"day": day, "pipeline": "daily_retrain", "decision": decision})
        evals = [r for r in child_run_summaries(parent.run_id) if r["tags"].get("recpipe.step") == "evaluate"]
        for row, ev in zip(rows, sorted(evals, key=lambda r: r["start_time"])):
            row.update({k: ev["metrics"].get(k) for k in ("eval/auc", "eval/ne", "eval/calibration",
                                                          "eval/champion/auc", "eval/champion/ne")})
        parent.log_dict({"runs": rows}, "summary.json")
        return parent.run_id


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ["day", "pipeline", "decision", "eval/auc", "eval/ne", "eval/calibration", "eval/champion/auc",
            "eval/champion/ne"]
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(x) for x in cells)])


def _say(msg: str) -> None:
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()
