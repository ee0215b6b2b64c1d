"""The same questions over gRPC and over HTTP: per-request CPU and latency, 1 and 16 clients.

The CPU config's service with the demo model, asked ``Vqa`` through Serve's gRPC proxy (the
image as raw bytes in the message) and ``POST /v1/vqa`` through its HTTP proxy (the image as
base64 in JSON, the usual way, and as a multipart upload, raw bytes like gRPC), in closed
loops. Each protocol is measured in every round, so a drift in the machine's speed weighs on
all alike. Each process's CPU per request is read from ``/proc``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from benchmarks import plots, procs
from benchmarks.loadgen import Load, LoadResult, run_grpc_load, run_load
from benchmarks.local_serve import (
    app_args,
    cpu_batching,
    deploy,
    grpc_target,
    local_serve,
    serve_pids,
)
from benchmarks.payloads import grpc_vqa_calls, upload_calls, vqa_calls
from benchmarks.report import Contention, machine, mean_of_rounds, write_result
from benchmarks.settings import Settings

DEMO_MODEL = "builtin:shapes-blip2"
LEVELS = (1, 16)
GRPC, HTTP_JSON, HTTP_UPLOAD = "gRPC, raw bytes", "HTTP, base64 JSON", "HTTP, multipart upload"

Sender = Callable[[Load, str], LoadResult]
"""Runs a load (and its title) against one protocol's endpoint."""


def run(settings: Settings) -> dict[str, Any]:
    """Measure each protocol at each level; write ``grpc-vs-http.json``/``.png``."""
    calls = {GRPC: grpc_vqa_calls("small"), HTTP_JSON: vqa_calls("small")}
    if not settings.quick:
        calls[HTTP_UPLOAD] = upload_calls("small")
    rounds: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with Contention() as contention, local_serve() as url:
        deploy(app_args(DEMO_MODEL), cpu_batching())
        target, pids = grpc_target(), serve_pids()
        senders: dict[str, Sender] = {
            protocol: functools.partial(
                run_grpc_load if protocol == GRPC else run_load,
                target if protocol == GRPC else url,
                protocol_calls,
            )
            for protocol, protocol_calls in calls.items()
        }
        for _ in range(settings.rounds):
            for protocol, send in senders.items():
                for level in LEVELS:
                    found = measure(send, settings, level, f"{protocol}, {level}", pids)
                    rounds.setdefault((protocol, level), []).append(found)
    points = [
        {"protocol": protocol, "concurrency": level, **combine(found)}
        for (protocol, level), found in rounds.items()
    ]
    summary = {
        "scenario": "grpc-vs-http",
        "headline": headline(points),
        "model": DEMO_MODEL,
        "images": "64x64 PNG",
        "points": points,
        "machine": machine(),
        "contention": contention.summary,
    }
    write_result(settings.results_dir, "grpc-vs-http", summary)
    plots.grpc_vs_http(summary, settings.results_dir / "grpc-vs-http.png")
    return summary


def measure(
    send: Sender, settings: Settings, concurrency: int, title: str, pids: dict[str, list[int]]
) -> dict[str, Any]:
    """One closed-loop run, with the CPU each of Serve's processes spent per request."""
    send(settings.load(concurrency=concurrency, requests=32), "warm-up")
    load = settings.load(concurrency=concurrency, requests=150 * min(4, concurrency))
    before = {name: sum(map(procs.cpu_seconds, group)) for name, group in pids.items()}
    result = send(load, f"{title} client(s)")
    requests = max(1, result.ok)
    cpu = {
        name: round((sum(map(procs.cpu_seconds, group)) - before[name]) * 1000 / requests, 2)
        for name, group in pids.items()
    }
    return {**result.summary(), "cpu_ms_per_request": cpu}


def combine(found: list[dict[str, Any]]) -> dict[str, Any]:
    """One point from its rounds: the mean of each figure, CPU included."""
    merged = mean_of_rounds(found)
    merged["cpu_ms_per_request"] = {
        name: round(sum(f["cpu_ms_per_request"][name] for f in found) / len(found), 2)
        for name in found[0]["cpu_ms_per_request"]
    }
    return merged


def headline(points: list[dict[str, Any]]) -> dict[str, Any]:
    """gRPC against base64 JSON over HTTP: throughput at 16 clients, p50 at 1, and the CPU
    per request of the proxy and of the ingress."""
    at = {(p["protocol"], p["concurrency"]): p for p in points}
    grpc_16, http_16 = at[(GRPC, 16)], at[(HTTP_JSON, 16)]
    return {
        "16 clients, throughput gRPC vs HTTP": round(
            grpc_16["throughput_rps"] / http_16["throughput_rps"], 2
        ),
        "1 client, p50 ms (gRPC, HTTP)": [at[(GRPC, 1)]["p50_ms"], at[(HTTP_JSON, 1)]["p50_ms"]],
        "16 clients, proxy CPU ms per request (gRPC, HTTP)": [
            grpc_16["cpu_ms_per_request"]["proxy"],
            http_16["cpu_ms_per_request"]["proxy"],
        ],
        "16 clients, ingress CPU ms per request (gRPC, HTTP)": [
            grpc_16["cpu_ms_per_request"]["ingress"],
            http_16["cpu_ms_per_request"]["ingress"],
        ],
    }
