"""The service against the server a user writes first, and against Ray Serve's own floor.

The same ``POST /v1/vqa`` bodies (64x64 PNG, base64 in JSON) in closed loops of 1 and 16
clients, for the demo model and a model that always generates 20 tokens, to:

- the baseline (``benchmarks.baseline_server``): FastAPI + uvicorn in one process, one
  ``generate`` per request;
- the service as shipped (the CPU config): the ingress sends the requests that wait for the
  model together, one handle call per group;
- the service with one call per request (``model_calls_per_replica`` far above the load,
  so every request finds a call free and goes alone), as before calls were grouped;
- Serve's floor: the shipped service around a model that answers at once, the same proxy ->
  ingress -> handle -> replica path with no model work.

Only one is loaded at a time (the others idle), and each is measured in every round, so a drift
in the machine's speed weighs on all alike. Each process's CPU per request is read from
``/proc``; the model replica's time inside ``generate`` from the replica itself.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ray import serve

from benchmarks import emulated, plots, procs
from benchmarks.baseline_server import baseline_server
from benchmarks.loadgen import run_load
from benchmarks.local_serve import (
    APP_NAME,
    app_args,
    batch_size_counts,
    cpu_batching,
    deploy,
    local_serve,
    serve_pids,
    set_calls_per_replica,
    ship_by_value,
)
from benchmarks.payloads import vqa_calls
from benchmarks.report import Contention, batch_figures, machine, mean_of_rounds, write_result
from benchmarks.settings import Settings
from serve_app.config import MODEL_DEPLOYMENT
from serve_app.deployments.server import ModelFactory

MODELS = {"demo model": "builtin:shapes-blip2", "20-token model": "builtin:tiny-random-blip2-opt"}
LEVELS = (1, 16)
BASELINE, SERVICE, PER_REQUEST, FLOOR = (
    "baseline (one process)",
    "service",
    "service, one call per request",
    "Serve's floor (no-op model)",
)
UNGROUPED_CALLS = 1024
"""``model_calls_per_replica`` that no closed loop of 16 clients reaches."""


def run(settings: Settings) -> dict[str, Any]:
    """Measure every server at each level for each model; write ``baseline.json``/``.png``.

    ``--quick`` measures the demo model only, without the one-call-per-request variant.
    """
    ship_by_value(emulated)
    calls = vqa_calls("small")
    models = dict(list(MODELS.items())[:1]) if settings.quick else MODELS
    variants = [(SERVICE, None), (PER_REQUEST, UNGROUPED_CALLS)][: 1 if settings.quick else 2]
    rounds: dict[tuple[str, str, int], list[dict[str, Any]]] = {}

    def measure_all(url: str, model: str, server: str, pids: dict[str, list[int]]) -> None:
        for level in LEVELS:
            found = measure(url, calls, settings, level, f"{model}, {server}", pids)
            rounds.setdefault((model, server, level), []).append(found)

    with Contention() as contention, local_serve() as url:
        for _ in range(settings.rounds):
            for model, model_id in models.items():
                args = app_args(model_id)
                with baseline_server(args["model"]) as (baseline_url, pid):
                    measure_all(baseline_url, model, BASELINE, {"baseline": [pid]})
                for server, calls_per_replica in variants:
                    set_calls_per_replica(args, calls_per_replica)
                    deploy(args, cpu_batching())
                    measure_all(url, model, server, serve_pids())
            deploy(app_args(MODELS["demo model"]), cpu_batching(), no_op_model())
            measure_all(url, "no model", FLOOR, serve_pids())
    points = [
        {"model": model, "server": server, "concurrency": level, **combine(found)}
        for (model, server, level), found in rounds.items()
    ]
    summary = {
        "scenario": "baseline",
        "headline": headline(points),
        "images": "64x64 PNG, base64 in JSON",
        "models": models,
        "points": points,
        "machine": machine(),
        "contention": contention.summary,
    }
    write_result(settings.results_dir, "baseline", summary)
    plots.baseline(summary, settings.results_dir / "baseline.png")
    return summary


def no_op_model() -> ModelFactory:
    """A model that answers every batch at once: what remains is the serving path."""
    record_dir = Path(tempfile.mkdtemp(prefix="no-op-batches-"))
    return emulated.emulated_model(emulated.BatchCost(fixed_ms=0, per_item_ms=0), record_dir)


def measure(
    url: str,
    calls: Any,
    settings: Settings,
    concurrency: int,
    title: str,
    pids: dict[str, list[int]],
) -> dict[str, Any]:
    """One closed-loop run, with the CPU each process spent per request during it.

    For the service also the model replica's CPU outside ``generate`` and the batches formed.
    """
    load = settings.load(concurrency=concurrency, requests=150 * min(4, concurrency))
    run_load(url, calls, settings.load(concurrency=concurrency, requests=32), "warm-up")
    server = serve.get_deployment_handle(MODEL_DEPLOYMENT, APP_NAME) if "model" in pids else None
    cpu_before = {name: sum(map(procs.cpu_seconds, group)) for name, group in pids.items()}
    generate_before = server.generate_cpu_seconds.remote().result() if server else 0.0
    batches_before = batch_size_counts() if server else None
    result = run_load(url, calls, load, f"{title}, {concurrency} client(s)")
    requests = max(1, result.ok)
    cpu = {
        name: round((sum(map(procs.cpu_seconds, group)) - cpu_before[name]) * 1000 / requests, 2)
        for name, group in pids.items()
    }
    found = {**result.summary(), "cpu_ms_per_request": cpu}
    if server and batches_before is not None:
        generate_ms = (server.generate_cpu_seconds.remote().result() - generate_before) * 1000
        cpu["model replica outside generate"] = round(cpu["model"] - generate_ms / requests, 2)
        found.update(batch_figures(batch_size_counts() - batches_before))
    return found


def combine(found: list[dict[str, Any]]) -> dict[str, Any]:
    """One point from its rounds: the mean of each figure, CPU included."""
    merged = mean_of_rounds(found)
    merged["cpu_ms_per_request"] = {
        name: round(sum(f["cpu_ms_per_request"][name] for f in found) / len(found), 2)
        for name in found[0]["cpu_ms_per_request"]
    }
    if "mean_batch_size" in found[0]:
        merged["mean_batch_size"] = round(sum(f["mean_batch_size"] for f in found) / len(found), 2)
    return merged


def headline(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: the service against the baseline (throughput and p99 at 16 clients, p50 at
    1), and against Serve's floor; the model replica's CPU outside ``generate``."""
    at = {(p["model"], p["server"], p["concurrency"]): p for p in points}
    floor = {level: at.get(("no model", FLOOR, level)) for level in LEVELS}
    figures: dict[str, Any] = {}
    for model in dict.fromkeys(p["model"] for p in points if p["model"] != "no model"):
        service = {level: at[(model, SERVICE, level)] for level in LEVELS}
        baseline = {level: at[(model, BASELINE, level)] for level in LEVELS}
        per_request = at.get((model, PER_REQUEST, 16))
        figures[model] = {
            "16 clients, throughput vs baseline": round(
                service[16]["throughput_rps"] / baseline[16]["throughput_rps"], 2
            ),
            "16 clients, p99 ms (service, baseline)": [
                service[16]["p99_ms"],
                baseline[16]["p99_ms"],
            ],
            "1 client, p50 ms (service, baseline)": [service[1]["p50_ms"], baseline[1]["p50_ms"]],
            "16 clients, model replica CPU ms per request outside generate": service[16][
                "cpu_ms_per_request"
            ]["model replica outside generate"],
        }
        if per_request is not None:
            figures[model]["16 clients, throughput vs one call per request"] = round(
                service[16]["throughput_rps"] / per_request["throughput_rps"], 2
            )
    if floor[16] is not None and floor[1] is not None:
        figures["Serve's floor"] = {
            "16 clients, requests/s": floor[16]["throughput_rps"],
            "1 client, p50 ms": floor[1]["p50_ms"],
        }
    return figures
