"""Options of the ingestion core (shared by the pyarrow engine and the Beam pipeline)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from recpipe.config import JsonConfig

INPUT_FORMATS = ("criteo_tsv", "csv", "parquet")

MISSING_ID = 0
"""Reserved id of a missing categorical value (both encodings)."""

OOV_ID = 1
"""Reserved id of a rare or unseen value (vocabulary encoding)."""

HASH_RESERVED = 1
"""Ids reserved below the hash buckets: 0 = missing; hashed values land in ``1 .. num_embeddings - 1``."""

VOCAB_RESERVED = 2
"""Ids reserved below the vocabulary: 0 = missing, 1 = rare/unseen; entry i gets id ``2 + i``."""

DAY_RE = re.compile(r"(\d{4}-\d{2}-\d{2})")
"""A day in a file name: ``<dir>/2024-05-01.tsv.gz``."""


class IngestError(RuntimeError):
    """Ingestion failed as a whole (too many bad rows, unreadable input, inconsistent dataset root)."""


@dataclass(frozen=True)
class IngestOptions(JsonConfig):
    """How raw files are read and written.

    Attributes:
        input_format: ``"criteo_tsv"`` (tab-separated, no header, schema column order), ``"csv"`` (header row
            naming the columns unless ``csv_header`` is false) or ``"parquet"`` (columns by name).
        csv_delimiter: field separator of ``"csv"`` input.
        csv_header: whether ``"csv"`` files start with a header row.
        hash_seed: seed of the categorical hash; part of the dataset's identity (stored in the manifest).
        max_bad_fraction: the day fails (nothing is published) when dead rows / input rows exceed this.
        max_row_bytes: lines longer than this are dead-lettered as ``oversize_row``.
        split_bytes: uncompressed delimited files are split into byte ranges of this size (one work item each).
        chunk_bytes: a range is read and parsed in chunks of about this many bytes (bounds worker memory).
        row_group_rows: rows per Parquet row group (sized for streaming readers).
        part_rows: rows per output Parquet file (a writer rolls to a new part past this).
        compression: Parquet codec.
        dead_raw_chars: the raw text kept in a dead-letter record is cut to this many characters.
    """

    input_format: str = "criteo_tsv"
    csv_delimiter: str = ","
    csv_header: bool = True
    hash_seed: int = 20240501
    max_bad_fraction: float = 0.01
    max_row_bytes: int = 1 << 16
    split_bytes: int = 32 << 20
    chunk_bytes: int = 16 << 20
    row_group_rows: int = 1 << 16
    part_rows: int = 1 << 20
    compression: str = "snappy"
    dead_raw_chars: int = 2048

    def __post_init__(self) -> None:
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"IngestOptions.input_format: {self.input_format!r} not in {INPUT_FORMATS}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"IngestOptions.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        for name in ("max_row_bytes", "split_bytes", "chunk_bytes", "row_group_rows", "part_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"IngestOptions.{name} must be >= 1, got {getattr(self, name)}")
        if len(self.csv_delimiter) != 1:
            raise ValueError(f"IngestOptions.csv_delimiter must be one character, got {self.csv_delimiter!r}")

    @property
    def delimiter(self) -> str:
        return "\t" if self.input_format == "criteo_tsv" else self.csv_delimiter

    @property
    def has_header(self) -> bool:
        return self.input_format == "csv" and self.csv_header
