"""Scoring a model over batches: click probabilities and labels, concatenated in batch order."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from recpipe.data.batch import Batch


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[Batch], device: torch.device | str | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Puts ``model`` in eval mode and returns (probabilities (R,), labels (R,)) on the CPU, R = all rows.

    Args:
        model: maps a :class:`Batch` to (B,) logits.
        batches: the rows to score, in order.
        device: where batches are moved before scoring (None: left where they are).
    """
    model.eval()
    preds, labels = [], []
    for b in batches:
        if device is not None:
            b = b.to(device)
        preds.append(torch.sigmoid(model(b)).cpu())  # (B,)
        labels.append(b.labels.cpu())
    if not preds:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(preds), torch.cat(labels)
