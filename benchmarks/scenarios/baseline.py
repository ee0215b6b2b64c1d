"""The service against the server a user writes first (``benchmarks.baseline_server``).

Both serve the same model to the same ``POST /v1/vqa`` bodies at the same concurrency levels;
the service runs with the CPU config's batching and with a longer batch wait. Both are up
for the whole run but only one is loaded at a time (the other idles), and the measurements
alternate for two rounds, so a drift in the machine's speed weighs on both alike.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from benchmarks import plots
from benchmarks.loadgen import run_load
from benchmarks.local_serve import REPO_ROOT, app_args, deploy_config, free_port, local_serve
from benchmarks.payloads import vqa_calls
from benchmarks.report import Contention, machine, mean_of_rounds, write_result
from benchmarks.settings import Settings

CONCURRENCY_LEVELS = (1, 4, 16)
SERVICE_BATCHING = ((16, 0.01), (16, 0.1))
"""(max_batch_size, batch_wait_timeout_s): the CPU config's, and a longer wait."""
STARTUP_TIMEOUT_S = 120
BASELINE = "baseline (FastAPI + uvicorn)"


def run(settings: Settings) -> dict[str, Any]:
    """Measure the service and the baseline at each level; write ``baseline.json``/``.png``."""
    calls = vqa_calls("small")
    levels = (1, 16) if settings.quick else CONCURRENCY_LEVELS
    batching = SERVICE_BATCHING[:1] if settings.quick else SERVICE_BATCHING
    args = app_args(settings.model_id)
    names = [f"service (batch {size}, wait {wait:g} s)" for size, wait in batching]
    rounds: dict[str, dict[int, list[dict[str, Any]]]] = {
        name: {level: [] for level in levels} for name in [*names, BASELINE]
    }
    with (
        Contention() as contention,
        local_serve() as service,
        baseline_server(args["model"]) as baseline_url,
    ):
        for _ in range(settings.rounds):
            for name, (size, wait) in zip(names, batching, strict=True):
                deploy_config(args, size, wait)
                measure(service, calls, settings, name, rounds[name])
            measure(baseline_url, calls, settings, "baseline", rounds[BASELINE])
    servers = {
        name: [mean_of_rounds(by_level[level]) for level in levels]
        for name, by_level in rounds.items()
    }
    baseline = servers[BASELINE][-1]
    comparison = {
        name: {
            "throughput_vs_baseline": round(
                points[-1]["throughput_rps"] / baseline["throughput_rps"], 2
            ),
            "p99_ms": points[-1]["p99_ms"],
            "baseline_p99_ms": baseline["p99_ms"],
        }
        for name, points in servers.items()
        if name != BASELINE
    }
    summary = {
        "scenario": "baseline",
        "headline": {f"at concurrency {levels[-1]}": comparison},
        "model": settings.model_id,
        "images": "64x64 PNG, base64 in JSON",
        "servers": servers,
        "machine": machine(),
        "contention": contention.summary,
    }
    write_result(settings.results_dir, "baseline", summary)
    plots.baseline(summary, settings.results_dir / "baseline.png")
    return summary


def measure(
    url: str,
    calls: Any,
    settings: Settings,
    name: str,
    by_level: dict[int, list[dict[str, Any]]],
) -> None:
    """One closed-loop run per concurrency level, appended to ``by_level``."""
    for concurrency, found in by_level.items():
        load = settings.load(concurrency=concurrency, requests=100 * min(4, concurrency))
        found.append(run_load(url, calls, load, f"{name} c{concurrency}").summary())


@contextmanager
def baseline_server(model: dict[str, Any]) -> Iterator[str]:
    """Run ``benchmarks.baseline_server`` in a subprocess; yield its URL once it answers."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "benchmarks.baseline_server",
        "--port",
        str(port),
        "--model",
        model["model_id"],
        "--default-max-new-tokens",
        str(model["default_max_new_tokens"]),
    ]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(command, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not answers(f"{url}/healthz"):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the baseline server did not start")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def answers(url: str) -> bool:
    """Whether ``GET url`` is answered with 200."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
