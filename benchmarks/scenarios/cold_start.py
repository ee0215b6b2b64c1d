"""Cold start: from ``serve run <config>`` to the first 200, split into its phases.

``serve run`` starts in a subprocess with ``RAY_ADDRESS=local`` (its own fresh Ray) on the CPU
config, with the model and port overridden. Its output is read line by line; Ray's and
Serve's log lines carry millisecond timestamps, which mark the phases:

- Ray started: the driver's ``Started a local Ray instance``;
- model replica scheduled: the controller's ``Adding 1 replica to Deployment(name='Blip2Server'``;
- model loaded: the replica's first ``Batching set to`` (Serve calls ``reconfigure`` right after
  the constructor, which loads the model);
- first batch: the duration in the model replica's first ``CALL generate OK <ms>`` log line;
- first 200: a client polling ``POST /v1/vqa`` every 100 ms. What lies between the model
  loaded and the first 200, less the first batch, is the ingress starting, the proxy learning
  the routes and the request's way in and out.

Run twice: with an empty model cache (the builtin tiny model is built) and with a warm one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks import plots
from benchmarks.local_serve import CPU_CONFIG, REPO_ROOT, free_port
from benchmarks.payloads import vqa_calls
from benchmarks.report import Contention, machine, write_result
from benchmarks.settings import Settings

MARKERS = {
    "ray_started": "Started a local Ray instance",
    "model_replica_scheduled": "Adding 1 replica to Deployment(name='Blip2Server'",
    "model_loaded": "Batching set to",
}
TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
FIRST_BATCH = re.compile(r"Blip2Server.*CALL generate OK ([\d.]+)ms")
TIMEOUT_S = 240


def run(settings: Settings) -> dict[str, Any]:
    """Time ``serve run`` to the first 200 with a cold and a warm model cache."""
    cache = Path(tempfile.mkdtemp(prefix="serve-app-cache-"))
    trials = ["empty model cache", "warm model cache"][: 1 if settings.quick else 2]
    results = []
    with Contention() as contention:
        for trial in trials:
            results.append({"trial": trial, **time_serve_run(settings.model_id, cache)})
    summary = {
        "scenario": "cold-start",
        "headline": {trial["trial"]: trial["total_s"] for trial in results},
        "model": settings.model_id,
        "config": CPU_CONFIG.name,
        "trials": results,
        "machine": machine(),
        "contention": contention.summary,
    }
    write_result(settings.results_dir, "cold-start", summary)
    plots.cold_start(summary, settings.results_dir / "cold-start.png")
    return summary


def time_serve_run(model_id: str, cache: Path) -> dict[str, Any]:
    """One ``serve run`` from launch to the first 200; its phases in seconds."""
    port = free_port()
    config = yaml.safe_load(CPU_CONFIG.read_text())
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["model"]["model_id"] = model_id
    config_file = cache / "serve_config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_ADDRESS": "local", "SERVE_APP_CACHE": str(cache)}
    marks: dict[str, float] = {}
    started = time.time()
    process = subprocess.Popen(
        ["serve", "run", str(config_file)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    reader = threading.Thread(target=read_marks, args=(process, marks), daemon=True)
    reader.start()
    try:
        first_ok = first_200(f"http://127.0.0.1:{port}", process)
        deadline = time.monotonic() + 10
        while "first_batch_s" not in marks and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop(process)
    return phases(started, marks, first_ok)


def read_marks(process: subprocess.Popen[str], marks: dict[str, float]) -> None:
    """Record when each marker first appears (its log timestamp, else when it was read)."""
    assert process.stdout is not None
    for line in process.stdout:
        for name, marker in MARKERS.items():
            if name not in marks and marker in line:
                stamp = TIMESTAMP.search(line)
                marks[name] = log_time(stamp.group(1)) if stamp else time.time()
        batch = FIRST_BATCH.search(line)
        if batch and "first_batch_s" not in marks:
            marks["first_batch_s"] = float(batch.group(1)) / 1000


def log_time(stamp: str) -> float:
    """A log line's local timestamp (``2024-01-31 12:00:00,123``) as Unix time."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def first_200(url: str, process: subprocess.Popen[str]) -> float:
    """Poll until a ``POST /v1/vqa`` is answered 200; when that answer came."""
    call = vqa_calls("small", count=1)[0]
    headers = {"content-type": call.content_type}
    deadline = time.monotonic() + TIMEOUT_S
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if client.post(call.path, content=call.body, headers=headers).status_code == 200:
                    return time.time()
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise RuntimeError("serve run did not answer 200 in time")


def stop(process: subprocess.Popen[str]) -> None:
    """Ctrl-C ``serve run`` (it shuts Serve and its Ray down); kill its group if it hangs."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def phases(started: float, marks: dict[str, float], first_ok: float) -> dict[str, Any]:
    """Seconds per phase, from the marks in order; the total is launch to the first 200."""
    ray_started = marks.get("ray_started", started)
    scheduled = marks.get("model_replica_scheduled", ray_started)
    loaded = marks.get("model_loaded", scheduled)
    first_batch = marks.get("first_batch_s", 0.0)
    return {
        "total_s": round(first_ok - started, 2),
        "phases_s": {
            "start Ray (CLI, ray.init)": round(ray_started - started, 2),
            "start Serve, build the app, schedule replicas": round(scheduled - ray_started, 2),
            "model replica: process, imports, model load": round(loaded - scheduled, 2),
            "ingress ready, routes at the proxy, request transit": round(
                first_ok - loaded - first_batch, 2
            ),
            "first batch (the model replica's first generate call)": round(first_batch, 2),
        },
        "markers_found": sorted(marks),
    }
