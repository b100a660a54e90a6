"""AutoCTR architecture search (arXiv 2007.06434): space, mutations, ranker, evolution, trials.

* :mod:`~recpipe.search.space` — :class:`SearchSpace` (DAGs of <= K blocks as :class:`ArchSpec`), shapes,
  complexity; :mod:`~recpipe.search.mutations` — single-token mutations.
* :mod:`~recpipe.search.encoding` + :mod:`~recpipe.search.ranker` — fixed-length encodings and the LightGBM
  lambdarank :class:`ArchRanker`.
* :mod:`~recpipe.search.evolution` — :class:`EvolutionarySearch` (tournament selection, ageing + quality +
  complexity survival, de-dup, ranker guidance, resumable :mod:`~recpipe.search.history`).
* :mod:`~recpipe.search.trials` — low/full-fidelity :func:`fit` and the process-parallel :class:`TrialRunner`;
  :mod:`~recpipe.search.compare` — the same-budget comparison with the DLRM / DCN / DeepFM presets.

The step executor is :mod:`recpipe.tasks.search`.
"""
from recpipe.search.evolution import EvolutionarySearch, EvolutionConfig, ranked, survive
from recpipe.search.history import TrialOutcome, TrialRecord, load_history
from recpipe.search.mutations import MUTATIONS, mutate, neighbours
from recpipe.search.ranker import ArchRanker, RankerConfig
from recpipe.search.space import SearchSpace, SpaceConfig, complexity, node_shapes

__all__ = [
    "ArchRanker", "EvolutionConfig", "EvolutionarySearch", "MUTATIONS", "RankerConfig", "SearchSpace",
    "SpaceConfig", "TrialOutcome", "TrialRecord", "complexity", "load_history", "mutate", "neighbours",
    "node_shapes", "ranked", "survive",
]
