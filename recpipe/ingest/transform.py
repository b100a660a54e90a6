"""Validation and feature transforms on Arrow tables (the per-batch work of both engines).

``validate_rows``: string rows (from :mod:`recpipe.ingest.parse`) → a *clean* table (``label`` float32,
dense float32 already clipped and transformed with nulls where the raw value was missing, sparse raw values
as ``string`` or ``list<string>``) + dead-letter records for bad labels and numbers.
``encode_rows``: clean table → the processed batch of ``Schema.arrow_schema()`` (dense nulls filled, sparse
values turned into ids by hashing or vocabulary lookup) + the batch's :class:`DayStats`.
Everything is column-wise (pyarrow compute / numpy); only dead rows become Python objects.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recpipe.ingest.hashing import bucketize, hash_strings, seed_for
from recpipe.ingest.options import HASH_RESERVED, MISSING_ID, OOV_ID, VOCAB_RESERVED, IngestOptions
from recpipe.ingest.parse import OFFSET_COLUMN, dead_table, empty_dead
from recpipe.ingest.stats import DayStats
from recpipe.ingest.vocab import Vocabulary
from recpipe.schema import DenseFeature, Schema

log = logging.getLogger(__name__)

NUMBER_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
"""What a parsable number looks like (no spaces, no nan/inf)."""

_REASON_MISSING_LABEL, _REASON_BAD_LABEL, _REASON_NUMBER, _REASON_RANGE = range(4)
_REASON_NAMES = ("missing_label", "bad_label", "unparsable_number", "out_of_range")


def _to_float(col: pa.Array, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values (B,) float64, missing (B,) bool, unparsable (B,) bool) of a string or numeric column."""
    missing = col.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            num = pc.cast(col, pa.float64())
            bad = np.zeros(len(col), bool)
        except pa.ArrowInvalid:  # at least one unparsable value: find them, then cast the rest
            ok = pc.fill_null(pc.match_substring_regex(col, NUMBER_RE), True)
            bad = ~ok.to_numpy(zero_copy_only=False)
            try:
                num = pc.cast(pc.if_else(ok, col, pa.scalar(None, col.type)), pa.float64())
            except pa.ArrowInvalid as e:
                raise ValueError(f"{where}: values pass {NUMBER_RE!r} but do not cast to float: {e}") from e
    elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
        num, bad = pc.cast(col, pa.float64()), np.zeros(len(col), bool)
    else:
        raise ValueError(f"{where}: type {col.type} is not numeric or string")
    values = num.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    nonfinite = ~np.isfinite(values) & ~missing & ~bad
    return values, missing, bad | nonfinite


def _transform_dense(values: np.ndarray, f: DenseFeature) -> tuple[np.ndarray, np.ndarray]:
    """Clips and transforms raw values (B,); returns (out (B,) float64, out_of_range (B,) bool)."""
    x = values if f.clip_min is None else np.maximum(values, f.clip_min)
    if f.transform == "log1p":
        bad = x <= -1.0
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.log1p(x), bad
    return x, np.zeros(len(x), bool)


def fill_value_out(f: DenseFeature) -> float:
    """The output value of a missing dense raw value: the fill value, clipped and transformed."""
    out, bad = _transform_dense(np.array([f.fill_value], np.float64), f)
    if bad[0]:
        raise ValueError(f"dense feature {f.name!r}: fill_value {f.fill_value} is outside log1p's domain")
    return float(out[0])


def _raw_rows(rows: pa.Table, idx: np.ndarray, delimiter: str, limit: int) -> list[str]:
    """Reconstructed raw text of rows ``idx`` (fields joined by ``delimiter``; JSON for non-string columns)."""
    sub = rows.take(pa.array(idx, pa.int64())).drop_columns([OFFSET_COLUMN])
    out = []
    for rec in sub.to_pylist():  # dead rows only: few
        vals = list(rec.values())
        if all(v is None or isinstance(v, str) for v in vals):
            text = delimiter.join("" if v is None else v for v in vals)
        else:
            text = json.dumps(rec, default=str)
        out.append(text[:limit])
    return out


def validate_rows(rows: pa.Table, schema: Schema, path: str, opts: IngestOptions) -> tuple[pa.Table, pa.Table]:
    """Checks labels and dense numbers; clips and transforms dense values.

    Args:
        rows: (B rows) raw columns (string, or typed for Parquet input) + :data:`OFFSET_COLUMN`.
        schema: the dataset schema.
        path: source file (named in dead-letter records and errors).
        opts: options (delimiter for reconstructed raw text, ``dead_raw_chars``).

    Returns:
        (clean, dead): ``clean`` has ``label`` float32, N dense float32 (null = missing), F sparse raw columns
        (``string`` / ``list<string>`` for multi-hot, null = missing) and :data:`OFFSET_COLUMN`.
    """
    n = rows.num_rows
    reason = np.full(n, -1, np.int8)
    where = np.full(n, -1, np.int32)  # index into raw_columns of the offending field

    def mark(mask: np.ndarray, code: int, col: int) -> None:
        hit = mask & (reason < 0)
        reason[hit] = code
        where[hit] = col

    label_col = rows[schema.label.name].combine_chunks()
    lab, lab_missing, lab_bad = _to_float(label_col, f"{path}: label {schema.label.name!r}")
    mark(lab_missing, _REASON_MISSING_LABEL, 0)
    mark(lab_bad | ~(np.isin(lab, (0.0, 1.0)) | lab_missing), _REASON_BAD_LABEL, 0)
    dense_out: list[pa.Array] = []
    for j, f in enumerate(schema.dense, start=1):
        vals, miss, bad = _to_float(rows[f.name].combine_chunks(), f"{path}: dense {f.name!r}")
        mark(bad, _REASON_NUMBER, j)
        out, oor = _transform_dense(np.where(miss | bad, 0.0, vals), f)
        mark(oor & ~miss & ~bad, _REASON_RANGE, j)
        dense_out.append(pa.array(out.astype(np.float32), pa.float32(), mask=miss))
    good = reason < 0
    dead = empty_dead()
    if not good.all():
        idx = np.flatnonzero(~good)
        offsets = rows[OFFSET_COLUMN].to_numpy()[idx]
        unit = "row" if opts.input_format == "parquet" else "byte"
        raws = _raw_rows(rows, idx, opts.delimiter, opts.dead_raw_chars)
        names = schema.raw_columns
        parts = []
        for code in np.unique(reason[idx]):
            sel = np.flatnonzero(reason[idx] == code)
            for col in np.unique(where[idx][sel]):
                s2 = sel[where[idx][sel] == col]
                parts.append(dead_table(path, offsets[s2], unit, _REASON_NAMES[code], [raws[i] for i in s2],
                                        field=names[col]))
        dead = pa.concat_tables(parts)
    keep = pa.array(good)
    cols: dict[str, pa.Array] = {schema.label.name: pa.array(lab.astype(np.float32), pa.float32()).filter(keep)}
    for f, arr in zip(schema.dense, dense_out):
        cols[f.name] = arr.filter(keep)
    for f in schema.sparse:
        cols[f.name] = _sparse_raw(rows[f.name].combine_chunks(), f.multi_hot, f.separator).filter(keep)
    cols[OFFSET_COLUMN] = rows[OFFSET_COLUMN].combine_chunks().filter(keep)
    return pa.table(cols), dead


def _sparse_raw(col: pa.Array, multi_hot: bool, separator: str) -> pa.Array:
    """Normalises a raw categorical column: ``string`` (single) or ``list<string>`` (multi-hot)."""
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return col.cast(pa.list_(pa.string())) if multi_hot else pc.cast(pc.list_element(col, 0), pa.string())
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = pc.cast(col, pa.string())
    if pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
    if multi_hot:
        return pc.split_pattern(col, separator)
    return col


@dataclass
class Encoders:
    """What turns raw categorical values into ids for one day (a Beam side input; pickles cheaply).

    Attributes:
        schema: the dataset schema (sparse encodings and bucket counts).
        seed: the hash seed.
        day: the day being ingested.
        vocab: per vocabulary feature (values (V,) string in id order, prior (V,) bool); empty for hashing.
    """

    schema: Schema
    seed: int
    day: str
    vocab: dict[str, tuple[pa.Array, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def build(cls, schema: Schema, seed: int, day: str, vocabulary: Vocabulary | None) -> "Encoders":
        vocab = {}
        for f in schema.sparse:
            if f.encoding == "vocab":
                if vocabulary is None:
                    raise ValueError(f"sparse feature {f.name!r} uses vocab encoding but no vocabulary was given")
                vocab[f.name] = vocabulary.lookup_arrays(f.name, day)
        return cls(schema, seed, day, vocab)


def _encode_values(values: pa.Array, name: str, encoding: str, num_embeddings: int, seed: int,
                   vocab: tuple[pa.Array, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids (V,) int64, hashes (V,) uint64, new count) of V non-null raw values."""
    hashes = hash_strings(values, seed_for(name, seed))
    if encoding == "hash":
        return bucketize(hashes, num_embeddings, HASH_RESERVED), hashes, 0
    if vocab is None:
        raise ValueError(f"sparse feature {name!r}: vocab encoding needs the day's vocabulary in the encoders")
    vocab_values, prior = vocab
    idx = pc.index_in(values, value_set=vocab_values).to_numpy(zero_copy_only=False)
    found = ~np.isnan(idx) if idx.dtype.kind == "f" else np.ones(len(idx), bool)
    pos = np.where(found, np.nan_to_num(idx, nan=0.0), 0).astype(np.int64)
    ids = np.where(found, pos + VOCAB_RESERVED, OOV_ID).astype(np.int64)
    new = int((~found | ~prior[pos] if len(prior) else ~found).sum()) if len(values) else 0
    return ids, hashes, new


def encode_rows(clean: pa.Table, enc: Encoders, stats: DayStats | None = None) -> pa.RecordBatch:
    """Fills dense nulls, encodes sparse values into ids, adds the day column.

    Args:
        clean: (B rows) output of :func:`validate_rows`.
        enc: encoders of the day.
        stats: accumulator updated with this batch (rows, label, dense and sparse figures), if given.

    Returns:
        (B rows) a batch of ``enc.schema.arrow_schema()``: label float32, N dense float32, F sparse int64 or
        list<int64> (missing -> [0]), day string.
    """
    schema = enc.schema
    n = clean.num_rows
    arrays: list[pa.Array] = [clean[schema.label.name].combine_chunks()]
    if stats is not None:
        stats.rows += n
        stats.label_sum += float(pc.sum(arrays[0]).as_py() or 0.0)
    for j, f in enumerate(schema.dense):
        col = clean[f.name].combine_chunks()
        missing = col.is_null().to_numpy(zero_copy_only=False)
        filled = col.fill_null(pa.scalar(fill_value_out(f), pa.float32())) if col.null_count else col
        arrays.append(filled)
        if stats is not None:
            stats.add_dense(j, filled.to_numpy(zero_copy_only=False), missing)
    for j, f in enumerate(schema.sparse):
        col = clean[f.name].combine_chunks()
        vocab = enc.vocab.get(f.name)
        if f.multi_hot:
            arr, n_missing, n_values, new, hashes = _encode_multi_hot(col, f.name, f.encoding, f.num_embeddings,
                                                                      enc.seed, vocab)
        else:
            missing = col.is_null().to_numpy(zero_copy_only=False)
            present = col.drop_null() if col.null_count else col
            ids_present, hashes, new = _encode_values(present, f.name, f.encoding, f.num_embeddings, enc.seed,
                                                      vocab)
            ids = np.full(n, MISSING_ID, np.int64)
            ids[~missing] = ids_present
            arr = pa.array(ids, pa.int64())
            n_missing, n_values = int(missing.sum()), len(present)
        arrays.append(arr)
        if stats is not None:
            stats.add_sparse(j, missing=n_missing, values=n_values, new=new, hashes=hashes)
    arrays.append(pa.array(np.full(n, enc.day, dtype=object), pa.string()) if n else pa.array([], pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=schema.arrow_schema())


def _encode_multi_hot(col: pa.Array, name: str, encoding: str, num_embeddings: int, seed: int,
                      vocab: tuple[pa.Array, np.ndarray] | None) -> tuple[pa.Array, int, int, int, np.ndarray]:
    """Encodes a (B,) list<string> column (empty strings dropped; a row left empty -> [MISSING_ID])."""
    b = len(col)
    lists = col.fill_null(pa.scalar([], pa.list_(pa.string()))) if col.null_count else col
    flat = pc.list_flatten(lists)
    row_of = pc.list_parent_indices(lists).to_numpy()
    keep = pc.and_(pc.is_valid(flat), pc.not_equal(flat, "")).fill_null(False).to_numpy(zero_copy_only=False)
    values = flat.filter(pa.array(keep))
    row_of = row_of[keep]
    ids, hashes, new = _encode_values(values, name, encoding, num_embeddings, seed, vocab)
    counts = np.bincount(row_of, minlength=b)  # (B,) values kept per row
    empty = counts == 0
    # every empty row gets one MISSING_ID: insert it in place, keeping row order
    lengths = np.where(empty, 1, counts)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    out = np.full(int(offsets[-1]), MISSING_ID, np.int64)
    slot = offsets[:-1][row_of] + (np.arange(len(row_of)) - np.concatenate([[0], np.cumsum(counts)])[row_of])
    out[slot] = ids
    arr = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(out, pa.int64()))
    return arr, int(empty.sum()), len(values), new, hashes
