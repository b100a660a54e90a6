"""recpipe.search."""
