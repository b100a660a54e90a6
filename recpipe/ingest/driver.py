"""One entry point for both engines: inputs → days → staged output → checks → atomic publish.

Per day: (vocabulary features only) count values and extend the append-only vocabulary, build the day's
encoders, process every work unit (engine ``"arrow"``: this process; ``"beam"``: the Beam pipeline of
:mod:`recpipe.ingest.pipeline`), check ``rows_in == rows_written + rows_dead`` and the bad-row fraction, then
publish. A failed check discards the staging directory: nothing of the day becomes visible.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from recpipe.ingest.dataset import DatasetRoot
from recpipe.ingest.engine_arrow import count_vocab_arrow, process_arrow
from recpipe.ingest.options import IngestError, IngestOptions
from recpipe.ingest.sources import expand_inputs, group_by_day, plan_units
from recpipe.ingest.transform import Encoders, fill_value_out
from recpipe.schema import Schema

log = logging.getLogger(__name__)

ENGINES = ("beam", "arrow")


@dataclass
class DayReport:
    """What ingesting one day produced."""

    day: str
    rows_in: int
    rows_written: int
    rows_dead: int
    dead_by_reason: dict[str, int]
    stats: dict[str, Any]
    table_sizes: dict[str, int]
    files: list[str] = field(default_factory=list)


def ingest(inputs: Sequence[str], dataset_root: str, schema: Schema, opts: IngestOptions, *,
           day: str | None = None, engine: str = "beam", beam_args: Sequence[str] = ()) -> list[DayReport]:
    """Ingests raw files into ``dataset_root``, one day at a time in date order.

    Args:
        inputs: files, globs or directories (any Beam filesystem).
        dataset_root: the dataset root (POSIX path; see :mod:`recpipe.ingest.dataset`).
        schema: feature schema (encodings, bucket counts / vocab capacities, dense transforms).
        opts: reading/writing options.
        day: the day of every input; ``None`` infers it from each file name (several days allowed).
        engine: ``"beam"`` or ``"arrow"``.
        beam_args: Beam pipeline options (``--runner=FlinkRunner ...``), engine ``"beam"`` only.

    Raises:
        IngestError: unreadable input, inconsistent root, broken row accounting or too many bad rows.
    """
    if engine not in ENGINES:
        raise IngestError(f"engine {engine!r} not in {ENGINES}")
    for f in schema.dense:
        fill_value_out(f)  # fails early on a fill value outside the transform's domain
    root = DatasetRoot(dataset_root)
    root.check_compatible(schema, opts.hash_seed)
    by_day = group_by_day(expand_inputs(inputs), day)
    return [_ingest_day(root, d, files, schema, opts, engine, beam_args) for d, files in by_day.items()]


def _ingest_day(root: DatasetRoot, day: str, files: list[str], schema: Schema, opts: IngestOptions,
                engine: str, beam_args: Sequence[str]) -> DayReport:
    units = plan_units(files, schema.raw_columns, opts)
    log.info("ingest %s: %d files, %d work units, engine=%s", day, len(files), len(units), engine)
    vocab_feats = [f.name for f in schema.sparse if f.encoding == "vocab"]
    staging = root.new_staging(day)
    try:
        if engine == "arrow":
            vocab = None
            if vocab_feats:
                vocab = root.load_vocab(schema).extend(count_vocab_arrow(units, schema, opts), day, schema)
            enc = Encoders.build(schema, opts.hash_seed, day, vocab)
            rows_in, written, stats, dead_by_reason = process_arrow(units, schema, opts, enc, staging.data,
                                                                        staging.dead)
        else:
            from recpipe.ingest.pipeline import run_day_beam

            base = root.load_vocab(schema) if vocab_feats else None
            rows_in, written, stats, dead_by_reason, vocab = run_day_beam(
                units, schema, opts, day, base, staging.data, staging.dead, beam_args)
        dead = sum(dead_by_reason.values())
        if rows_in != written + dead:
            raise IngestError(f"day {day}: row accounting broken: {rows_in} rows in != {written} written + "
                              f"{dead} dead-lettered")
        if rows_in and dead / rows_in > opts.max_bad_fraction:
            raise IngestError(f"day {day}: {dead} of {rows_in} rows ({dead / rows_in:.2%}) are bad, above "
                              f"max_bad_fraction={opts.max_bad_fraction:.2%}; reasons {dead_by_reason}; "
                              f"nothing was published (inputs: {files})")
        stats.update({"day": day, "rows_in": rows_in, "rows_dead": dead, "dead_by_reason": dead_by_reason,
                      "files": files})
        manifest = root.publish(staging, day, schema=schema, seed=opts.hash_seed, rows=written, stats=stats,
                                vocab=vocab)
    except BaseException:
        root.discard(staging)
        raise
    log.info("ingest %s: %d rows in, %d written, %d dead %s", day, rows_in, written, dead, dead_by_reason)
    return DayReport(day, rows_in, written, dead, dead_by_reason, stats, manifest["table_sizes"], files)
