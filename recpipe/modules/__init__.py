"""recpipe.modules."""
