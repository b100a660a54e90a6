"""recpipe.data: the Batch type, the streaming Parquet loader and the synthetic Criteo-format generator.

Names are re-exported lazily so that importing one part (e.g. the numpy/pyarrow-only generator) does not
import torch through the loader.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Batch": "recpipe.data.batch",
    "LoaderConfig": "recpipe.data.loader",
    "ParquetLoader": "recpipe.data.loader",
    "list_days": "recpipe.data.parquet_io",
    "day_files": "recpipe.data.parquet_io",
    "write_processed_day": "recpipe.data.parquet_io",
    "SynthConfig": "recpipe.data.synthetic",
    "generate": "recpipe.data.synthetic",
    "TruthModel": "recpipe.data.synth_truth",
    "read_raw_day": "recpipe.data.synth_truth",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'recpipe.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
