"""The cost of the serving path: the same model, work and batch policy in process and over HTTP.

In process (``benchmarks.in_process``) runs first, before Ray starts, so the two never share
the CPU; then the service runs with the same batching, one replica, and the same load. The
ratio of the two is what HTTP, the Serve proxy, the ingress, the handle and Ray cost.
"""

from __future__ import annotations

from typing import Any

from benchmarks import plots
from benchmarks.in_process import run_in_process
from benchmarks.loadgen import run_load
from benchmarks.local_serve import app_args, batch_size_counts, deploy_config, local_serve
from benchmarks.payloads import vqa_calls
from benchmarks.report import Contention, batch_figures, machine, write_result
from benchmarks.settings import Settings
from serve_app.config import ModelConfig
from serve_app.model import Blip2Model

CONCURRENCY_LEVELS = (1, 16)
BATCHING = ((16, 0.01), (16, 0.1))
"""(max_batch_size, batch_wait_timeout_s): the CPU config's, and a longer wait."""


def run(settings: Settings) -> dict[str, Any]:
    """Measure both ways for every batching and concurrency; write ``overhead.json``/``.png``."""
    calls = vqa_calls("small")
    args = app_args(settings.model_id)
    batching = BATCHING[:1] if settings.quick else BATCHING
    cases = [(size, wait, c) for size, wait in batching for c in CONCURRENCY_LEVELS]
    rows: dict[tuple[int, float, int], dict[str, Any]] = {}
    with Contention() as contention:
        model = Blip2Model.load(ModelConfig.model_validate(args["model"]))
        for size, wait, concurrency in cases:
            load = settings.load(concurrency=concurrency, requests=100 * min(4, concurrency))
            result, batches = run_in_process(model, calls, load, size, wait)
            rows[size, wait, concurrency] = {
                "in_process": {**result.summary(), **batch_figures(batches)}
            }
        del model
        with local_serve() as url:
            for size, wait, concurrency in cases:
                deploy_config(args, size, wait)
                before = batch_size_counts()
                load = settings.load(
                    concurrency=concurrency, requests=400 if concurrency > 1 else 100
                )
                result = run_load(url, calls, load, f"service c{concurrency}, wait {wait:g} s")
                batches = batch_size_counts()
                batches.subtract(before)
                rows[size, wait, concurrency]["service"] = {
                    **result.summary(),
                    **batch_figures(batches),
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
