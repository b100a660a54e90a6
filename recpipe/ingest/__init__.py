"""recpipe.ingest."""
