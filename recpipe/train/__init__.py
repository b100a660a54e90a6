"""recpipe.train."""
