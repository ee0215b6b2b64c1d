"""Caption (or ask a question about) every image in a folder through the running service, into
Parquet, with the bulk job's Python function (``serve_app.bulk.run_bulk``).

Submit it to the cluster that runs the application:

    ray job submit --working-dir . -- python examples/caption_folder.py photos/ --output captions/
    ray job submit --working-dir . -- python examples/caption_folder.py photos/ \\
        --question "How many people are there?" --output answers/

Run it again with the same output to finish an interrupted run: images already written are
skipped. ``python -m serve_app.bulk`` is the same job with every option (tables, URIs,
embeddings). The exit status is 1 when any image failed (it has an error row).
"""

from __future__ import annotations

import argparse
import sys

from serve_app.bulk import BulkJob, Calls, Source, run_bulk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="folder of images (searched recursively)")
    parser.add_argument("--output", required=True, help="folder of Parquet files")
    parser.add_argument("--question", help="ask this question instead of captioning")
    args = parser.parse_args(argv)
    calls = Calls(task="vqa" if args.question else "caption", question=args.question)
    summary = run_bulk(BulkJob(Source(args.folder), args.output, calls))
    print(summary.describe())
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
