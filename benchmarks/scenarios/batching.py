"""Batching on the CPU model: ``max_batch_size`` 1 to 16 and the wait timeout, at concurrency 16.

One replica, one run: batching is the model deployment's ``user_config``, so each setting is
applied live to the running replica (as ``serve deploy`` would) before it is measured, and
the whole sweep is run twice (figures are the mean of both rounds). The achieved batch sizes
come from the replica's ``batch_size_counts``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from benchmarks import plots
from benchmarks.loadgen import run_load
from benchmarks.local_serve import app_args, batch_size_counts, deploy_config, local_serve
from benchmarks.payloads import vqa_calls
from benchmarks.report import Contention, batch_figures, machine, mean_of_rounds, write_result
from benchmarks.settings import Settings

CONCURRENCY = 16
BATCH_SIZES = (1, 2, 4, 8, 16)
WAITS_S = (0.01, 0.05, 0.1)


def run(settings: Settings) -> dict[str, Any]:
    """Measure every (wait, max_batch_size) pair; write ``batching.json`` and ``.png``."""
    sizes = (1, 4) if settings.quick else BATCH_SIZES
    waits = WAITS_S[:1] if settings.quick else WAITS_S
    calls = vqa_calls("small")
    cases = [(size, wait) for wait in waits for size in sizes]
    rounds: dict[tuple[int, float], list[dict[str, Any]]] = {key: [] for key in cases}
    batches: dict[tuple[int, float], Counter[int]] = {key: Counter() for key in cases}
    with Contention() as contention, local_serve() as url:
        args = app_args(settings.model_id)
        for _ in range(settings.rounds):
            for size, wait in cases:
                deploy_config(args, size, wait)
                before = batch_size_counts()
                load = settings.load(concurrency=CONCURRENCY, requests=400, seconds=10)
                result = run_load(url, calls, load, f"batch {size}, wait {wait:g} s")
                rounds[size, wait].append(result.summary())
                batches[size, wait] += batch_size_counts() - before
    points = [
        {
            "max_batch_size": size,
            "batch_wait_timeout_s": wait,
            **mean_of_rounds(rounds[size, wait]),
            **batch_figures(batches[size, wait]),
        }
        for size, wait in cases
    ]
    rates = {(p["max_batch_size"], p["batch_wait_timeout_s"]): p["throughput_rps"] for p in points}
    best = max(rates, key=rates.__getitem__)
    unbatched = max(rate for (size, _), rate in rates.items() if size == 1)
    largest = max(sizes)
    headline = {
        f"batch {largest} vs 1, wait {wait:g} s": round(rates[largest, wait] / rates[1, wait], 2)
        for wait in waits
    }
    headline[f"best (batch {best[0]}, wait {best[1]:g} s) vs best of batch 1"] = round(
        rates[best] / unbatched, 2
    )
    summary = {
        "scenario": "batching",
        "headline": headline,
        "model": settings.model_id,
        "concurrency": CONCURRENCY,
        "images": "64x64 PNG, base64 in JSON",
        "points": points,
        "machine": machine(),
        "contention": contention.summary,
    }
    write_result(settings.results_dir, "batching", summary)
    plots.batching(summary, settings.results_dir / "batching.png")
    return summary
