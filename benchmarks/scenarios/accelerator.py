"""The service around an emulated accelerator: achieved throughput against the exact limit.

``EmulatedAcceleratorModel`` makes a batch of ``n`` take ``fixed + per_item * n`` ms, so a
replica can serve at most ``max_batch_size / batch time`` requests a second. At saturation (a
closed loop holding three full batches per replica) the service should come close to that
limit, with one replica and with two. Each case runs four ways: the ingress sending the
requests that wait together, one call per group (the default), or one call per request; and
the accelerator either asleep while a batch runs, or GIL-holding (its generating thread runs
Python for ``GIL_SHARE`` of every decoding step, as ``generate`` does while it launches
kernels), so per-request Python work in the replica slows the batches down as it would on a
GPU. Open-loop Poisson arrivals below the limit show the latency a caller sees on the way there.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks import emulated, plots
from benchmarks.loadgen import run_load
from benchmarks.local_serve import (
    app_args,
    deploy,
    local_serve,
    set_calls_per_replica,
    ship_by_value,
)
from benchmarks.payloads import vqa_calls
from benchmarks.report import Contention, batch_figures, machine, write_result
from benchmarks.settings import Settings
from serve_app.config import BatchingConfig

COST = emulated.BatchCost(fixed_ms=300.0, per_item_ms=15.0)
GIL_SHARE = 0.25
MAX_BATCH_SIZE = 16
WAIT_S = 0.01
"""The CPU config's batch wait (it applies only to requests that do not come in a group)."""
REPLICAS = (1, 2)
OFFERED_FRACTIONS = (0.5, 0.8, 0.95)
"""Open-loop arrival rates, as fractions of one replica's limit."""
UNGROUPED_CALLS = 1024
"""``model_calls_per_replica`` that no load here reaches: every request goes alone."""
DEFAULT = "grouped calls (default)"
VARIANTS = {
    "one call per request": (UNGROUPED_CALLS, 0.0),
    DEFAULT: (None, 0.0),
    "one call per request, GIL-holding": (UNGROUPED_CALLS, GIL_SHARE),
    "grouped calls, GIL-holding": (None, GIL_SHARE),
}
"""Name: (model_calls_per_replica, the accelerator's gil_share)."""


def run(settings: Settings) -> dict[str, Any]:
    """Saturate one and two replicas, then offer Poisson load to one; write the results."""
    ship_by_value(emulated)
    calls = vqa_calls("small")
    replica_counts = REPLICAS[:1] if settings.quick else REPLICAS
    saturation, open_loop = [], []
    with Contention() as contention, local_serve(num_gpus=max(REPLICAS)) as url:
        for replicas in replica_counts:
            for variant, (calls_per_replica, gil_share) in VARIANTS.items():
                record_dir = new_record_dir()
                deploy_emulated(replicas, calls_per_replica, gil_share, record_dir)
                concurrency = 3 * MAX_BATCH_SIZE * replicas
                load = settings.load(concurrency=concurrency, requests=4000, seconds=20, warmup=64)
                result = run_load(url, calls, load, f"{replicas} replica(s), {variant}")
                limit = COST.limit_rps(MAX_BATCH_SIZE, replicas)
                per_replica = emulated.recorded_batch_sizes(record_dir)
                saturation.append(
                    {
                        "variant": variant,
                        "replicas": replicas,
                        "model_calls_per_replica": calls_per_replica,
                        "gil_share": gil_share,
                        "limit_rps": round(limit, 2),
                        "achieved_vs_limit": round(result.throughput / limit, 3),
                        **result.summary(),
                        **batch_figures(sum(per_replica.values(), Counter())),
                        "replicas_that_ran_batches": len(per_replica),
                    }
                )
        deploy_emulated(1, *VARIANTS[DEFAULT], new_record_dir())
        limit = COST.limit_rps(MAX_BATCH_SIZE)
        for fraction in OFFERED_FRACTIONS[:1] if settings.quick else OFFERED_FRACTIONS:
            load = settings.load(rate=fraction * limit, requests=4000, seconds=20)
            result = run_load(url, calls, load, f"Poisson at {fraction:.0%} of the limit")
            open_loop.append({"offered_vs_limit": fraction, **result.summary()})
    headline: dict[str, dict[str, float]] = {}
    for point in saturation:
        case = f"{point['replicas']} replica(s)"
        headline.setdefault(case, {})[point["variant"]] = point["achieved_vs_limit"]
    summary = {
        "scenario": "accelerator",
        "headline": {"achieved_vs_limit": headline},
        "model": "EmulatedAcceleratorModel",
        "batch_cost_ms": f"{COST.fixed_ms:g} + {COST.per_item_ms:g} * batch_size",
        "gil_share_when_gil_holding": GIL_SHARE,
        "max_batch_size": MAX_BATCH_SIZE,
        "batch_wait_timeout_s": WAIT_S,
        "saturation": saturation,
        "open_loop_one_replica": {"variant": DEFAULT, "points": open_loop},
        "machine": machine(),
        "contention": contention.summary,
    }
    write_result(settings.results_dir, "accelerator", summary)
    plots.accelerator(summary, settings.results_dir / "accelerator.png")
    return summary


def new_record_dir() -> Path:
    """A fresh folder for the replicas' batch records."""
    return Path(tempfile.mkdtemp(prefix="emulated-batches-"))


def deploy_emulated(
    replicas: int, calls_per_replica: int | None, gil_share: float, record_dir: Path
) -> None:
    """Deploy ``replicas`` emulated-accelerator replicas behind an ingress that groups calls
    (``calls_per_replica`` None) or sends one per request."""
    args = app_args(max_batch_size=MAX_BATCH_SIZE, replicas=replicas)
    set_calls_per_replica(args, calls_per_replica)
    batching = BatchingConfig(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=WAIT_S)
    cost = dataclasses.replace(COST, gil_share=gil_share)
    deploy(args, batching, emulated.emulated_model(cost, record_dir))
