"""recpipe.data."""
