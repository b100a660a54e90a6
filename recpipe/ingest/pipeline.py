"""The Apache Beam ingestion pipeline: one day of raw files → staged Parquet parts, dead letters, statistics.

Stages (one named composite PTransform each, module-level DoFns, Arrow tables as elements — never a dict per
row)::

    units ─ Reshuffle ─ ParseAndValidate ─┬─ Transform ─┬─ WriteParquet            (staging/data/*.parquet)
                                          │  (side in:  └─ ComputeStats            (staging/stats.json)
                                          │   encoders)
                                          ├─ WriteDeadLetters                       (staging/dead/*.jsonl)
                                          └─ Account (rows in, dead per reason)     (staging/accounting.json)
    units ─ Reshuffle ─ ParseAndValidate ─ CountValues ─ BuildVocabulary ─> encoders side input
                                                          (vocabulary features only; staging/vocab/)

The vocabulary branch re-reads the input instead of materialising the parsed day between the stages (parsing
is cheaper than shuffling it). :func:`build` wires the graph onto a pipeline; :func:`run_day_beam` runs one
day for :mod:`recpipe.ingest.driver`; :func:`run` is the command line (``python -m recpipe.ingest.pipeline``).
Runner selection is plain Beam pipeline options — see ``recpipe/ingest/README.md``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from recpipe.fileio import atomic_write_json
from recpipe.ingest.engine_arrow import read_unit
from recpipe.ingest.options import IngestOptions
from recpipe.ingest.parse import REASONS
from recpipe.ingest.sources import WorkUnit
from recpipe.ingest.stats import DayStats, stats_json
from recpipe.ingest.transform import Encoders, encode_rows, validate_rows
from recpipe.ingest.vocab import COUNTS_SCHEMA, Vocabulary, count_values, merge_counts
from recpipe.ingest.writer import PartWriter, write_dead_jsonl
from recpipe.schema import Schema

log = logging.getLogger(__name__)

NAMESPACE = "recpipe.ingest"
"""Beam Metrics namespace of the pipeline's counters (``rows_in``, ``rows_written``, ``dead_<reason>``)."""

DEAD_TAG = "dead"
ROWS_IN_TAG = "rows_in"
STATS_TAG = "stats"
ACCOUNTING_FILE = "accounting.json"
STATS_FILE = "stats.json"
VOCAB_SUBDIR = "vocab"
COUNTS_COMPACT_TABLES = 8
"""A counts accumulator compacts (group-by-sum) once it holds this many un-merged tables."""


@dataclass(frozen=True)
class DayPlan:
    """Everything the pipeline of one day needs (pickled into the DoFns; no open handles)."""

    units: tuple[WorkUnit, ...]
    schema: Schema
    opts: IngestOptions
    day: str
    staging: str
    base_vocab: Vocabulary | None = None

    @property
    def data_dir(self) -> str:
        return os.path.join(self.staging, "data")

    @property
    def dead_dir(self) -> str:
        return os.path.join(self.staging, "dead")

    @property
    def vocab_features(self) -> list[str]:
        return [f.name for f in self.schema.sparse if f.encoding == "vocab"]


# ---------------------------------------------------------------------------------------------------- DoFns
class ParseValidateFn(beam.DoFn):
    """Work unit → clean Arrow tables (main), dead-letter tables (``dead``) and row counts (``rows_in``)."""

    def __init__(self, schema: Schema, opts: IngestOptions) -> None:
        self.schema = schema
        self.opts = opts
        self.rows_in = Metrics.counter(NAMESPACE, "rows_in")
        self.dead = {r: Metrics.counter(NAMESPACE, f"dead_{r}") for r in REASONS}

    def process(self, unit: WorkUnit) -> Iterator[Any]:
        unit = WorkUnit(*unit)
        for rows, dead in read_unit(unit, self.schema, self.opts):
            n = rows.num_rows + dead.num_rows
            self.rows_in.inc(n)
            yield beam.pvalue.TaggedOutput(ROWS_IN_TAG, n)
            clean, dead2 = validate_rows(rows, self.schema, unit.path, self.opts)
            for d in (dead, dead2):
                if d.num_rows:
                    for reason, count in zip(*_reason_counts(d)):
                        self.dead[reason].inc(count)
                    yield beam.pvalue.TaggedOutput(DEAD_TAG, d)
            if clean.num_rows:
                yield clean


class CountValuesFn(beam.DoFn):
    """Clean table → ``(feature, counts table)`` for every vocabulary feature."""

    def __init__(self, features: Sequence[str]) -> None:
        self.features = list(features)

    def process(self, clean: pa.Table) -> Iterator[tuple[str, pa.Table]]:
        for name in self.features:
            yield name, count_values(clean[name])


class MergeCountsFn(beam.CombineFn):
    """Sums value counts; the accumulator is a short list of :data:`COUNTS_SCHEMA` tables."""

    def create_accumulator(self) -> list[pa.Table]:
        return []

    def add_input(self, acc: list[pa.Table], table: pa.Table) -> list[pa.Table]:
        acc.append(table)
        return [merge_counts(acc)] if len(acc) >= COUNTS_COMPACT_TABLES else acc

    def merge_accumulators(self, accs: Iterable[list[pa.Table]]) -> list[pa.Table]:
        return [merge_counts([t for a in accs for t in a])]

    def extract_output(self, acc: list[pa.Table]) -> pa.Table:
        return merge_counts(acc) if acc else COUNTS_SCHEMA.empty_table()


class BuildVocabularyFn(beam.DoFn):
    """All features' day counts → the extended vocabulary (saved under staging) → the day's encoders."""

    def __init__(self, plan: DayPlan) -> None:
        self.plan = plan

    def process(self, counts: list[tuple[str, pa.Table]]) -> Iterator[Encoders]:
        plan = self.plan
        base = plan.base_vocab or Vocabulary.empty(plan.vocab_features)
        vocab = base.extend(dict(counts), plan.day, plan.schema)
        vocab.save(os.path.join(plan.staging, VOCAB_SUBDIR))
        yield Encoders.build(plan.schema, plan.opts.hash_seed, plan.day, vocab)


class EncodeFn(beam.DoFn):
    """Clean table → processed RecordBatch (main) + the batch's :class:`DayStats` (``stats``)."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.rows_out = Metrics.counter(NAMESPACE, "rows_encoded")

    def process(self, clean: pa.Table, encoders: Encoders) -> Iterator[Any]:
        stats = DayStats(self.schema.num_dense, self.schema.num_sparse)
        batch = encode_rows(clean, encoders, stats)
        self.rows_out.inc(batch.num_rows)
        yield batch
        yield beam.pvalue.TaggedOutput(STATS_TAG, stats)


class WriteParquetFn(beam.DoFn):
    """Streams a bundle's batches into its own Parquet parts (unique names) under ``directory``."""

    def __init__(self, directory: str, schema: Schema, opts: IngestOptions) -> None:
        self.directory = directory
        self.schema = schema
        self.opts = opts
        self.rows_written = Metrics.counter(NAMESPACE, "rows_written")
        self._writer: PartWriter | None = None

    def start_bundle(self) -> None:
        self._writer = None

    def process(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self._writer = PartWriter(self.directory, self.schema.arrow_schema(), self.opts)
        self._writer.write(batch)

    def finish_bundle(self) -> None:
        if self._writer is not None:
            for _, rows in self._writer.close():
                self.rows_written.inc(rows)
            self._writer = None


class WriteDeadFn(beam.DoFn):
    """Writes a bundle's dead-letter tables as one JSONL file under ``directory``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._parts: list[pa.Table] = []

    def start_bundle(self) -> None:
        self._parts = []

    def process(self, dead: pa.Table) -> None:
        self._parts.append(dead)

    def finish_bundle(self) -> None:
        if self._parts:
            write_dead_jsonl(self.directory, pa.concat_tables(self._parts), prefix=f"dead-{uuid.uuid4().hex[:12]}")
            self._parts = []


class MergeStatsFn(beam.CombineFn):
    """Merges per-batch :class:`DayStats` (associative; order-independent)."""

    def __init__(self, num_dense: int, num_sparse: int) -> None:
        self.num_dense = num_dense
        self.num_sparse = num_sparse

    def create_accumulator(self) -> DayStats:
        return DayStats(self.num_dense, self.num_sparse)

    def add_input(self, acc: DayStats, stats: DayStats) -> DayStats:
        return acc.merge(stats)

    def merge_accumulators(self, accs: Iterable[DayStats]) -> DayStats:
        out = self.create_accumulator()
        for a in accs:
            out.merge(a)
        return out

    def extract_output(self, acc: DayStats) -> DayStats:
        return acc


class WriteJsonFn(beam.DoFn):
    """Writes its single input element (a JSON-able mapping) to ``path`` atomically."""

    def __init__(self, path: str) -> None:
        self.path = path

    def process(self, data: dict[str, Any]) -> None:
        atomic_write_json(self.path, data)


def _reason_counts(dead: pa.Table) -> tuple[list[str], list[int]]:
    vc = dead["reason"].value_counts()
    return vc.field("values").to_pylist(), vc.field("counts").to_pylist()


def _dead_reason_pairs(dead: pa.Table) -> list[tuple[str, int]]:
    return list(zip(*_reason_counts(dead)))


def _stats_body(stats: DayStats, schema: Schema) -> dict[str, Any]:
    return stats_json(stats, schema)


def _accounting_body(pairs: list[tuple[str, int]]) -> dict[str, Any]:
    d = dict(pairs)
    return {"rows_in": int(d.pop(ROWS_IN_TAG, 0)), "dead_by_reason": {k: int(v) for k, v in sorted(d.items())}}


# ---------------------------------------------------------------------------------------------------- stages
class ParseAndValidate(beam.PTransform):
    """Work units → ``{"clean": tables, "dead": tables, "rows_in": ints}`` (spread over workers first)."""

    def __init__(self, schema: Schema, opts: IngestOptions) -> None:
        super().__init__()
        self.schema = schema
        self.opts = opts

    def expand(self, units: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return (units
                | "Spread" >> beam.Reshuffle()
                | "Parse" >> beam.ParDo(ParseValidateFn(self.schema, self.opts)).with_outputs(
                    DEAD_TAG, ROWS_IN_TAG, main="clean"))


class CountValues(beam.PTransform):
    """Clean tables → one element: ``[(feature, counts table), ...]`` over the whole day."""

    def __init__(self, features: Sequence[str]) -> None:
        super().__init__()
        self.features = list(features)

    def expand(self, clean: beam.PCollection) -> beam.PCollection:
        return (clean
                | "PerFeature" >> beam.ParDo(CountValuesFn(self.features))
                | "Sum" >> beam.CombinePerKey(MergeCountsFn())
                | "Gather" >> beam.combiners.ToList())


class BuildVocabulary(beam.PTransform):
    """Day counts → the day's :class:`Encoders` (a singleton; the extended vocabulary is saved in staging)."""

    def __init__(self, plan: DayPlan) -> None:
        super().__init__()
        self.plan = plan

    def expand(self, counts: beam.PCollection) -> beam.PCollection:
        return counts | "Extend" >> beam.ParDo(BuildVocabularyFn(self.plan))


class Transform(beam.PTransform):
    """Clean tables + encoders (side input) → ``{"batches": RecordBatches, "stats": DayStats}``."""

    def __init__(self, schema: Schema, encoders: beam.pvalue.AsSingleton) -> None:
        super().__init__()
        self.schema = schema
        self.encoders = encoders

    def expand(self, clean: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return clean | "Encode" >> beam.ParDo(EncodeFn(self.schema), self.encoders).with_outputs(
            STATS_TAG, main="batches")


class WriteParquet(beam.PTransform):
    """Processed batches → Parquet parts in ``directory`` (renamed ``part-NNNNN`` when the day is published)."""

    def __init__(self, directory: str, schema: Schema, opts: IngestOptions) -> None:
        super().__init__()
        self.directory = directory
        self.schema = schema
        self.opts = opts

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "Write" >> beam.ParDo(WriteParquetFn(self.directory, self.schema, self.opts))


class WriteDeadLetters(beam.PTransform):
    """Dead-letter tables → JSONL files in ``directory``."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory

    def expand(self, dead: beam.PCollection) -> beam.PCollection:
        return dead | "Write" >> beam.ParDo(WriteDeadFn(self.directory))


class ComputeStats(beam.PTransform):
    """Per-batch statistics → one merged :class:`DayStats`, rendered to JSON (``path`` when given)."""

    def __init__(self, schema: Schema, path: str | None = None) -> None:
        super().__init__()
        self.schema = schema
        self.path = path

    def expand(self, stats: beam.PCollection) -> beam.PCollection:
        body = (stats
                | "Merge" >> beam.CombineGlobally(MergeStatsFn(self.schema.num_dense, self.schema.num_sparse))
                | "Render" >> beam.Map(_stats_body, self.schema))
        if self.path:
            body | "Save" >> beam.ParDo(WriteJsonFn(self.path))
        return body


class Account(beam.PTransform):
    """Row counts + dead tables → ``{"rows_in": n, "dead_by_reason": {...}}`` (``path`` when given)."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.path = path

    def expand(self, pcolls: tuple[beam.PCollection, beam.PCollection]) -> beam.PCollection:
        rows_in, dead = pcolls
        pairs = ((rows_in | "KeyRowsIn" >> beam.Map(lambda n: (ROWS_IN_TAG, n)),
                  dead | "KeyReasons" >> beam.FlatMap(_dead_reason_pairs))
                 | "Flatten" >> beam.Flatten())
        body = (pairs
                | "Sum" >> beam.CombinePerKey(sum)
                | "Gather" >> beam.combiners.ToList()
                | "Render" >> beam.Map(_accounting_body))
        if self.path:
            body | "Save" >> beam.ParDo(WriteJsonFn(self.path))
        return body


def build(p: beam.Pipeline, plan: DayPlan) -> dict[str, beam.PCollection]:
    """Wires one day's ingestion onto ``p``; outputs land under ``plan.staging``.

    Returns:
        The stats and accounting PCollections (one element each), for tests and callers that want them.
    """
    units = p | "Units" >> beam.Create(list(plan.units))
    if plan.vocab_features:
        counted = units | "CountPass" >> ParseAndValidate(plan.schema, plan.opts)
        encoders = (counted.clean
                    | "CountValues" >> CountValues(plan.vocab_features)
                    | "BuildVocabulary" >> BuildVocabulary(plan))
    else:
        encoders = p | "Encoders" >> beam.Create([Encoders.build(plan.schema, plan.opts.hash_seed, plan.day, None)])
    parsed = units | "ParseAndValidate" >> ParseAndValidate(plan.schema, plan.opts)
    out = parsed.clean | "Transform" >> Transform(plan.schema, beam.pvalue.AsSingleton(encoders))
    out.batches | "WriteParquet" >> WriteParquet(plan.data_dir, plan.schema, plan.opts)
    parsed.dead | "WriteDeadLetters" >> WriteDeadLetters(plan.dead_dir)
    stats = out.stats | "ComputeStats" >> ComputeStats(plan.schema, os.path.join(plan.staging, STATS_FILE))
    accounting = (parsed.rows_in, parsed.dead) | "Account" >> Account(os.path.join(plan.staging, ACCOUNTING_FILE))
    return {"stats": stats, "accounting": accounting}


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam options from ``beam_args``; with no runner given: DirectRunner, multi-processing, one worker per core."""
    options = PipelineOptions(list(beam_args))
    std = options.view_as(StandardOptions)
    if std.runner is None or std.runner in ("DirectRunner", "direct"):
        direct = options.view_as(DirectOptions)
        given = " ".join(beam_args)
        if "direct_running_mode" not in given:
            direct.direct_running_mode = "multi_processing"
        if "direct_num_workers" not in given and direct.direct_running_mode != "in_memory":
            direct.direct_num_workers = os.cpu_count() or 1
    return options


def run_day_beam(units: Sequence[WorkUnit], schema: Schema, opts: IngestOptions, day: str,
                 base_vocab: Vocabulary | None, data_dir: str, dead_dir: str,
                 beam_args: Sequence[str]) -> tuple[int, int, dict[str, Any], dict[str, int], Vocabulary | None]:
    """Runs one day's pipeline into a staging directory (the parent of ``data_dir``) and reads back its results.

    Returns:
        (rows_in, rows_written, statistics JSON body, dead rows per reason, extended vocabulary or None).
    """
    staging = os.path.dirname(data_dir)
    plan = DayPlan(tuple(units), schema, opts, day, staging, base_vocab)
    if os.path.abspath(plan.dead_dir) != os.path.abspath(dead_dir):
        raise ValueError(f"run_day_beam: dead_dir {dead_dir} must be {plan.dead_dir}")
    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        build(p, plan)
    with open(os.path.join(staging, ACCOUNTING_FILE), encoding="utf-8") as fh:
        accounting = json.load(fh)
    with open(os.path.join(staging, STATS_FILE), encoding="utf-8") as fh:
        stats = json.load(fh)
    written = sum(pq.ParquetFile(os.path.join(data_dir, n)).metadata.num_rows
                  for n in os.listdir(data_dir) if n.endswith(".parquet"))
    vocab = None
    if plan.vocab_features:
        vocab = Vocabulary.load(os.path.join(staging, VOCAB_SUBDIR), plan.vocab_features)
    return accounting["rows_in"], written, stats, accounting["dead_by_reason"], vocab


def run(argv: Sequence[str] | None = None) -> int:
    """``python -m recpipe.ingest.pipeline --inputs ... --dataset_root ... [Beam options]`` (Criteo/hash by default)."""
    from recpipe.ingest.driver import ingest
    from recpipe.schema import criteo_schema

    parser = argparse.ArgumentParser(prog="python -m recpipe.ingest.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", nargs="+", required=True)
    parser.add_argument("--dataset_root", required=True)
    parser.add_argument("--day", default=None)
    parser.add_argument("--schema_path", default=None, help="YAML/JSON schema (default: Criteo preset)")
    parser.add_argument("--ingest_options", default="{}", help="IngestOptions as JSON")
    args, beam_args = parser.parse_known_args(argv)
    schema = Schema.load(args.schema_path) if args.schema_path else criteo_schema()
    reports = ingest(args.inputs, args.dataset_root, schema, IngestOptions.from_json(args.ingest_options),
                     day=args.day, engine="beam", beam_args=beam_args)
    for r in reports:
        log.info("day %s: %d rows in, %d written, %d dead", r.day, r.rows_in, r.rows_written, r.rows_dead)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(run())
