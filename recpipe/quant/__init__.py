"""recpipe.quant: post-training quantization of embedding tables.

* :mod:`~recpipe.quant.table` — :class:`QuantizedTable` (row-wise fused rows, per-row or shared k-means
  codebooks): decode, pooled lookup, bytes.
* :mod:`~recpipe.quant.rowwise` — :class:`TableQuantConfig`, :func:`quantize_table` (min-max / greedy / codebook),
  reconstruction error and per-table reports.
* :mod:`~recpipe.quant.codebook` — vectorised 1-D k-means codebooks.
* :mod:`~recpipe.quant.mixed` — per-table bit widths: uniform, size rule, or measured NE budget.
* :mod:`~recpipe.quant.modules` — :class:`QuantizedEmbeddingCollection`, :func:`quantize_model`.
* :mod:`~recpipe.quant.io` — quantized model directories (JSON + raw tensor blob, no pickles) and
  :func:`training_model_dir` (the float copy a quantized directory carries, for warm starts).

The fused row layout and the op kernels are in :mod:`recpipe.ops.quant`.
"""
from recpipe.quant.codebook import KMeansResult, kmeans_1d, quantize_codebook_row, quantize_codebook_shared
from recpipe.quant.io import (FLOAT_DIR, is_quantized_model_dir, load_quantized_model, save_quantized_model,
                              training_model_dir)
from recpipe.quant.mixed import MeasuredChoice, MixedPrecisionConfig, measured_bits, rule_bits
from recpipe.quant.modules import (QuantConfig, QuantizedEmbeddingCollection, choose_bits, evaluate_ne,
                                   quantize_collection, quantize_model, table_weights)
from recpipe.quant.rowwise import TableQuantConfig, quantize_table, reconstruction_mse, table_report
from recpipe.quant.table import QuantizedTable, codebook_row_problem, fp32_bytes

__all__ = [
    "FLOAT_DIR", "KMeansResult", "MeasuredChoice", "MixedPrecisionConfig", "QuantConfig",
    "QuantizedEmbeddingCollection", "QuantizedTable", "TableQuantConfig", "choose_bits", "codebook_row_problem",
    "evaluate_ne", "fp32_bytes", "is_quantized_model_dir", "kmeans_1d", "load_quantized_model", "measured_bits",
    "quantize_codebook_row", "quantize_codebook_shared", "quantize_collection", "quantize_model", "quantize_table",
    "reconstruction_mse", "rule_bits", "save_quantized_model", "table_report", "table_weights",
    "training_model_dir",
]
