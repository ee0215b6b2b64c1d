"""What every result file records besides its figures: the machine and how busy it was."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmarks import procs


def other_cores(window_s: float) -> float:
    """CPU cores that processes outside this benchmark used over the next ``window_s``."""
    before = procs.cpu_by_process()
    time.sleep(window_s)
    used = 0.0
    for pid, (name, seconds) in procs.cpu_by_process().items():
        if not procs.in_tree(pid):
            used += max(0.0, seconds - before.get(pid, (name, 0.0))[1])
    return used / window_s


def wait_until_quiet(max_wait_s: float, threshold_cores: float = 0.25) -> float:
    """Wait (up to ``max_wait_s``) until other processes use under ``threshold_cores``.

    The machine must be found quiet twice in a row, a minute apart. Returns the last figure
    measured; the caller runs anyway when time is up.
    """
    deadline = time.monotonic() + max_wait_s
    quiet_in_a_row = 0
    while True:
        busy = other_cores(window_s=20)
        print(f"other processes use {busy:.2f} CPU cores", file=sys.stderr, flush=True)
        quiet_in_a_row = quiet_in_a_row + 1 if busy < threshold_cores else 0
        if quiet_in_a_row == 2 or time.monotonic() > deadline:
            return busy
        time.sleep(40)


class Contention:
    """Measures the CPU that processes outside this benchmark used while it ran.

    A figure measured on a shared machine is only as good as this number is small.
    """

    def __enter__(self) -> Contention:
        self._started = time.monotonic()
        self._before = procs.cpu_by_process()
        self._load_before = os.getloadavg()[0]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        elapsed = time.monotonic() - self._started
        cores: dict[str, float] = {}
        for pid, (name, seconds) in procs.cpu_by_process().items():
            if not procs.in_tree(pid):
                previous = self._before.get(pid, (name, 0.0))[1]
                cores[name] = cores.get(name, 0.0) + max(0.0, seconds - previous) / elapsed
        busiest = sorted(cores.items(), key=lambda item: -item[1])[:3]
        self.summary = {
            "other_processes_cpu_cores": round(sum(cores.values()), 2),
            "busiest_other_processes": {name: round(c, 2) for name, c in busiest if c >= 0.05},
            "load_average_1min_before": round(self._load_before, 2),
            "elapsed_s": round(elapsed, 1),
        }


def machine() -> dict[str, Any]:
    """The machine and software the figures were measured with."""
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    try:
        ray_version = version("ray")
    except PackageNotFoundError:
        ray_version = "not installed"
    return {
        "cpu_cores": os.cpu_count(),
        "gpu": "none" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "torch_threads_per_model": 1,
        "python": platform.python_version(),
        "ray": ray_version,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def batch_figures(batches: Counter[int]) -> dict[str, Any]:
    """The batch sizes that formed (warm-up included) and their mean."""
    sizes = {size: count for size, count in sorted(batches.items()) if count > 0}
    total = sum(sizes.values())
    mean = sum(size * count for size, count in sizes.items()) / total if total else 0.0
    return {"batch_sizes": sizes, "mean_batch_size": round(mean, 2)}


def mean_of_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Load summaries of one setting from several rounds as one: the mean of each figure,
    every status seen, and each round's throughput."""
    merged = dict(rounds[0])
    for key in ("duration_s", "throughput_rps", "p50_ms", "p90_ms", "p99_ms", "mean_ms"):
        merged[key] = round(statistics.fmean(summary[key] for summary in rounds), 2)
    for key in ("requests", "ok"):
        merged[key] = sum(summary[key] for summary in rounds)
    statuses: Counter[str] = Counter()
    for summary in rounds:
        statuses.update(summary["statuses"])
    merged["statuses"] = dict(sorted(statuses.items()))
    merged["throughput_rps_by_round"] = [summary["throughput_rps"] for summary in rounds]
    return merged


def write_result(results_dir: Path, name: str, result: dict[str, Any]) -> Path:
    """Write ``<results_dir>/<name>.json``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path
