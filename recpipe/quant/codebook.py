"""k-means codebook quantization: 2**bits scalar centroids per row (``codebook_row``) or per table
(``codebook_shared``), fitted with vectorised 1-D Lloyd iterations (all rows in lockstep).

In one dimension the optimal assignment for sorted centroids ``c_0 <= ... <= c_{K-1}`` is by the midpoints
``(c_k + c_{k+1}) / 2``, so assignment is one batched ``searchsorted`` over (R, D) values instead of an
(R, D, K) distance tensor; the update is a ``scatter_add`` of values and counts per (row, code). Each Lloyd
iteration never increases the squared error (assignment and update are each optimal given the other); an
empty cluster keeps its previous centroid, which keeps that property.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from recpipe.ops import quant as qops
from recpipe.quant.table import QuantizedTable, codebook_row_problem

logger = logging.getLogger(__name__)

INITS = ("quantile", "kmeans++")
_CHUNK_ROWS = 1 << 14
"""Rows fitted at once in per-row mode (temporaries are a few (rows, D) and (rows, K) tensors)."""
MAX_SHARED_SAMPLES = 1 << 20
"""Values sampled (seeded) to fit a shared codebook; every value is still assigned to its nearest centroid."""
_SHARED_ASSIGN_VALUES = 1 << 22
"""Values assigned to the shared codebook at once (bounds the int64 code temporaries to 32 MiB)."""


@dataclass
class KMeansResult:
    """Result of :func:`kmeans_1d`.

    Attributes:
        centroids: (R, K) float32, sorted ascending per row.
        codes: (R, N) int64 nearest-centroid index per value.
        history: total squared error after initialisation and after each iteration (non-increasing).
    """

    centroids: torch.Tensor
    codes: torch.Tensor
    history: list[float] = field(default_factory=list)


def assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest-centroid codes for sorted per-row centroids.

    Args:
        x: (R, N) float32 values. centroids: (R, K) float32, ascending per row.

    Returns:
        (R, N) int64 codes.
    """
    mid = (centroids[:, 1:] + centroids[:, :-1]) / 2  # (R, K-1)
    return torch.searchsorted(mid.contiguous(), x.contiguous())


def _sse(x: torch.Tensor, centroids: torch.Tensor, codes: torch.Tensor) -> float:
    return float((x - centroids.gather(1, codes)).square().sum(dtype=torch.float64))


def _init_quantile(x: torch.Tensor, k: int) -> torch.Tensor:
    n = x.shape[1]
    xs = x.sort(dim=1).values  # (R, N)
    pos = ((torch.arange(k, dtype=torch.float64) + 0.5) / k * n).long().clamp_(0, n - 1)  # (K,)
    return xs[:, pos]  # (R, K)


def _init_kmeanspp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    r, n = x.shape
    first = torch.randint(0, n, (r, 1), generator=generator)
    chosen = [x.gather(1, first)]  # list of (R, 1)
    d2 = (x - chosen[0]).square()  # (R, N) squared distance to the nearest chosen centroid
    for _ in range(1, k):
        total = d2.sum(dim=1, keepdim=True)
        # Rows whose values are all already centroids sample uniformly (any choice has zero cost).
        probs = torch.where(total > 0, d2, torch.ones_like(d2))
        pick = torch.multinomial(probs, 1, generator=generator)  # (R, 1)
        c = x.gather(1, pick)
        chosen.append(c)
        d2 = torch.minimum(d2, (x - c).square())
    return torch.cat(chosen, dim=1)  # (R, K)


def kmeans_1d(x: torch.Tensor, k: int, iters: int = 25, init: str = "quantile",
              generator: torch.Generator | None = None) -> KMeansResult:
    """Scalar k-means of every row of ``x`` independently (rows in lockstep).

    Args:
        x: (R, N) float32 values (N >= 1).
        k: number of centroids K.
        iters: maximum Lloyd iterations (stops early once no code changes).
        init: "quantile" (centroid k at the (k + 0.5) / K quantile, deterministic) or "kmeans++" (seeded).
        generator: random source for "kmeans++".

    Returns:
        :class:`KMeansResult`.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if k < 1 or x.dim() != 2 or x.shape[1] < 1:
        raise ValueError(f"need k >= 1 and a non-empty (R, N) input, got k={k}, shape {tuple(x.shape)}")
    x = x.float()
    if init == "quantile":
        centroids = _init_quantile(x, k)
    else:
        centroids = _init_kmeanspp(x, k, generator if generator is not None else torch.Generator().manual_seed(0))
    centroids = centroids.sort(dim=1).values
    codes = assign(x, centroids)
    history = [_sse(x, centroids, codes)]
    for _ in range(iters):
        sums = torch.zeros_like(centroids).scatter_add_(1, codes, x)  # (R, K)
        counts = torch.zeros_like(centroids).scatter_add_(1, codes, torch.ones_like(x))  # (R, K)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids).sort(dim=1).values
        new_codes = assign(x, centroids)
        history.append(_sse(x, centroids, new_codes))
        done = torch.equal(new_codes, codes)
        codes = new_codes
        if done:
            break
    return KMeansResult(centroids, codes, history)


def quantize_codebook_row(weight: torch.Tensor, bits: int, iters: int = 25, init: str = "quantile",
                          seed: int = 0) -> tuple[QuantizedTable, list[float]]:
    """Per-row k-means codebooks with ``2**bits`` fp16 centroids per row.

    Args:
        weight: (R, D) float32 table.
        bits: 8, 4 or 2.
        iters, init, seed: k-means settings (seed used by "kmeans++").

    Returns:
        (table of kind ``"codebook_row"``, squared-error history summed over row chunks).

    Raises:
        ValueError: ``2**bits >= D`` or rows no smaller than float32
            (:func:`~recpipe.quant.table.codebook_row_problem`).
    """
    qops.code_bytes(weight.shape[1], bits)  # validates bits and D
    problem = codebook_row_problem(weight.shape[1], bits)
    if problem is not None:
        raise ValueError(f"quantize_codebook_row: {problem}")
    k = 1 << bits
    gen = torch.Generator().manual_seed(seed)
    parts: list[torch.Tensor] = []
    history: list[float] = []
    for chunk in torch.split(weight.detach().float(), _CHUNK_ROWS, dim=0):
        res = kmeans_1d(chunk, k, iters, init, gen)
        cent16 = res.centroids.half()  # stored values; fp16 rounding is monotone, so still sorted
        codes = assign(chunk, cent16.float())  # re-assign against what is stored
        parts.append(torch.cat([qops.pack_codes(codes, bits), cent16.contiguous().view(torch.uint8)], dim=1))
        h = res.history + [res.history[-1]] * (iters + 1 - len(res.history))  # pad early-stopped chunks
        history = [a + b for a, b in zip(history, h)] if history else h
    data = torch.cat(parts) if parts else torch.zeros(0, QuantizedTable.row_width("codebook_row", weight.shape[1],
                                                                                   bits), dtype=torch.uint8)
    return QuantizedTable("codebook_row", bits, weight.shape[1], data, "kmeans"), history


def quantize_codebook_shared(weight: torch.Tensor, bits: int, iters: int = 25, init: str = "quantile",
                             seed: int = 0,
                             max_samples: int = MAX_SHARED_SAMPLES) -> tuple[QuantizedTable, list[float]]:
    """One k-means codebook of ``2**bits`` float32 centroids for the whole table.

    The codebook is fitted on at most ``max_samples`` values drawn uniformly WITH replacement (seeded
    ``torch.randint``: O(max_samples) memory, where a permutation of all R * D positions would take 8 bytes per
    value — 20 GB for a 40M x 64 table); then every value gets its nearest centroid.

    Args:
        weight: (R, D) float32 table (R * D >= 1).
        bits: 8, 4 or 2.
        iters, init, seed: k-means settings.
        max_samples: fit-sample cap.

    Returns:
        (table of kind ``"codebook_shared"``, squared-error history of the fit sample).
    """
    qops.code_bytes(weight.shape[1], bits)
    if max_samples < 1:
        raise ValueError(f"quantize_codebook_shared: max_samples must be >= 1, got {max_samples}")
    flat = weight.detach().float().reshape(1, -1)  # (1, R*D)
    gen = torch.Generator().manual_seed(seed)
    if flat.shape[1] > max_samples:
        picks = torch.randint(0, flat.shape[1], (max_samples,), generator=gen)  # (S,) positions in R*D
        sample = flat[:, picks]  # (1, S)
    else:
        sample = flat
    res = kmeans_1d(sample, 1 << bits, iters, init, gen)
    codebook = res.centroids[0]  # (K,)
    # Assign and pack a block of rows at a time: int64 codes for the whole table would be 8 bytes per value.
    rows_per_chunk = max(1, _SHARED_ASSIGN_VALUES // max(weight.shape[1], 1))
    centroids = codebook.unsqueeze(0)  # (1, K)
    data = torch.cat([qops.pack_codes(assign(chunk.reshape(1, -1), centroids).reshape(chunk.shape), bits)
                      for chunk in torch.split(weight.detach().float(), rows_per_chunk, dim=0)])  # (R, C)
    return QuantizedTable("codebook_shared", bits, weight.shape[1], data, "kmeans", codebook.clone()), res.history
