"""recpipe.train: the training loop, optimizers and checkpoints (pruning and incremental training build on them).

Main entry points: :class:`recpipe.train.loop.Trainer` / :class:`TrainConfig`, :class:`Callback` hooks,
:class:`recpipe.train.optim.RowWiseAdagrad`, :class:`recpipe.train.checkpoint.CheckpointManager` and
:func:`recpipe.train.checkpoint.warm_start`.
"""
from recpipe.train.checkpoint import CheckpointManager, load_checkpoint, warm_start
from recpipe.train.loop import Callback, TrainConfig, Trainer, TrainState, TrainSummary
from recpipe.train.optim import OptimConfig, Optimizers, RowWiseAdagrad, SparseSGD

__all__ = ["Callback", "CheckpointManager", "OptimConfig", "Optimizers", "RowWiseAdagrad", "SparseSGD",
           "TrainConfig", "TrainState", "TrainSummary", "Trainer", "load_checkpoint", "warm_start"]
