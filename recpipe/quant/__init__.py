"""recpipe.quant."""
