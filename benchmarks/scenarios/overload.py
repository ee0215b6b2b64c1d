"""Overload: 400 closed-loop clients against the CPU demo, with load shedding on and off.

One model replica (the CPU config's model, batching and queues, autoscaling off) takes
640x640 JPEG questions from:

- 16 clients, shedding on: the throughput the model gives when it is busy but not overloaded;
- 400 clients, shedding off (``max_queue_wait_s: null``): every request the queues hold is
  admitted, so callers learn of overload only by waiting;
- 400 clients, shedding on, clients that wait ``Retry-After`` after a 503 (as well-behaved
  clients, the OpenAI client among them, do);
- 400 clients, shedding on, clients that retry at once (the worst case for the 503 path).

Throughput counts 200s; latency percentiles are given for the 200s and for the 503s apart.
"""

from __future__ import annotations

from typing import Any

from benchmarks import plots
from benchmarks.loadgen import Load, run_load
from benchmarks.local_serve import app_args, cpu_batching, deploy, local_serve
from benchmarks.payloads import vqa_calls
from benchmarks.report import Contention, machine, write_result
from benchmarks.settings import Settings

DEMO_MODEL = "builtin:shapes-blip2"
CLIENTS = 400
CASES = (
    ("16 clients", 16, True, False),
    ("400, no shedding", CLIENTS, False, False),
    ("400, shedding, clients honour Retry-After", CLIENTS, True, True),
    ("400, shedding, clients retry at once", CLIENTS, True, False),
)
"""(label, clients, shedding on, clients honour ``Retry-After``)."""


def run(settings: Settings) -> dict[str, Any]:
    """Measure each case on a fresh deployment; write ``overload.json``/``.png``."""
    calls = vqa_calls("medium")
    args = app_args(DEMO_MODEL, shedding=True)
    budget_s = args["limits"]["max_queue_wait_s"]
    batching = cpu_batching()
    clients_cap = 24 if settings.quick else CLIENTS
    seconds = 5.0 if settings.quick else 30.0
    points = []
    with Contention() as contention, local_serve() as url:
        for label, clients, shedding, honour in CASES:
            clients = min(clients, clients_cap)
            limits = {**args["limits"], "max_queue_wait_s": budget_s if shedding else None}
            deploy({**args, "limits": limits}, batching)
            load = Load(
                concurrency=clients,
                max_requests=100_000,
                time_limit_s=seconds,
                warmup_requests=clients,
                honour_retry_after=honour,
            )
            result = run_load(url, calls, load, label)
            points.append({"case": label, "shedding": shedding, **result.summary()})
    summary = {
        "scenario": "overload",
        "headline": headline(points),
        "model": DEMO_MODEL,
        "images": "640x640 JPEG, base64 in JSON",
        "max_queue_wait_s": budget_s,
        "max_batch_size": batching.max_batch_size,
        "points": points,
        "machine": machine(),
        "contention": contention.summary,
    }
    write_result(settings.results_dir, "overload", summary)
    plots.overload(summary, settings.results_dir / "overload.png")
    return summary


def headline(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Each 400-client case against absorbing everything: throughput kept, latency, refusals."""
    absorbed = points[1]["throughput_rps"]
    return {
        point["case"]: {
            "throughput_vs_no_shedding": round(point["throughput_rps"] / absorbed, 2)
            if absorbed
            else None,
            "p99_ms": point["p99_ms"],
            "p99_503_ms": point.get("p99_503_ms"),
            "shed_fraction": round(point["statuses"].get("503", 0) / max(1, point["requests"]), 2),
        }
        for point in points[2:]
    }
