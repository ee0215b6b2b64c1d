"""The public contract: what callers send and get back, over HTTP and through the handle."""
