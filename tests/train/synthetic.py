"""Tiny LEARNABLE click data built directly as Batch tensors (independent of recpipe.data's generator).

The true logit is ``dense @ w + effect0[id0] + effect1[id1] + 0.8 * dense[:, 0] * sign(effect0[id0])
+ mean(effect2[bag2])`` — a linear part, per-id effects on two one-hot features, an interaction and a
multi-hot feature (bags of 0-3 ids, so empty bags occur), which a DLRM can learn.
"""
from __future__ import annotations

import torch

from recpipe.data.batch import Batch

TABLE_SIZES = [30, 50, 12]
NUM_DENSE = 4


class ReplayableLoader:
    """A list of batches with a cursor ``state_dict``, like a streaming loader (for resume tests).

    ``iter()`` yields from the cursor to the end, then rewinds for the next pass.
    """

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches
        self.cursor = 0

    def __iter__(self):
        while self.cursor < len(self.batches):
            self.cursor += 1
            yield self.batches[self.cursor - 1]
        self.cursor = 0

    def state_dict(self) -> dict[str, int]:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.cursor = int(state["cursor"])


def make_rows(n: int, seed: int) -> dict[str, torch.Tensor]:
    """n examples: dense (n, N), ids0/ids1 (n,), bags2 as (lengths (n,), flat ids), labels (n,)."""
    truth = torch.Generator().manual_seed(1234)  # the click model is the same for every seed
    w = torch.randn(NUM_DENSE, generator=truth)
    effects = [2.0 * torch.randn(s, generator=truth) for s in TABLE_SIZES]
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n, NUM_DENSE, generator=g)
    ids0 = torch.randint(0, TABLE_SIZES[0], (n,), generator=g)
    ids1 = torch.randint(0, TABLE_SIZES[1], (n,), generator=g)
    lengths = torch.randint(0, 4, (n,), generator=g)
    flat2 = torch.randint(0, TABLE_SIZES[2], (int(lengths.sum()),), generator=g)
    bag_of = torch.repeat_interleave(torch.arange(n), lengths)
    bag_sum = torch.zeros(n).index_add_(0, bag_of, effects[2][flat2])
    logit = (dense @ w + effects[0][ids0] + effects[1][ids1] + 0.8 * dense[:, 0] * torch.sign(effects[0][ids0])
             + bag_sum / lengths.clamp(min=1))
    labels = torch.bernoulli(torch.sigmoid(logit), generator=g)
    return {"dense": dense, "ids0": ids0, "ids1": ids1, "lengths": lengths, "flat2": flat2, "labels": labels}


def to_batches(rows: dict[str, torch.Tensor], batch_size: int) -> list[Batch]:
    """Cuts rows into TBE batches (feature-major offsets)."""
    n = rows["labels"].shape[0]
    starts2 = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(rows["lengths"], 0)])
    out = []
    for s in range(0, n, batch_size):
        e = min(s + batch_size, n)
        b = e - s
        lengths = torch.cat([torch.ones(b, dtype=torch.int64), torch.ones(b, dtype=torch.int64),
                             rows["lengths"][s:e]])  # (F * B,) feature-major
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
        indices = torch.cat([rows["ids0"][s:e], rows["ids1"][s:e], rows["flat2"][starts2[s]:starts2[e]]])
        out.append(Batch(dense=rows["dense"][s:e], indices=indices, offsets=offsets, labels=rows["labels"][s:e]))
    return out


def make_batches(n: int, batch_size: int, seed: int) -> list[Batch]:
    return to_batches(make_rows(n, seed), batch_size)
