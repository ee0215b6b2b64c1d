"""The service around an emulated accelerator: achieved throughput against the exact limit.

``EmulatedAcceleratorModel`` makes a batch of ``n`` take ``fixed + per_item * n`` ms without
using the CPU, so a replica can serve at most ``max_batch_size / batch time`` requests a
second. At saturation (a closed loop holding three full batches per replica) the service
should come close to that limit, with one replica and with two, whatever the batch wait.
Each case runs three ways: ``@serve.batch`` alone (``merge_waiting_batches`` off: each batch
runs as Serve closed it, ``batch_wait_timeout_s`` after its first request even while the model
is busy); merged, but with replicas admitting only two batches (``max_ongoing_requests``), so
the third waits at the ingress's router, which retries on a backoff; and the default, merged
with four batches admitted. Open-loop Poisson arrivals below the limit show the latency a
caller sees on the way there.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks import emulated, plots
from benchmarks.loadgen import run_load
from benchmarks.local_serve import app_args, deploy, local_serve, ship_by_value
from benchmarks.payloads import vqa_calls
from benchmarks.report import Contention, batch_figures, machine, write_result
from benchmarks.settings import Settings
from serve_app.config import BatchingConfig

COST = emulated.BatchCost(fixed_ms=300.0, per_item_ms=15.0)
MAX_BATCH_SIZE = 16
WAITS_S = (0.01, 0.1)
"""Batch wait timeouts: the CPU config's, and a longer one."""
REPLICAS = (1, 2)
OPEN_LOOP_WAIT_S = 0.01
OFFERED_FRACTIONS = (0.5, 0.8, 0.95)
"""Open-loop arrival rates, as fractions of one replica's limit."""
DEFAULT = "merged (default)"
VARIANTS = {
    "@serve.batch alone": (False, 4 * MAX_BATCH_SIZE),
    "merged, 2 batches admitted": (True, 2 * MAX_BATCH_SIZE),
    DEFAULT: (True, 4 * MAX_BATCH_SIZE),
}
"""Name: (merge_waiting_batches, max_ongoing_requests)."""


def run(settings: Settings) -> dict[str, Any]:
    """Saturate one and two replicas, then offer Poisson load to one; write the results."""
    ship_by_value(emulated)
    calls = vqa_calls("small")
    replica_counts = REPLICAS[:1] if settings.quick else REPLICAS
    waits = WAITS_S[:1] if settings.quick else WAITS_S
    saturation, open_loop = [], []
    with Contention() as contention, local_serve(num_gpus=max(REPLICAS)) as url:
        for replicas in replica_counts:
            for wait in waits:
                for variant, (merge, admitted) in VARIANTS.items():
                    record_dir = new_record_dir()
                    deploy_emulated(replicas, wait, merge, admitted, record_dir)
                    concurrency = 3 * MAX_BATCH_SIZE * replicas
                    load = settings.load(
                        concurrency=concurrency, requests=4000, seconds=20, warmup=64
                    )
                    title = f"{replicas} replica(s), wait {wait:g} s, {variant}"
                    result = run_load(url, calls, load, title)
                    limit = COST.limit_rps(MAX_BATCH_SIZE, replicas)
                    per_replica = emulated.recorded_batch_sizes(record_dir)
                    saturation.append(
                        {
                            "variant": variant,
                            "replicas": replicas,
                            "batch_wait_timeout_s": wait,
                            "merge_waiting_batches": merge,
                            "max_ongoing_requests": admitted,
                            "limit_rps": round(limit, 2),
                            "achieved_vs_limit": round(result.throughput / limit, 3),
                            **result.summary(),
                            **batch_figures(sum(per_replica.values(), Counter())),
                            "replicas_that_ran_batches": len(per_replica),
                        }
                    )
        deploy_emulated(1, OPEN_LOOP_WAIT_S, *VARIANTS[DEFAULT], new_record_dir())
        limit = COST.limit_rps(MAX_BATCH_SIZE)
        for fraction in OFFERED_FRACTIONS[:1] if settings.quick else OFFERED_FRACTIONS:
            load = settings.load(rate=fraction * limit, requests=4000, seconds=20)
            result = run_load(url, calls, load, f"Poisson at {fraction:.0%} of the limit")
            open_loop.append({"offered_vs_limit": fraction, **result.summary()})
    headline: dict[str, dict[str, float]] = {}
    for point in saturation:
        case = f"{point['replicas']} replica(s), wait {point['batch_wait_timeout_s']:g} s"
        headline.setdefault(case, {})[point["variant"]] = point["achieved_vs_limit"]
    summary = {
        "scenario": "accelerator",
        "headline": {"achieved_vs_limit": headline},
        "model": "EmulatedAcceleratorModel",
        "batch_cost_ms": f"{COST.fixed_ms:g} + {COST.per_item_ms:g} * batch_size",
        "max_batch_size": MAX_BATCH_SIZE,
        "saturation": saturation,
        "open_loop_one_replica": {"batch_wait_timeout_s": OPEN_LOOP_WAIT_S, "points": open_loop},
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
    replicas: int, wait: float, merge: bool, admitted: int, record_dir: Path
) -> None:
    """Deploy ``replicas`` emulated-accelerator replicas batching with ``wait``."""
    args = app_args(max_batch_size=MAX_BATCH_SIZE, replicas=replicas)
    args["model_deployment"]["max_ongoing_requests"] = admitted
    batching = BatchingConfig(
        max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=wait, merge_waiting_batches=merge
    )
    deploy(args, batching, emulated.emulated_model(COST, record_dir))
