"""The cost of the serving path: the same model, work and batch policy in process and over HTTP.

In process (``benchmarks.in_process``, in this process while the service idles) and the
service (the same batching, one replica) take the same load in turn, for two rounds, so a
drift in the machine's speed weighs on both alike. The ratio of the two is what HTTP, the
Serve proxy, the ingress, the handle and Ray cost.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from benchmarks import plots
from benchmarks.in_process import run_in_process
from benchmarks.loadgen import run_load
from benchmarks.local_serve import app_args, batch_size_counts, deploy_config, local_serve
from benchmarks.payloads import vqa_calls
from benchmarks.report import Contention, batch_figures, machine, mean_of_rounds, write_result
from benchmarks.settings import Settings
from serve_app.config import ModelConfig
from serve_app.model.blip2 import Blip2Model

CONCURRENCY_LEVELS = (1, 16)
BATCHING = ((16, 0.01),)
"""(max_batch_size, batch_wait_timeout_s): the CPU config's (the wait applies to neither side:
requests and groups that find the model idle start at once)."""


def run(settings: Settings) -> dict[str, Any]:
    """Measure both ways for every batching and concurrency; write ``overhead.json``/``.png``."""
    calls = vqa_calls("small")
    args = app_args(settings.model_id)
    cases = [(size, wait, c) for size, wait in BATCHING for c in CONCURRENCY_LEVELS]
    found: dict[tuple[int, float, int], dict[str, list[dict[str, Any]]]] = {
        case: {"in_process": [], "service": []} for case in cases
    }
    batches = {case: {"in_process": Counter[int](), "service": Counter[int]()} for case in cases}
    with Contention() as contention, local_serve() as url:
        model = Blip2Model.load(ModelConfig.model_validate(args["model"]))
        for _ in range(settings.rounds):
            for case in cases:
                size, wait, concurrency = case
                load = settings.load(concurrency=concurrency, requests=100 * min(4, concurrency))
                result, formed = run_in_process(model, calls, load, size)
                found[case]["in_process"].append(result.summary())
                batches[case]["in_process"] += formed
                deploy_config(args, size, wait)
                before = batch_size_counts()
                result = run_load(url, calls, load, f"service c{concurrency}, wait {wait:g} s")
                found[case]["service"].append(result.summary())
                batches[case]["service"] += batch_size_counts() - before
    rows = {
        case: {
            side: {**mean_of_rounds(rounds), **batch_figures(batches[case][side])}
            for side, rounds in sides.items()
        }
        for case, sides in found.items()
    }
    points = []
    for (size, wait, concurrency), row in rows.items():
        inner, outer = row["in_process"], row["service"]
        points.append(
            {
                "max_batch_size": size,
                "batch_wait_timeout_s": wait,
                "concurrency": concurrency,
                "service_vs_in_process_throughput": round(
                    outer["throughput_rps"] / inner["throughput_rps"], 3
                ),
                "added_p50_ms": round(outer["p50_ms"] - inner["p50_ms"], 1),
                **row,
            }
        )
    headline = {
        f"c{p['concurrency']}, wait {p['batch_wait_timeout_s']:g} s": {
            "service_vs_in_process_throughput": p["service_vs_in_process_throughput"],
            "added_p50_ms": p["added_p50_ms"],
        }
        for p in points
    }
    summary = {
        "scenario": "overhead",
        "headline": headline,
        "model": settings.model_id,
        "images": "64x64 PNG, base64 in JSON",
        "points": points,
        "machine": machine(),
        "contention": contention.summary,
    }
    write_result(settings.results_dir, "overhead", summary)
    plots.overhead(summary, settings.results_dir / "overhead.png")
    return summary
