"""CUDA sources for recpipe.ops (compiled on first use when CUDA is present)."""
