"""A bulk job: read the input with Ray Data, send it through the live application, write
Parquet as blocks finish, and skip what an earlier run of the same job already wrote."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray
import ray.data

from serve_app.bulk.caller import Calls, ServiceCaller
from serve_app.bulk.results import read_output
from serve_app.bulk.sources import Source, filesystem_of, read_source


@dataclass(frozen=True)
class BulkJob:
    """What to read, what to ask, where to write, and how many workers send requests.

    ``workers`` times ``calls.in_flight`` requests are in flight at most: about one to four
    full batches per model replica keeps the GPUs busy without queueing in the service.
    """

    source: Source
    output: str
    calls: Calls
    workers: int = 2
    rows_per_block: int = 64
    """Rows a worker takes at a time, and so per output file: the most a crash loses."""
    task_cpus: float = 0.0
    """CPUs each of the job's tasks and workers reserves. They read files and wait on the
    service, so none by default: the job runs beside a service that reserved every core."""


@dataclass(frozen=True)
class BulkSummary:
    """What the job did (this run) and what the output holds (every run)."""

    written: int
    """Rows this run wrote."""
    skipped: int
    """Ids already in the output when the run started."""
    rows: int
    """Rows in the output now."""
    failures: dict[str, int] = field(default_factory=dict)
    """Failed rows in the output by error code."""
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        """This run's rows per second."""
        return self.written / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        """No row of the output failed."""
        return not self.failures

    def describe(self) -> str:
        """One paragraph for people."""
        failed = sum(self.failures.values())
        rate = f"{self.images_per_s:.1f} images/s"
        lines = [
            f"{self.written} rows written in {self.seconds:.1f} s ({rate}); {self.skipped} already"
            f" done; the output holds {self.rows} rows, {failed} failed"
        ]
        lines += [f"  {code}: {count}" for code, count in sorted(self.failures.items())]
        return "\n".join(lines)


def run_bulk(job: BulkJob) -> BulkSummary:
    """Run ``job`` on the current Ray cluster (``ray.init`` first if not connected).

    Resumable: ids already in ``job.output`` are not read again; a file an interrupted run left
    unfinished is removed and its rows done again, so each id ends up in exactly one row.
    """
    if not ray.is_initialized():
        ray.init()
    filesystem, folder = filesystem_of(job.output)
    before = read_output(filesystem, folder)
    started = time.monotonic()
    dataset = read_source(job.source, before.ids, job.task_cpus, job.rows_per_block)
    if dataset is not None:
        results = dataset.map_batches(
            ServiceCaller,
            fn_constructor_kwargs={"calls": job.calls},
            batch_size=job.rows_per_block,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=job.workers),
            num_cpus=job.task_cpus,
        )
        results.write_parquet(
            folder,
            filesystem=filesystem,
            min_rows_per_file=job.rows_per_block,
            ray_remote_args={"num_cpus": job.task_cpus},
        )
    seconds = time.monotonic() - started
    after = read_output(filesystem, folder)
    return BulkSummary(
        written=after.rows - before.rows,
        skipped=len(before.ids),
        rows=after.rows,
        failures=dict(after.failures),
        seconds=seconds,
    )
