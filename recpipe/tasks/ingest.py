"""Step executor ``ingest``: raw click logs → validated, day-partitioned Parquet in a long-lived dataset root.

``python -m recpipe.tasks.ingest --inputs raw/ --dataset-root data/ --config '{"encoding": "vocab"}'``

See :mod:`recpipe.ingest` for the layout of the dataset root and ``recpipe/ingest/README.md`` for running the
Beam engine on Flink, Spark or Dataflow.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

from recpipe.config import JsonConfig
from recpipe.ingest.driver import ENGINES, DayReport, ingest
from recpipe.ingest.options import INPUT_FORMATS, IngestOptions
from recpipe.schema import SPARSE_ENCODINGS, Schema, criteo_schema
from recpipe.tasks.base import Result, config_from_arg, step_tracker, write_json
from recpipe.tracking.base import Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig(JsonConfig):
    """Configuration of the ingest step.

    Attributes:
        schema: schema mapping (as :meth:`Schema.to_dict`); ``None`` with no ``schema_path`` = the Criteo preset.
        schema_path: a YAML/JSON schema file (``Schema.load``); wins over ``schema``.
        encoding: ``"hash"`` or ``"vocab"`` for every sparse feature; ``None`` keeps the schema's per-feature choice.
        hash_buckets: bucket count (hash) or capacity (vocab) of every sparse feature; ``None`` keeps the schema's.
        min_count: vocabulary frequency threshold of every feature; ``None`` keeps the schema's.
        hash_seed: fixed seed of the categorical hash (part of the dataset's identity).
        max_bad_fraction: the day fails (nothing published) when more than this share of rows is bad.
        dense_transform: ``"log1p"``/``"none"`` for every dense feature; ``None`` keeps the schema's.
        dense_clip_min: lower clip of every dense feature (``None`` keeps the schema's; see ``no_dense_clip``).
        no_dense_clip: disables clipping of every dense feature.
        dense_fill_value: value of missing dense features; ``None`` keeps the schema's.
        input_format: ``"criteo_tsv"``, ``"csv"`` or ``"parquet"``.
        csv_delimiter / csv_header: CSV dialect.
        max_row_bytes: longer lines are dead-lettered.
        split_bytes: byte-range size of a work unit.
        row_group_rows / part_rows: output Parquet layout.
        engine: ``"beam"`` (default) or ``"arrow"`` (single-process pyarrow baseline).
        beam_args: Beam pipeline options, e.g. ``["--runner=FlinkRunner", "--flink_master=host:8081"]``.
    """

    schema: dict[str, Any] | None = None
    schema_path: str | None = None
    encoding: str | None = None
    hash_buckets: int | None = None
    min_count: int | None = None
    hash_seed: int = IngestOptions.hash_seed
    max_bad_fraction: float = IngestOptions.max_bad_fraction
    dense_transform: str | None = None
    dense_clip_min: float | None = None
    no_dense_clip: bool = False
    dense_fill_value: float | None = None
    input_format: str = "criteo_tsv"
    csv_delimiter: str = ","
    csv_header: bool = True
    max_row_bytes: int = IngestOptions.max_row_bytes
    split_bytes: int = IngestOptions.split_bytes
    row_group_rows: int = IngestOptions.row_group_rows
    part_rows: int = IngestOptions.part_rows
    engine: str = "beam"
    beam_args: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.encoding is not None and self.encoding not in SPARSE_ENCODINGS:
            raise ValueError(f"IngestConfig.encoding: {self.encoding!r} not in {SPARSE_ENCODINGS}")
        if self.engine not in ENGINES:
            raise ValueError(f"IngestConfig.engine: {self.engine!r} not in {ENGINES}")
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"IngestConfig.input_format: {self.input_format!r} not in {INPUT_FORMATS}")

    def build_schema(self) -> Schema:
        """The effective schema: the base (file, mapping or Criteo preset) with this config's overrides."""
        if self.schema_path:
            base = Schema.load(self.schema_path)
        elif self.schema is not None:
            base = Schema.from_dict(self.schema, source="IngestConfig.schema")
        else:
            base = criteo_schema()
        sparse = tuple(dataclasses.replace(
            f,
            encoding=self.encoding or f.encoding,
            num_embeddings=self.hash_buckets or f.num_embeddings,
            min_count=self.min_count or f.min_count) for f in base.sparse)
        dense = tuple(dataclasses.replace(
            f,
            transform=self.dense_transform or f.transform,
            clip_min=None if self.no_dense_clip else (f.clip_min if self.dense_clip_min is None
                                                      else self.dense_clip_min),
            fill_value=f.fill_value if self.dense_fill_value is None else self.dense_fill_value) for f in base.dense)
        return dataclasses.replace(base, sparse=sparse, dense=dense)

    def build_options(self) -> IngestOptions:
        return IngestOptions(input_format=self.input_format, csv_delimiter=self.csv_delimiter,
                             csv_header=self.csv_header, hash_seed=self.hash_seed,
                             max_bad_fraction=self.max_bad_fraction, max_row_bytes=self.max_row_bytes,
                             split_bytes=self.split_bytes, row_group_rows=self.row_group_rows,
                             part_rows=self.part_rows)


def run(cfg: IngestConfig, *, inputs: Sequence[str], dataset_root: str, day: str | None = None,
        tracker: Tracker | None = None) -> Result:
    """Ingests ``inputs`` into ``dataset_root`` (one or more days; each replaces that day atomically).

    Args:
        cfg: the step's configuration.
        inputs: files, globs or directories of raw input.
        dataset_root: the long-lived processed dataset (``day=YYYY-MM-DD/`` partitions + ``_manifest.json``).
        day: the day of all inputs; ``None`` infers it from the file names (``2024-05-01.tsv.gz``).
        tracker: receives params, ``ingest/*`` metrics (per day with ``step`` = day index, totals without)
            and each day's ``stats.json``.

    Returns:
        metrics ``ingest/rows``, ``ingest/rows_in``, ``ingest/dead_rows``, ``ingest/dead_fraction``,
        ``ingest/label_rate`` (over all days of the run); metadata ``schema_version, days, rows, table_sizes,
        dataset_root, encoding, engine``; outputs ``{"dataset_root": ...}``.
    """
    schema = cfg.build_schema()
    opts = cfg.build_options()
    if tracker is not None:
        tracker.log_params({f"ingest.{k}": v for k, v in cfg.to_dict().items() if k != "schema"})
    reports = ingest(list(inputs), dataset_root, schema, opts, day=day, engine=cfg.engine, beam_args=cfg.beam_args)
    for i, r in enumerate(reports):
        if tracker is not None:
            tracker.log_metrics(_day_metrics(r), step=i)
            tracker.log_dict(r.stats, f"ingest/stats/day={r.day}/stats.json")
    rows = sum(r.rows_written for r in reports)
    rows_in = sum(r.rows_in for r in reports)
    dead = sum(r.rows_dead for r in reports)
    positives = sum((r.stats.get("label_rate") or 0.0) * r.rows_written for r in reports)
    metrics = {"ingest/rows": float(rows), "ingest/rows_in": float(rows_in), "ingest/dead_rows": float(dead),
               "ingest/dead_fraction": dead / rows_in if rows_in else 0.0,
               "ingest/label_rate": positives / rows if rows else 0.0}
    if tracker is not None:
        tracker.log_metrics(metrics)
    from recpipe.ingest.dataset import DatasetRoot

    manifest = DatasetRoot(dataset_root).manifest() or {}
    metadata = {"schema_version": manifest.get("schema_version"), "days": [r.day for r in reports],
                "rows": rows, "table_sizes": manifest.get("table_sizes", {}), "dataset_root": dataset_root,
                "dataset_days": sorted(manifest.get("days", {})), "encoding": manifest.get("encoding", {}),
                "engine": cfg.engine}
    return Result(metrics=metrics, metadata=metadata, outputs={"dataset_root": dataset_root})


def _day_metrics(r: DayReport) -> dict[str, float]:
    out = {"ingest/day_rows": float(r.rows_written), "ingest/day_dead_rows": float(r.rows_dead),
           "ingest/day_label_rate": float(r.stats.get("label_rate") or 0.0)}
    for name, s in r.stats.get("sparse", {}).items():
        if s.get("new_id_rate") is not None:
            out[f"ingest/new_id_rate/{name.lower()}"] = float(s["new_id_rate"])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recpipe.tasks.ingest", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="{}", help="IngestConfig as JSON text, or a JSON file (path or @path)")
    p.add_argument("--inputs", nargs="+", required=True, help="raw files, globs or directories")
    p.add_argument("--dataset-root", required=True)
    p.add_argument("--day", default=None, help="YYYY-MM-DD of every input (default: from file names)")
    p.add_argument("--result", default=None, help="write the Result as JSON here")
    args = p.parse_args(argv)
    cfg = config_from_arg(IngestConfig, args.config)

    with step_tracker("ingest") as tracker:
        result = run(cfg, inputs=args.inputs, dataset_root=args.dataset_root, day=args.day, tracker=tracker)
    if args.result:
        write_json(args.result, result.to_dict())
    log.info("ingest: %s", json.dumps(result.metrics, sort_keys=True))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("RECPIPE_LOG", "INFO"))
    raise SystemExit(main())
