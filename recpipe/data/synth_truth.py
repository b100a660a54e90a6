"""Hidden ground truth of the synthetic Criteo-like data: id hashing, drifting click model, raw-file reader.

The generator in :mod:`recpipe.data.synthetic` draws rows, then labels them with a logistic model whose
parameters drift from day to day::

    logit = bias[d]
          + sum_n  w[d, n] * log1p(max(I_n, 0))                       (missing dense -> 0)
          + sum_{f in informative} s_f * <g_f(id_f), (cos a[d, f], sin a[d, f])>
          + c * <h_p(id_p), R(phi[d]) h_q(id_q)>                      (pairwise interaction of features p, q)

``g_f`` and ``h_f`` map an id's 32-bit value to a 2-vector with unit-variance uniform components through a
keyed integer hash, so the effect of ANY id (including ids first seen later) is defined without a table.
Day to day the dense weights take a Gaussian random-walk step and the angles ``a`` and ``phi`` rotate: the
correlation of an id's effect between two days is ``cos`` of the rotation between them, so a model fitted on
an early day loses accuracy on later days. Everything is saved to ``truth.json`` and reloadable as a
:class:`TruthModel`, which recomputes click probabilities from a raw TSV (an oracle for evaluation).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

NUM_DENSE = 13
NUM_SPARSE = 26
TRUTH_VERSION = 1
MISSING_ID = -1
"""Value of a missing sparse id in the integer arrays returned by :func:`read_raw_day`."""

_U32 = np.uint32
_TWO_32 = float(1 << 32)
_UNIT_VAR = math.sqrt(12.0)  # a uniform on [-0.5, 0.5) times sqrt(12) has unit variance


def mix32(x: np.ndarray) -> np.ndarray:
    """A bijective 32-bit integer mixer (xorshift-multiply); distinct inputs give distinct outputs.

    Args:
        x: integer array of any shape; values are taken modulo 2**32.

    Returns:
        uint32 array of the same shape.
    """
    x = np.asarray(x).astype(_U32, copy=True)
    x ^= x >> _U32(16)
    x *= _U32(0x7FEB352D)
    x ^= x >> _U32(15)
    x *= _U32(0x846CA68B)
    x ^= x >> _U32(16)
    return x


def token_to_id32(tokens: np.ndarray, salt: int) -> np.ndarray:
    """Maps a feature's integer tokens to the 32-bit ids written as 8 hex characters (bijective per salt)."""
    t = (np.asarray(tokens, dtype=np.int64) + int(salt)) & 0xFFFFFFFF
    return mix32(t.astype(_U32))


def hash_latent(id32: np.ndarray, key: int) -> np.ndarray:
    """Unit-variance uniform latent value of each id under ``key``; float64 array shaped like ``id32``."""
    u = mix32(np.asarray(id32, dtype=_U32) ^ _U32(key & 0xFFFFFFFF)).astype(np.float64) / _TWO_32
    return (u - 0.5) * _UNIT_VAR


@dataclass(frozen=True)
class DayTruth:
    """The click model of one day.

    Attributes:
        day: ISO date.
        bias: intercept, calibrated so the day's expected click rate is the configured label rate.
        dense_weights: (N,) weights on ``log1p(max(I_n, 0))``.
        effect_angles: one rotation angle (radians) per informative feature.
        interaction_angle: rotation angle of the pairwise interaction.
    """

    day: str
    bias: float
    dense_weights: tuple[float, ...]
    effect_angles: tuple[float, ...]
    interaction_angle: float


@dataclass(frozen=True)
class TruthModel:
    """All days' ground truth plus the static parts (which features matter, id latent keys).

    Attributes:
        seed: generator seed.
        informative: indices (0-based, into C1..C26) of the features with per-id effects.
        effect_scales: per informative feature, the std of its per-id effect.
        interaction: the (p, q) feature pair of the interaction term, both 0-based.
        interaction_scale: std-like scale ``c`` of the interaction term.
        latent_keys: (F, 4) hash keys: columns 0-1 give ``g_f``, columns 2-3 give ``h_f``.
        days: per-day parameters in date order.
    """

    seed: int
    informative: tuple[int, ...]
    effect_scales: tuple[float, ...]
    interaction: tuple[int, int]
    interaction_scale: float
    latent_keys: tuple[tuple[int, ...], ...]
    days: tuple[DayTruth, ...]

    # ------------------------------------------------------------------ evaluation
    def day_index(self, day: str | int) -> int:
        if isinstance(day, int):
            return day
        for i, d in enumerate(self.days):
            if d.day == day:
                return i
        raise KeyError(f"truth: day {day!r} not in {[d.day for d in self.days]}")

    def logits_without_bias(self, day: str | int, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Logit of each row minus the day's bias.

        Args:
            day: ISO date or index into :attr:`days`.
            dense: (B, N) raw dense counts as float, NaN where missing.
            ids: (B, F) int64 32-bit id values, :data:`MISSING_ID` where missing.

        Returns:
            (B,) float64.
        """
        dt = self.days[self.day_index(day)]
        x = np.log1p(np.clip(np.nan_to_num(dense, nan=0.0), 0.0, None))  # (B, N)
        out = x @ np.asarray(dt.dense_weights, dtype=np.float64)
        for j, f in enumerate(self.informative):
            out += self.effect_scales[j] * self._effect(f, ids[:, f], dt.effect_angles[j])
        p, q = self.interaction
        hp = self._latent(p, ids[:, p], 2)  # (B, 2)
        hq = self._latent(q, ids[:, q], 2)  # (B, 2)
        c, s = math.cos(dt.interaction_angle), math.sin(dt.interaction_angle)
        rot_hq = np.stack([c * hq[:, 0] - s * hq[:, 1], s * hq[:, 0] + c * hq[:, 1]], axis=1)  # (B, 2)
        out += self.interaction_scale * np.einsum("bk,bk->b", hp, rot_hq)
        return out

    def logits(self, day: str | int, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """(B,) true log-odds of a click; arguments as in :meth:`logits_without_bias`."""
        return self.days[self.day_index(day)].bias + self.logits_without_bias(day, dense, ids)

    def probabilities(self, day: str | int, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """(B,) true click probabilities."""
        return 1.0 / (1.0 + np.exp(-self.logits(day, dense, ids)))

    def _latent(self, f: int, ids: np.ndarray, col: int) -> np.ndarray:
        present = (ids != MISSING_ID)[:, None]  # (B, 1): a missing id has a zero latent vector
        id32 = np.where(ids == MISSING_ID, 0, ids).astype(np.int64).astype(_U32)
        lat = np.stack([hash_latent(id32, self.latent_keys[f][col]),
                        hash_latent(id32, self.latent_keys[f][col + 1])], axis=1)  # (B, 2)
        return lat * present

    def _effect(self, f: int, ids: np.ndarray, angle: float) -> np.ndarray:
        g = self._latent(f, ids, 0)  # (B, 2)
        return g[:, 0] * math.cos(angle) + g[:, 1] * math.sin(angle)

    # ------------------------------------------------------------------ drift
    def drift_distance(self, day_a: str | int, day_b: str | int) -> dict[str, float]:
        """How far the model moved between two days: dense-weight L2 distance and mean effect rotation."""
        a, b = self.days[self.day_index(day_a)], self.days[self.day_index(day_b)]
        dw = float(np.linalg.norm(np.subtract(a.dense_weights, b.dense_weights)))
        rot = float(np.mean(np.abs(np.subtract(a.effect_angles, b.effect_angles))))
        return {"dense_weight_l2": dw, "mean_effect_rotation": rot,
                "interaction_rotation": abs(a.interaction_angle - b.interaction_angle)}

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["version"] = TRUTH_VERSION
        d["model"] = ("logit = bias + sum_n w_n*log1p(max(I_n,0)) + sum_f s_f*<g_f(id),(cos a_f, sin a_f)> "
                      "+ c*<h_p(id_p), R(phi) h_q(id_q)>; g_f(id)_k = (mix32(id ^ latent_keys[f][k])/2^32-0.5)"
                      "*sqrt(12), k=0,1; h_f uses keys 2,3; missing ids have zero latents")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TruthModel":
        if d.get("version") != TRUTH_VERSION:
            raise ValueError(f"truth: version {d.get('version')!r} unsupported (want {TRUTH_VERSION})")
        days = tuple(DayTruth(day=x["day"], bias=float(x["bias"]), dense_weights=tuple(x["dense_weights"]),
                              effect_angles=tuple(x["effect_angles"]),
                              interaction_angle=float(x["interaction_angle"])) for x in d["days"])
        return cls(seed=int(d["seed"]), informative=tuple(d["informative"]),
                   effect_scales=tuple(d["effect_scales"]), interaction=tuple(d["interaction"]),  # type: ignore[arg-type]
                   interaction_scale=float(d["interaction_scale"]),
                   latent_keys=tuple(tuple(k) for k in d["latent_keys"]), days=days)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "TruthModel":
        """Loads ``truth.json`` written by :func:`recpipe.data.synthetic.generate`."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))


# ---------------------------------------------------------------------- building and drifting the truth
DENSE_WEIGHT_SCALE = 0.25
"""Std of a dense weight times the std of its log1p feature: each dense term moves the logit by ~0.25."""


def initial_truth(seed: int, dense_sigmas: Sequence[float], cardinalities: Sequence[int],
                  num_informative: int) -> tuple[TruthModel, np.ndarray, np.ndarray, float]:
    """Draws the static truth and day-0 parameters.

    Returns:
        (truth with no days, day-0 dense weights (N,), day-0 effect angles (K,), day-0 interaction angle).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A07]))
    # informative features: prefer mid/high cardinality (id effects there are what embeddings must learn)
    order = np.argsort(np.asarray(cardinalities))
    candidates = order[len(order) // 4:]
    k = min(num_informative, len(candidates))
    informative = tuple(int(x) for x in np.sort(rng.choice(candidates, size=k, replace=False)))
    effect_scales = tuple(float(x) for x in rng.uniform(0.4, 0.9, size=k))
    inter = (informative[0], informative[1]) if k >= 2 else (int(order[-1]), int(order[-2]))
    keys = rng.integers(0, 1 << 32, size=(NUM_SPARSE, 4), dtype=np.int64)
    dense_w = rng.standard_normal(NUM_DENSE) * DENSE_WEIGHT_SCALE / np.asarray(dense_sigmas)
    angles = rng.uniform(0.0, 2.0 * math.pi, size=k)
    phi = float(rng.uniform(0.0, 2.0 * math.pi))
    truth = TruthModel(seed=seed, informative=informative, effect_scales=effect_scales, interaction=inter,
                       interaction_scale=0.5, latent_keys=tuple(tuple(int(v) for v in row) for row in keys),
                       days=())
    return truth, dense_w, angles, phi


def drift_step(rng: np.random.Generator, drift: float, dense_sigmas: np.ndarray, dense_w: np.ndarray,
               angles: np.ndarray, phi: float) -> tuple[np.ndarray, np.ndarray, float]:
    """One day of drift: Gaussian random walk on the weights, random rotation of the effects.

    ``drift`` is the std (radians) of each day's rotation of every effect, and the std of a dense weight's
    step in units of its initial scale.
    """
    dense_w = dense_w + drift * rng.standard_normal(dense_w.shape) * DENSE_WEIGHT_SCALE / dense_sigmas
    angles = angles + drift * rng.standard_normal(angles.shape)
    phi = phi + drift * float(rng.standard_normal())
    return dense_w, angles, phi


def calibrate_bias(scores: np.ndarray, target_rate: float, iters: int = 60) -> float:
    """Bias b such that mean(sigmoid(b + scores)) == target_rate, by bisection (the mean is monotone in b)."""
    if not 0.0 < target_rate < 1.0:
        raise ValueError(f"label_rate must be in (0, 1), got {target_rate}")
    lo, hi = -30.0, 30.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(mid + scores)))) < target_rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------- raw file reader (oracle / tests)
@dataclass
class RawDay:
    """A raw Criteo TSV day parsed to arrays.

    Attributes:
        labels: (B,) int8 in {0, 1}.
        dense: (B, N) float64 raw counts, NaN where missing.
        ids: (B, F) int64 32-bit ids, :data:`MISSING_ID` where missing.
    """

    labels: np.ndarray
    dense: np.ndarray
    ids: np.ndarray


_HEX_VALUES = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUES[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_VALUES[_c] = 10 + _i


def hex_to_id(col: pa.Array | pa.ChunkedArray, *, source: str = "<column>") -> np.ndarray:
    """Parses 8-hex-char strings to int64 ids (nulls and empty strings -> :data:`MISSING_ID`)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    arr = arr.cast(pa.string())
    out = np.full(len(arr), MISSING_ID, dtype=np.int64)
    lengths = np.asarray(pc.utf8_length(arr).fill_null(0), dtype=np.int64)
    present = lengths > 0
    if np.any(present & (lengths != 8)):
        bad = int(np.flatnonzero(present & (lengths != 8))[0])
        raise ValueError(f"{source}: row {bad}: sparse value {arr[bad].as_py()!r} is not 8 hex characters")
    vals = arr.filter(pa.array(present))
    raw = np.frombuffer(vals.buffers()[2], dtype=np.uint8)  # the characters of present values
    offs = np.frombuffer(vals.buffers()[1], dtype=np.int32)[: len(vals) + 1]
    chars = raw[offs[0]: offs[-1]].reshape(-1, 8)  # (P, 8) one row of hex digits per present value
    nib = _HEX_VALUES[chars]
    if np.any(nib == 255):
        bad = int(np.flatnonzero(np.any(nib == 255, axis=1))[0])
        raise ValueError(f"{source}: present value #{bad}: {vals[bad].as_py()!r} is not hexadecimal")
    shifts = np.arange(28, -1, -4, dtype=np.int64)  # most significant nibble first
    out[present] = (nib.astype(np.int64) << shifts).sum(axis=1)
    return out


def read_raw_day(path: str | os.PathLike[str]) -> RawDay:
    """Reads a raw Criteo-format TSV (``.tsv`` or ``.tsv.gz``) written by the generator into arrays."""
    path = os.fspath(path)
    names = ["label"] + [f"I{i}" for i in range(1, NUM_DENSE + 1)] + [f"C{i}" for i in range(1, NUM_SPARSE + 1)]
    types = {"label": pa.int8(), **{f"I{i}": pa.int64() for i in range(1, NUM_DENSE + 1)},
             **{f"C{i}": pa.string() for i in range(1, NUM_SPARSE + 1)}}
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                             null_values=[""], quoted_strings_can_be_null=False),
    )
    labels = table.column("label").to_numpy()
    dense = np.stack([table.column(f"I{i}").to_numpy(zero_copy_only=False).astype(np.float64)
                      for i in range(1, NUM_DENSE + 1)], axis=1)  # (B, N); nulls become NaN
    ids = np.stack([hex_to_id(table.column(f"C{i}"), source=f"{path}: C{i}")
                    for i in range(1, NUM_SPARSE + 1)], axis=1)  # (B, F)
    return RawDay(labels=labels.astype(np.int8), dense=dense, ids=ids)
