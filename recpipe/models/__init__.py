"""recpipe.models."""
