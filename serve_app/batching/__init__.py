"""Where batches form: ``@serve.batch`` gathers requests, a scheduler keeps batches full."""
