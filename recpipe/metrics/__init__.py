"""recpipe.metrics: CTR evaluation metrics (torch + numpy only).

* :mod:`~recpipe.metrics.functional` — batch definitions: ``auc`` (exact, ties = 1/2, weighted), ``log_loss``,
  ``normalized_entropy`` (base rate = empirical label rate of the same rows), ``calibration``, ``summary``.
* :mod:`~recpipe.metrics.streaming` — ``update/compute/reset/merge/state_dict`` classes: ``AUC``, ``LogLoss``,
  ``NormalizedEntropy``, ``Calibration``, ``MeanPrediction``, ``LabelRate``, ``Count``; ``sync_distributed``.
* :mod:`~recpipe.metrics.collection` — ``MetricCollection`` (``eval/auc`` ...) and ``slice_groups``.
* :mod:`~recpipe.metrics.bootstrap` — seeded, vectorised Poisson bootstrap; paired deltas between models.
* :mod:`~recpipe.metrics.curves` — ROC points and calibration-curve bins.
* :mod:`~recpipe.metrics.report` — ``EvalAccumulator``: several models on the same rows, slices, paired CIs.
* :mod:`~recpipe.metrics.gate` — ``GateConfig`` / ``decide``: the promotion gate producing a blessing.

Example::

    m = MetricCollection(prefix="eval/")
    for batch in loader:
        m.update(torch.sigmoid(model(batch)), batch.labels)
    m.compute()  # {"eval/auc": ..., "eval/ne": ..., ...}
"""
from recpipe.metrics.bootstrap import BootstrapResult, Interval, bootstrap
from recpipe.metrics.collection import ALL_METRICS, MetricCollection, slice_groups
from recpipe.metrics.curves import CalibrationCurve, RocCurve, calibration_curve, roc_curve
from recpipe.metrics.functional import auc, binary_entropy, calibration, log_loss, normalized_entropy, summary
from recpipe.metrics.gate import AbsoluteThreshold, GateConfig, Override, RelativeThreshold, decide
from recpipe.metrics.report import EvalAccumulator, ReportOptions, flat_metrics
from recpipe.metrics.streaming import (AUC, Calibration, Count, LabelRate, LogLoss, MeanPrediction, Moments,
                                       NormalizedEntropy, StreamingMetric, sync_distributed)

__all__ = [
    "AUC", "ALL_METRICS", "AbsoluteThreshold", "BootstrapResult", "Calibration", "CalibrationCurve", "Count",
    "EvalAccumulator", "GateConfig", "Interval", "LabelRate", "LogLoss", "MeanPrediction", "MetricCollection",
    "Moments", "NormalizedEntropy", "Override", "RelativeThreshold", "ReportOptions", "RocCurve",
    "StreamingMetric", "auc", "binary_entropy", "bootstrap", "calibration", "calibration_curve", "decide",
    "flat_metrics", "log_loss", "normalized_entropy", "roc_curve", "slice_groups", "summary", "sync_distributed",
]
