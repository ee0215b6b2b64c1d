"""Dataset-scale jobs on Ray Data: caption, ask about or embed every image of a folder, a glob
or a table through the live application, into Parquet, resumably (``run_bulk``, or
``python -m serve_app.bulk``)."""

from serve_app.bulk.caller import Calls
from serve_app.bulk.job import BulkJob, BulkSummary, run_bulk
from serve_app.bulk.sources import Source

__all__ = ["BulkJob", "BulkSummary", "Calls", "Source", "run_bulk"]
