"""recpipe.metrics."""
