"""recpipe.modules: nn building blocks — table-batched embeddings, MLP and interaction layers."""
from recpipe.modules.embedding import POOLINGS, EmbeddingCollection, remap_rows, table_offsets_of
from recpipe.modules.interaction import EFC, CrossNet, DotInteraction, FMInteraction
from recpipe.modules.mlp import MLP, dlrm_init_

__all__ = [
    "POOLINGS", "EmbeddingCollection", "remap_rows", "table_offsets_of",
    "EFC", "CrossNet", "DotInteraction", "FMInteraction", "MLP", "dlrm_init_",
]
