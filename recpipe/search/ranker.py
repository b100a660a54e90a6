"""Learning-to-rank guidance (AutoCTR section 4): a LightGBM lambdarank model over architecture encodings.

Trained on the evaluated history (encoding → relevance grade from the measured quality), it scores many
candidate mutations of a parent so the search evaluates only the most promising one. Only the ORDER matters,
so qualities are turned into quantile grades (best = highest grade) and the whole history is one query.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from recpipe.config import JsonConfig
from recpipe.models.spec import ArchSpec
from recpipe.search.encoding import encode_many, feature_names
from recpipe.search.space import SearchSpace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankerConfig(JsonConfig):
    """LightGBM lambdarank settings, sized for histories of tens to hundreds of architectures.

    Attributes:
        num_grades: relevance levels the qualities are binned into (quantiles; <= 31, LightGBM's label_gain).
        n_estimators: boosting rounds.
        num_leaves: leaves per tree (small: histories are small).
        learning_rate: shrinkage.
        min_child_samples: fewest rows per leaf.
        seed: LightGBM seed (bagging/feature sampling are off, so results are deterministic anyway).
    """

    num_grades: int = 8
    n_estimators: int = 150
    num_leaves: int = 7
    learning_rate: float = 0.05
    min_child_samples: int = 3
    seed: int = 0


def quality_grades(quality: np.ndarray, num_grades: int, *, higher_is_better: bool) -> np.ndarray:
    """Integer relevance grades 0..num_grades-1 from quantiles of ``quality`` (best → highest grade).

    Ties share a grade (ranks are averaged before binning).
    """
    q = np.asarray(quality, dtype=np.float64)
    if q.ndim != 1 or q.size == 0:
        raise ValueError(f"quality_grades: need a non-empty 1-D array, got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"quality_grades: non-finite qualities at rows {np.flatnonzero(~np.isfinite(q)).tolist()}")
    key = q if higher_is_better else -q
    order = np.argsort(key, kind="stable")
    ranks = np.empty(q.size, dtype=np.float64)
    ranks[order] = np.arange(q.size, dtype=np.float64)
    for v in np.unique(key):  # average ranks of ties
        m = key == v
        ranks[m] = ranks[m].mean()
    pct = ranks / max(q.size - 1, 1)  # 0 worst .. 1 best
    return np.minimum((pct * num_grades).astype(np.int64), num_grades - 1)


class ArchRanker:
    """Ranks architectures by predicted quality.

    Args:
        space: the search space (fixes the encoding length).
        cfg: LightGBM settings.
    """

    def __init__(self, space: SearchSpace, cfg: RankerConfig | None = None) -> None:
        self.space = space
        self.cfg = cfg or RankerConfig()
        self._model = None

    @property
    def fitted(self) -> bool:
        return self._model is not None

    def fit(self, specs: Sequence[ArchSpec], quality: Sequence[float], *, higher_is_better: bool) -> "ArchRanker":
        """Trains on evaluated architectures (one lambdarank query holding all of them).

        Args:
            specs: evaluated architectures (at least 2).
            quality: their measured quality, same order.
            higher_is_better: True for AUC-like metrics, False for NE / log loss.
        """
        import lightgbm as lgb  # imported where used: only ranker fitting needs it

        if len(specs) != len(quality) or len(specs) < 2:
            raise ValueError(f"ArchRanker.fit: need >= 2 specs with one quality each, got {len(specs)} specs, "
                             f"{len(quality)} qualities")
        x = encode_many(self.space, list(specs))  # (R, E)
        y = quality_grades(np.asarray(quality), self.cfg.num_grades, higher_is_better=higher_is_better)
        c = self.cfg
        model = lgb.LGBMRanker(
            objective="lambdarank", n_estimators=c.n_estimators, num_leaves=c.num_leaves,
            learning_rate=c.learning_rate, min_child_samples=c.min_child_samples, random_state=c.seed,
            n_jobs=1, deterministic=True, force_col_wise=True, verbose=-1,
            label_gain=list(range(c.num_grades)), lambdarank_truncation_level=len(specs),
        )
        model.fit(x, y, group=[len(specs)])
        self._model = model
        logger.debug("ranker fitted on %d architectures, grades %s", len(specs), np.bincount(y).tolist())
        return self

    def score(self, specs: Sequence[ArchSpec]) -> np.ndarray:
        """(len(specs),) float64 scores; higher means predicted better. Requires :meth:`fit`."""
        if self._model is None:
            raise RuntimeError("ArchRanker.score called before fit")
        if not specs:
            return np.zeros(0)
        return np.asarray(self._model.predict(encode_many(self.space, list(specs))), dtype=np.float64)

    def top_features(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` most used encoding features (split gain), for logging what the ranker learned."""
        if self._model is None:
            return []
        gains = self._model.booster_.feature_importance(importance_type="gain")
        names = feature_names(self.space.cfg.max_blocks)
        order = np.argsort(-gains)[:n]
        return [(names[i], float(gains[i])) for i in order if gains[i] > 0]
