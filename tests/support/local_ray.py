"""A local Ray per test module that starts reliably on a busy 2-core machine.

Ray gives its raylet a fixed 30 s to register with the GCS. On 2 cores, right after the last
module's cluster, that can run out while the old cluster's processes are still exiting: the
next ``ray.init`` then fails before any test runs. So stopping waits until the old cluster's
processes are gone, and starting retries once when the node timed out during startup.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any

import psutil
import ray
from ray import serve

NODE_STARTUP_TIMEOUT = "timed out during startup"
"""What ``ray.init`` raises (a plain ``Exception``) when the raylet did not register in time."""

EXIT_WAIT_S = 15.0
"""How long a stopped cluster's processes get to exit, and killed ones to go."""


def start_ray(**init_args: Any) -> None:
    """``ray.init(**init_args)``, tried a second time if the new node timed out starting."""
    try:
        ray.init(**init_args)
    except Exception as error:
        if NODE_STARTUP_TIMEOUT not in str(error):
            raise
        warnings.warn(f"local Ray did not start ({error}); trying once more", stacklevel=2)
        ray.shutdown()
        end(ray_processes(), grace_s=0)
        ray.init(**init_args)


def stop_serve_handles() -> None:
    """Stop the driver's Serve handles before its Ray goes (Serve's replicas are not drained:
    they end with Ray, in seconds). Left running, the handles' metrics pusher would start a
    new local Ray once this one is gone."""
    client = serve.context._get_global_client(raise_if_no_controller_running=False)
    if client is not None:
        client.shutdown_cached_handles()


def stop_ray() -> None:
    """``ray.shutdown()``, then wait until every process of that cluster is gone."""
    processes = ray_processes()
    ray.shutdown()
    end(processes, grace_s=EXIT_WAIT_S)


def end(processes: list[psutil.Process], grace_s: float) -> None:
    """Give ``processes`` ``grace_s`` to exit, then kill what is left and wait for it."""
    if not wait_for_exit(processes, grace_s):
        for process in filter(running, processes):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        wait_for_exit(processes, EXIT_WAIT_S)


def wait_for_exit(processes: list[psutil.Process], timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``processes`` to exit; whether they all did."""
    deadline = time.monotonic() + timeout_s
    while any(map(running, processes)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def ray_processes() -> list[psutil.Process]:
    """This driver's Ray processes (GCS, raylet, agents) and the workers under them."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "ray" in command:
            found.append(process)
    return found


def running(process: psutil.Process) -> bool:
    """Whether ``process`` still runs (a zombie has exited: only its entry is left)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
