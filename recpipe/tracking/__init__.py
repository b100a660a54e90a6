"""recpipe.tracking."""
