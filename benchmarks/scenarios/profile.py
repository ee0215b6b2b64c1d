"""Where the time goes under load, and resizing in the ingress, before and after.

The CPU model at concurrency 16, three variants in one Ray:

- large images (1024x768 JPEG), *before*: ``FullResolutionBlip2`` makes the ingress send the
  full decoded array and the model replica's image processor resize it;
- large images, *after*: the service as it is, resizing in the ingress;
- small images (64x64 PNG), as it is.

Before and after alternate, twice each.

During each run, py-spy samples the Serve proxy, the ingress and the model replica, and
``/proc`` gives every process's CPU time: CPU milliseconds per request per process, split by
the kinds of work the samples show (``benchmarks.profiling``).
"""

from __future__ import annotations

import os
import re
import statistics
from pathlib import Path
from typing import Any

from ray import serve

from benchmarks import full_resolution, plots, procs, profiling
from benchmarks.loadgen import Load, run_load
from benchmarks.local_serve import (
    APP_NAME,
    app_args,
    deploy,
    local_serve,
    serve_pids,
    ship_by_value,
)
from benchmarks.payloads import ImageKind, image_bytes, vqa_calls
from benchmarks.report import Contention, machine, write_result
from benchmarks.settings import Settings
from serve_app.config import MODEL_DEPLOYMENT, BatchingConfig, LimitsConfig
from serve_app.deployments.server import ModelFactory
from serve_app.images.decode import decode_image

CONCURRENCY = 16
MAX_BATCH_SIZE, WAIT_S = 16, 0.1
MEASURE_S = 20.0
ROUNDS = 2
VARIANTS: tuple[tuple[str, ImageKind, ModelFactory | None], ...] = (
    ("large images, before", "large", full_resolution.FullResolutionBlip2.load),
    ("large images, after", "large", None),
    ("small images", "small", None),
)


def run(settings: Settings) -> dict[str, Any]:
    """Profile each variant under load; write ``profile.json`` and ``.png``.

    Before and after alternate for ``ROUNDS`` rounds, so a drift in the machine's speed
    during the run weighs on both alike; each variant's figures are the mean of its runs.
    """
    ship_by_value(full_resolution)
    seconds = 4.0 if settings.quick else MEASURE_S
    rounds = 1 if settings.quick else ROUNDS
    schedule = [*(VARIANTS[:2] * rounds), VARIANTS[2]]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in VARIANTS}
    with Contention() as contention, local_serve() as url:
        for name, kind, factory in schedule:
            batching = BatchingConfig(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=WAIT_S)
            deploy(app_args(settings.model_id, MAX_BATCH_SIZE), batching, factory)
            calls = vqa_calls(kind)
            run_load(url, calls, settings.load(concurrency=CONCURRENCY, requests=64), "warm-up")
            folder = settings.results_dir / "profiles" / re.sub(r"\W+", "-", name)
            figures = measure(url, calls, seconds, folder / f"run-{len(runs[name]) + 1}")
            runs[name].append(
                {"images": kind, "array_bytes_to_model": array_bytes(kind), **figures}
            )
    variants = [{"variant": name, **combine(found)} for name, found in runs.items()]
    before, after = variants[0], variants[1]
    summary = {
        "scenario": "profile",
        "model": settings.model_id,
        "concurrency": CONCURRENCY,
        "batching": {"max_batch_size": MAX_BATCH_SIZE, "batch_wait_timeout_s": WAIT_S},
        "headline": {
            "throughput_after_vs_before": round(
                after["load"]["throughput_rps"] / before["load"]["throughput_rps"], 2
            ),
            "p50_ms_before_after": [before["load"]["p50_ms"], after["load"]["p50_ms"]],
            "model_cpu_ms_per_request_before_after": [
                before["cpu_ms_per_request"]["model replica"],
                after["cpu_ms_per_request"]["model replica"],
            ],
            "array_bytes_to_model_before_after": [
                before["array_bytes_to_model"],
                after["array_bytes_to_model"],
            ],
        },
        "variants": variants,
        "machine": machine(),
        "contention": contention.summary,
    }
    write_result(settings.results_dir, "profile", summary)
    plots.profile(summary, settings.results_dir / "profile.png")
    return summary


def measure(url: str, calls: Any, seconds: float, folder: Path) -> dict[str, Any]:
    """Load for ``seconds`` while recording; CPU ms per request by process and by kind of work."""
    folder.mkdir(parents=True, exist_ok=True)
    roles = {
        "Serve proxy": "proxy",
        "ingress": "ingress",
        "model replica": "model",
    }
    pids = {role: serve_pids()[key][0] for role, key in roles.items()}
    recorders = {
        role: profiling.start_recording(pid, seconds - 2, folder / f"{roles[role]}.txt")
        for role, pid in pids.items()
    }
    ignored = {os.getpid(), *(recorder.pid for recorder in recorders.values())}
    before = cpu_by_role(pids, ignored)
    result = run_load(
        url,
        calls,
        Load(concurrency=CONCURRENCY, max_requests=5_000, time_limit_s=seconds),
        "measured",
    )
    after = cpu_by_role(pids, ignored)
    for recorder in recorders.values():
        recorder.wait()
    per_request = {
        role: round((after[role] - before[role]) / max(1, result.ok) * 1000, 2) for role in after
    }
    split = {
        role: {
            kind: round(share * per_request[role], 2)
            for kind, share in profiling.shares(folder / f"{roles[role]}.txt").items()
        }
        for role in pids
    }
    return {
        "load": result.summary(),
        "cpu_ms_per_request": per_request,
        "split_ms_per_request": split,
    }


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A variant's runs as one: the mean of each figure, and every run's load figures."""

    def mean(values: list[float]) -> float:
        return round(statistics.fmean(values), 2)

    first = runs[0]
    split = {}
    for role in first["split_ms_per_request"]:
        kinds = {kind for run in runs for kind in run["split_ms_per_request"][role]}
        means = {
            k: mean([r["split_ms_per_request"][role].get(k, 0.0) for r in runs]) for k in kinds
        }
        split[role] = dict(sorted(means.items(), key=lambda item: -item[1]))
    return {
        "images": first["images"],
        "array_bytes_to_model": first["array_bytes_to_model"],
        "load": {
            key: mean([run["load"][key] for run in runs])
            for key in ("throughput_rps", "p50_ms", "p90_ms", "p99_ms")
        },
        "cpu_ms_per_request": {
            role: mean([run["cpu_ms_per_request"][role] for run in runs])
            for role in first["cpu_ms_per_request"]
        },
        "split_ms_per_request": split,
        "runs": [run["load"] for run in runs],
    }


def cpu_by_role(pids: dict[str, int], ignored: set[int]) -> dict[str, float]:
    """CPU seconds so far of each serving process, the rest of Ray, and this load generator."""
    seconds = {role: procs.cpu_seconds(pid) for role, pid in pids.items()}
    rest = 0.0
    for pid, (_, used) in procs.cpu_by_process().items():
        if pid not in ignored and pid not in pids.values() and procs.in_tree(pid):
            rest += used
    seconds["rest of Ray (raylet, GCS, controller)"] = rest
    seconds["load generator"] = procs.cpu_seconds(os.getpid())
    return seconds


def array_bytes(kind: ImageKind) -> int:
    """Bytes of the image array one request sends to the model replica, as deployed now."""
    height, width, channels = decode_image(image_bytes(0, kind), LimitsConfig()).shape
    described = serve.get_deployment_handle(MODEL_DEPLOYMENT, APP_NAME).describe.remote().result()
    target = described.model.image_input
    if target is not None:
        height, width = target.height, target.width
    return int(height * width * channels)
