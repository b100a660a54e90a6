"""recpipe: production CTR retraining components for Kubeflow Pipelines.

Subpackages: ``schema``/``config`` (contracts), ``data`` (synthetic data, streaming loader), ``ingest`` (Beam),
``modules``/``models`` (DLRM and architecture-graph models), ``train`` (loops, checkpoints, pruning),
``search`` (AutoCTR), ``quant`` (embedding quantization), ``metrics``, ``tracking`` (MLflow), ``tasks``
(one executor per pipeline step), ``ops`` (torch.library custom ops), ``components``/``pipelines`` (KFP).
"""
__version__ = "0.1.0"
