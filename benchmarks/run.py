"""Run a benchmark scenario: ``python -m benchmarks.run <scenario> [--quick]``.

Each scenario starts what it measures (its own local Ray, the baseline server, ``serve run``)
and stops it, and writes ``benchmarks/results/<scenario>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from benchmarks.report import wait_until_quiet
from benchmarks.settings import RESULTS_DIR, Settings

SCENARIOS = {
    "batching": "max_batch_size 1-16 and the wait timeout at concurrency 16 (CPU model)",
    "overhead": "the same model and batch policy in process vs through the service",
    "accelerator": "emulated accelerator (asleep or GIL-holding): achieved vs exact limit",
    "baseline": "the service vs a single-process server vs Serve's floor, 1 and 16 clients",
    "grpc-vs-http": "the same questions over gRPC and HTTP: CPU and latency, 1 and 16 clients",
    "cold-start": "from `serve run` to the first 200, split into phases",
    "profile": "where the CPU goes under load; resizing in the ingress before and after",
    "overload": "400 clients on one CPU replica, load shedding on and off",
    "decoding-loop": "short beside long, distinct sampling settings, first token, one image",
}
GPU_SCENARIOS = {
    "gpu": "BLIP-2 Flan-T5-XL (or --model) sizes on CUDA: bare model vs service, per batch size",
    "gpu-variants": "OPT-2.7b and Flan-T5-XL sizes on CUDA: dtype, attention, cache, int8, nf4",
}
"""Scenarios that need CUDA (``--quick`` checks them on a CPU); ``all`` leaves them out."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, *GPU_SCENARIOS, "all"])
    parser.add_argument("--quick", action="store_true", help="a few requests and seconds each")
    parser.add_argument(
        "--model",
        default=Settings.model_id,
        help="model for CPU scenarios; for gpu, the Salesforce checkpoint whose sizes to build",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="output folder")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="MINUTES",
        help="first wait up to this long for other processes to leave the CPU idle",
    )
    args = parser.parse_args(argv)
    if args.wait_quiet:
        wait_until_quiet(args.wait_quiet * 60)
    settings = Settings(results_dir=args.results, model_id=args.model, quick=args.quick)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    for name in names:
        module = importlib.import_module(f"benchmarks.scenarios.{name.replace('-', '_')}")
        result = module.run(settings)
        print(json.dumps({name: result["headline"]}, indent=1), flush=True)


if __name__ == "__main__":
    main()
