"""recpipe.tasks."""
