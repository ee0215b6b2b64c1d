"""``python -m serve_app.bulk {caption,vqa,embed} INPUT --output FOLDER``: a bulk job through
the live application (see :mod:`serve_app.bulk`); submit it with ``ray job submit``.

Exits 0 when no row of the output failed, 1 when some did (they are error rows in the output).
"""

from __future__ import annotations

import argparse
import json
import sys

from serve_app.bulk.caller import Calls
from serve_app.bulk.job import BulkJob, run_bulk
from serve_app.bulk.sources import Source


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The job's settings from the command line."""
    parser = argparse.ArgumentParser(prog="python -m serve_app.bulk", description=__doc__)
    parser.add_argument("task", choices=["caption", "vqa", "embed"])
    parser.add_argument(
        "input", help="a folder or glob of images, or a .parquet/.csv table (local or a URI)"
    )
    parser.add_argument("--output", required=True, help="folder of Parquet files (local or URI)")
    parser.add_argument("--format", choices=["parquet", "csv"], help="the input is a table")
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--image-column", default="image", help="bytes, a path or a URL")
    parser.add_argument("--question", help="vqa: the question for every image")
    parser.add_argument("--question-column", help="vqa: the table's column of questions")
    parser.add_argument("--prompt", help="caption: a prefix to continue")
    parser.add_argument("--app-name", default="blip2", help="the Serve application")
    parser.add_argument("--workers", type=int, default=2, help="Ray Data workers sending requests")
    parser.add_argument("--in-flight", type=int, default=16, help="requests in flight per worker")
    parser.add_argument("--rows-per-file", type=int, default=64)
    parser.add_argument(
        "--task-cpus", type=float, default=0.0, help="CPUs each task and worker reserves"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="per request, when the service is busy or a replica died",
    )
    args = parser.parse_args(argv)
    if args.task == "vqa" and not (args.question or args.question_column):
        parser.error("vqa needs --question or --question-column")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the job, print its summary (and as JSON), return the exit status."""
    args = parse_args(argv)
    job = BulkJob(
        source=Source(
            args.input,
            table_format=args.format,
            id_column=args.id_column,
            image_column=args.image_column,
            question_column=args.question_column,
        ),
        output=args.output,
        calls=Calls(
            task=args.task,
            app_name=args.app_name,
            question=args.question,
            prompt=args.prompt,
            in_flight=args.in_flight,
            retries=args.retries,
        ),
        workers=args.workers,
        rows_per_block=args.rows_per_file,
        task_cpus=args.task_cpus,
    )
    summary = run_bulk(job)
    print(summary.describe())
    print(
        json.dumps(
            {
                "written": summary.written,
                "rows": summary.rows,
                "failures": summary.failures,
                "images_per_s": round(summary.images_per_s, 2),
            }
        )
    )
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
