"""Synthetic Criteo-format click logs with a drifting hidden click model.

Writes one raw TSV per day, ``<out_dir>/<YYYY-MM-DD>.tsv`` (or ``.tsv.gz``), columns ``label, I1..I13,
C1..C26``, no header, empty field = missing — the layout of the Criteo 1TB logs:

* dense ``I1..I13``: non-negative heavy-tailed integer counts (a lognormal latent with a shared per-row
  "activity" factor, floored), a few negatives in ``I2`` as in the real logs, per-feature missing rates;
* sparse ``C1..C26``: 8-hex-character ids; per-feature cardinalities from 3 to 1e5 (times
  ``cardinality_scale`` for the large ones), Zipf-distributed popularity, and each day a random share
  ``new_id_rate`` of every feature's popularity slots is taken over by ids never seen before;
* label: a Bernoulli draw from the hidden logistic model of :mod:`recpipe.data.synth_truth`, whose
  parameters drift every day; the bias is calibrated per day to the target ``label_rate``.

Also writes ``truth.json`` (the model, reloadable with :meth:`TruthModel.load`) and ``manifest.json`` (days,
files, rows, label rates, new ids). Output is byte-identical for the same config (rows are produced in
fixed-size chunks, each from its own seeded stream).

CLI: ``python -m recpipe.data.synthetic --out DIR --days 3 --rows-per-day 20000 --seed 0``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from tqdm import tqdm

from recpipe.fileio import atomic_write_json
from recpipe.config import JsonConfig
from recpipe.data.synth_truth import (
    NUM_DENSE,
    NUM_SPARSE,
    DayTruth,
    TruthModel,
    calibrate_bias,
    drift_step,
    initial_truth,
    token_to_id32,
)

log = logging.getLogger(__name__)

BASE_CARDINALITIES: tuple[int, ...] = (
    1460, 583, 100000, 60000, 305, 24, 12517, 633, 3, 93145, 5683, 80000, 3194,
    27, 14992, 70000, 10, 5652, 2173, 4, 90000, 18, 15, 28000, 105, 14283,
)
"""Per-feature id-space sizes of C1..C26 at ``cardinality_scale=1`` (a Criteo-like spread)."""

SMALL_CARDINALITY = 32
"""Features with at most this many ids (device type, ...) are not scaled by ``cardinality_scale``."""

DENSE_ACTIVITY_CORR = 0.5
"""Loading of every dense latent on the shared per-row activity factor (dense features are correlated)."""

GZIP_LEVEL = 1
"""zlib level of ``.tsv.gz`` output: fastest; synthetic data is regenerated rather than archived."""

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_NIBBLE_SHIFTS = np.arange(28, -1, -4, dtype=np.uint32)  # most significant nibble first


@dataclass(frozen=True)
class SynthConfig(JsonConfig):
    """What to generate.

    Attributes:
        days: number of consecutive days.
        rows_per_day: rows in each day's file.
        start_date: ISO date of the first day.
        seed: master seed; the same config gives byte-identical files.
        drift: per-day std of the effect rotations (radians) and of the dense-weight random walk (in units of
            the initial weight scale); 0 gives a stationary click model.
        label_rate: target mean click rate (the per-day bias is calibrated to it).
        gzip: write ``.tsv.gz`` instead of ``.tsv``.
        cardinality_scale: multiplies every feature's id space above :data:`SMALL_CARDINALITY`.
        zipf_exponent: exponent ``s`` of the popularity law ``p(rank r) ~ (r + 1) ** -s``.
        new_id_rate: share of each feature's popularity slots taken over by brand-new ids every day.
        missing_rate: mean per-feature missing probability (features get a spread around it, some never miss).
        negative_rate: share of ``I2`` values replaced by a small negative count, as in the real logs.
        num_informative: sparse features with per-id effects on the click (the first two also interact).
        chunk_rows: rows generated and written per step (bounds memory; part of the determinism contract).
        calibration_rows: rows drawn from a separate stream to calibrate each day's bias to ``label_rate``
            (the rate's calibration error is about ``sqrt(rate * (1 - rate) / calibration_rows)`` or less).
    """

    days: int = 3
    rows_per_day: int = 100_000
    start_date: str = "2026-01-01"
    seed: int = 0
    drift: float = 0.15
    label_rate: float = 0.25
    gzip: bool = False
    cardinality_scale: float = 1.0
    zipf_exponent: float = 1.05
    new_id_rate: float = 0.05
    missing_rate: float = 0.1
    negative_rate: float = 0.02
    num_informative: int = 6
    chunk_rows: int = 131_072
    calibration_rows: int = 50_000

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        checks = [
            ("days", self.days >= 1), ("rows_per_day", self.rows_per_day >= 1),
            ("drift", self.drift >= 0), ("label_rate", 0 < self.label_rate < 1),
            ("cardinality_scale", self.cardinality_scale > 0), ("zipf_exponent", self.zipf_exponent > 0),
            ("new_id_rate", 0 <= self.new_id_rate <= 1), ("missing_rate", 0 <= self.missing_rate < 1),
            ("negative_rate", 0 <= self.negative_rate <= 1),
            ("num_informative", 2 <= self.num_informative <= NUM_SPARSE), ("chunk_rows", self.chunk_rows >= 1),
            ("calibration_rows", self.calibration_rows >= 100),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"SynthConfig.{name}: invalid value {getattr(self, name)!r}")
        try:
            dt.date.fromisoformat(self.start_date)
        except ValueError as e:
            raise ValueError(f"SynthConfig.start_date: {self.start_date!r} is not YYYY-MM-DD") from e

    def day_names(self) -> list[str]:
        start = dt.date.fromisoformat(self.start_date)
        return [(start + dt.timedelta(days=i)).isoformat() for i in range(self.days)]


def cardinalities(scale: float) -> list[int]:
    """Id-space size of each of C1..C26 at ``cardinality_scale=scale``."""
    return [c if c <= SMALL_CARDINALITY else max(SMALL_CARDINALITY, int(round(c * scale)))
            for c in BASE_CARDINALITIES]


@dataclass
class _World:
    """Static per-dataset draws: marginal distributions of the features (they do not drift)."""

    dense_mu: np.ndarray  # (N,) lognormal location of each dense latent
    dense_sigma: np.ndarray  # (N,) lognormal scale
    dense_missing: np.ndarray  # (N,) missing probability
    sparse_missing: np.ndarray  # (F,) missing probability
    cards: list[int]  # (F,) id-space sizes
    cdfs: list[np.ndarray]  # per feature, (V_f,) cumulative Zipf probabilities over popularity ranks
    salts: np.ndarray  # (F,) per-feature salt of the token -> id32 hash


def _world(cfg: SynthConfig) -> _World:
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x3011D]))
    mu = rng.uniform(0.0, 4.0, NUM_DENSE)
    sigma = rng.uniform(0.6, 1.6, NUM_DENSE)
    spread = rng.lognormal(0.0, 0.8, NUM_DENSE)
    dense_missing = np.clip(cfg.missing_rate * spread / spread.mean(), 0.0, 0.9)
    never = rng.random(NUM_SPARSE) < 0.4  # like Criteo, some categorical features are always present
    spread_s = rng.lognormal(0.0, 0.8, NUM_SPARSE) * ~never
    sparse_missing = np.clip(cfg.missing_rate * spread_s / max(spread_s.mean(), 1e-12), 0.0, 0.9)
    cards = cardinalities(cfg.cardinality_scale)
    cdfs = []
    for v in cards:
        w = np.arange(1, v + 1, dtype=np.float64) ** -cfg.zipf_exponent
        c = np.cumsum(w)
        cdfs.append(c / c[-1])
    salts = rng.integers(0, 1 << 32, NUM_SPARSE, dtype=np.int64)
    return _World(mu, sigma, dense_missing, sparse_missing, cards, cdfs, salts)


def _features(rng: np.random.Generator, n: int, cfg: SynthConfig, world: _World,
              id_tables: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draws ``n`` rows of features.

    Returns:
        dense: (n, N) int64 raw counts; dense_missing: (n, N) bool;
        ids: (n, F) int64 32-bit id values; sparse_missing: (n, F) bool.
    """
    activity = rng.standard_normal((n, 1))
    z = DENSE_ACTIVITY_CORR * activity + math.sqrt(1 - DENSE_ACTIVITY_CORR ** 2) * rng.standard_normal((n, NUM_DENSE))
    dense = np.floor(np.expm1(world.dense_mu + world.dense_sigma * z)).astype(np.int64)  # (n, N)
    np.maximum(dense, 0, out=dense)
    neg = rng.random(n) < cfg.negative_rate
    dense[neg, 1] = -rng.integers(1, 4, int(neg.sum()))  # I2 carries a few -1..-3 like the real logs
    dense_missing = rng.random((n, NUM_DENSE)) < world.dense_missing
    dense_missing[neg, 1] = False
    ids = np.empty((n, NUM_SPARSE), dtype=np.int64)
    for f in range(NUM_SPARSE):
        ranks = np.searchsorted(world.cdfs[f], rng.random(n), side="right")
        np.minimum(ranks, world.cards[f] - 1, out=ranks)  # guards u rounding up to the cdf's last entry
        ids[:, f] = id_tables[f][ranks]
    sparse_missing = rng.random((n, NUM_SPARSE)) < world.sparse_missing
    return dense, dense_missing, ids, sparse_missing


def _hex_column(ids: np.ndarray, missing: np.ndarray) -> pa.Array:
    """(n,) 32-bit ids -> Arrow strings of 8 lowercase hex characters, null where ``missing``."""
    n = len(ids)
    nib = (ids.astype(np.uint32)[:, None] >> _NIBBLE_SHIFTS) & np.uint32(0xF)  # (n, 8)
    data = _HEX[nib].tobytes()
    offsets = np.arange(0, 8 * n + 1, 8, dtype=np.int32)
    valid = np.packbits(~missing, bitorder="little")
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data), pa.py_buffer(valid),
                                       int(missing.sum()))


def _chunk_table(labels: np.ndarray, dense: np.ndarray, dense_missing: np.ndarray, ids: np.ndarray,
                 sparse_missing: np.ndarray) -> pa.Table:
    cols = [pa.array(labels.astype(np.int8))]
    cols += [pa.array(dense[:, j], mask=dense_missing[:, j]) for j in range(NUM_DENSE)]
    cols += [_hex_column(ids[:, f], sparse_missing[:, f]) for f in range(NUM_SPARSE)]
    names = ["label"] + [f"I{i}" for i in range(1, NUM_DENSE + 1)] + [f"C{i}" for i in range(1, NUM_SPARSE + 1)]
    return pa.Table.from_arrays(cols, names=names)


def _masked_ids(ids: np.ndarray, missing: np.ndarray) -> np.ndarray:
    return np.where(missing, -1, ids)


def _masked_dense(dense: np.ndarray, missing: np.ndarray) -> np.ndarray:
    return np.where(missing, np.nan, dense.astype(np.float64))


_WRITE_OPTIONS = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")


def generate(cfg: SynthConfig, out_dir: str | os.PathLike[str], *, progress: bool = False) -> dict[str, Any]:
    """Writes ``cfg.days`` raw TSV files plus ``truth.json`` and ``manifest.json`` into ``out_dir``.

    Args:
        cfg: what to generate.
        out_dir: output folder (created; existing files of the same names are replaced atomically).
        progress: show a tqdm progress bar over days (CLI use).

    Returns:
        The manifest: ``{"format", "config", "files", "days": [{day, file, rows, clicks, label_rate,
        expected_rate, new_ids}], "cardinalities", "truth"}``; ``new_ids`` counts, per feature, the ids
        introduced that day (on the first day, the whole id space); ``expected_rate`` is the mean true
        click probability of the day's rows.
    """
    cfg.validate()
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    world = _world(cfg)
    truth, dense_w, angles, phi = initial_truth(cfg.seed, world.dense_sigma, world.cards, cfg.num_informative)
    tokens = [np.arange(v, dtype=np.int64) for v in world.cards]  # popularity rank -> token
    next_token = list(world.cards)
    day_truths: list[DayTruth] = []
    days_meta: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for d, day in enumerate(tqdm(cfg.day_names(), desc="synthetic days", unit="day", disable=not progress)):
        new_counts = {}
        if d > 0:
            rng_day = np.random.default_rng(np.random.SeedSequence([cfg.seed, d, 0xD21F7]))
            dense_w, angles, phi = drift_step(rng_day, cfg.drift, world.dense_sigma, dense_w, angles, phi)
            for f in range(NUM_SPARSE):
                fresh = np.flatnonzero(rng_day.random(world.cards[f]) < cfg.new_id_rate)
                tokens[f][fresh] = next_token[f] + np.arange(len(fresh))
                next_token[f] += len(fresh)
                new_counts[f"C{f + 1}"] = int(len(fresh))
        else:
            new_counts = {f"C{f + 1}": v for f, v in enumerate(world.cards)}
        id_tables = [token_to_id32(tokens[f], int(world.salts[f])).astype(np.int64) for f in range(NUM_SPARSE)]
        partial = DayTruth(day=day, bias=0.0, dense_weights=tuple(float(x) for x in dense_w),
                           effect_angles=tuple(float(x) for x in angles), interaction_angle=float(phi))
        model = _with_days(truth, [*day_truths, partial])
        cal_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, d, 0xCA11B]))
        dn, dm, ids, sm = _features(cal_rng, cfg.calibration_rows, cfg, world, id_tables)
        scores = model.logits_without_bias(d, _masked_dense(dn, dm), _masked_ids(ids, sm))
        bias = calibrate_bias(scores, cfg.label_rate)
        day_truths.append(DayTruth(day=day, bias=bias, dense_weights=partial.dense_weights,
                                   effect_angles=partial.effect_angles, interaction_angle=partial.interaction_angle))
        model = _with_days(truth, day_truths)
        fname = f"{day}.tsv.gz" if cfg.gzip else f"{day}.tsv"
        path = os.path.join(out_dir, fname)
        clicks, expected = _write_day(cfg, world, model, d, id_tables, path)
        days_meta.append({"day": day, "file": fname, "rows": cfg.rows_per_day, "clicks": clicks,
                          "label_rate": clicks / cfg.rows_per_day, "expected_rate": expected / cfg.rows_per_day,
                          "new_ids": new_counts})
        log.info("synthetic day %s: %d rows, label rate %.4f -> %s", day, cfg.rows_per_day,
                 clicks / cfg.rows_per_day, path)
    truth = _with_days(truth, day_truths)
    _write_json(os.path.join(out_dir, "truth.json"), truth.to_dict())
    manifest = {"format": "criteo_tsv", "config": cfg.to_dict(), "files": [m["file"] for m in days_meta],
                "days": days_meta, "cardinalities": {f"C{f + 1}": c for f, c in enumerate(world.cards)},
                "truth": "truth.json"}
    _write_json(os.path.join(out_dir, "manifest.json"), manifest)
    log.info("synthetic: %d days x %d rows in %.1f s", cfg.days, cfg.rows_per_day, time.perf_counter() - t0)
    return manifest


def _write_day(cfg: SynthConfig, world: _World, model: TruthModel, d: int, id_tables: Sequence[np.ndarray],
               path: str) -> tuple[int, float]:
    """Writes one day's rows in chunks; returns (clicks, sum of true click probabilities)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    clicks, expected = 0, 0.0
    done = False
    try:
        with contextlib.ExitStack() as stack:
            sink: Any = stack.enter_context(open(tmp, "wb"))
            if cfg.gzip:  # mtime=0 and no file name in the header keep the bytes reproducible
                sink = stack.enter_context(gzip.GzipFile(filename="", mode="wb", fileobj=sink,
                                                         compresslevel=GZIP_LEVEL, mtime=0))
            for c, start in enumerate(range(0, cfg.rows_per_day, cfg.chunk_rows)):
                n = min(cfg.chunk_rows, cfg.rows_per_day - start)
                rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, d, c, 0xC4A7]))
                dense, dm, ids, sm = _features(rng, n, cfg, world, id_tables)
                p = model.probabilities(d, _masked_dense(dense, dm), _masked_ids(ids, sm))
                labels = rng.random(n) < p
                clicks += int(labels.sum())
                expected += float(p.sum())
                pacsv.write_csv(_chunk_table(labels, dense, dm, ids, sm), sink, _WRITE_OPTIONS)
        os.replace(tmp, path)  # readers never see a half-written day
        done = True
    finally:
        if not done and os.path.exists(tmp):
            os.remove(tmp)
    return clicks, expected


def _with_days(truth: TruthModel, days: Sequence[DayTruth]) -> TruthModel:
    return TruthModel(seed=truth.seed, informative=truth.informative, effect_scales=truth.effect_scales,
                      interaction=truth.interaction, interaction_scale=truth.interaction_scale,
                      latent_keys=truth.latent_keys, days=tuple(days))


def _write_json(path: str, data: dict[str, Any]) -> None:
    atomic_write_json(path, data)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recpipe.data.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", default=None, help="SynthConfig as JSON (flags below override it)")
    defaults = SynthConfig()
    for name, typ in (("days", int), ("rows_per_day", int), ("start_date", str), ("seed", int), ("drift", float),
                      ("label_rate", float), ("cardinality_scale", float), ("zipf_exponent", float),
                      ("new_id_rate", float), ("missing_rate", float), ("negative_rate", float),
                      ("num_informative", int), ("chunk_rows", int),
                      ("calibration_rows", int)):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None,
                       help=f"(default {getattr(defaults, name)!r})")
    p.add_argument("--gzip", action="store_true", default=None, help="write .tsv.gz")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``python -m recpipe.data.synthetic``, ``recpipe synth``); returns the exit code 0."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = SynthConfig.from_json(args.config) if args.config else SynthConfig()
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("out", "config", "log_level") and v is not None}
    cfg = cfg.replace(**overrides)
    generate(cfg, args.out, progress=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
