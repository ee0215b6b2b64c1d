"""A local Ray cluster whose autoscaler adds and removes worker nodes as local processes,
through Ray's fake multi-node node provider."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray._private.services import get_node_ip_address

HEAD_TYPE = "ray.head.default"


def autoscaling_config(
    gcs_address: str, head_cpus: int, worker_types: dict[str, Any], idle_timeout_minutes: float
) -> dict[str, Any]:
    """A cluster-launcher config for the fake node provider; new nodes join ``gcs_address``."""
    head = {"resources": {"CPU": head_cpus, "GPU": 0}, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "fake-blip2",
        "max_workers": sum(t["max_workers"] for t in worker_types.values()),
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": {**worker_types, HEAD_TYPE: head},
        "head_node_type": HEAD_TYPE,
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        **{
            commands: []
            for commands in (
                "initialization_commands",
                "setup_commands",
                "head_setup_commands",
                "worker_setup_commands",
                "head_start_ray_commands",
                "worker_start_ray_commands",
            )
        },
    }


@contextmanager
def fake_autoscaling_cluster(
    directory: Path,
    port: int,
    head_cpus: int,
    worker_types: dict[str, Any],
    idle_timeout_minutes: float,
) -> Iterator[str]:
    """Start the head with the autoscaler; yield its address; stop every Ray process after.

    The cluster uses Ray's token authentication (``RAY_AUTH_MODE=token``, set for the test
    session); a token is generated first if this machine has none.
    """
    config_file = directory / "autoscaling.json"
    gcs_address = f"{get_node_ip_address()}:{port}"
    config = autoscaling_config(gcs_address, head_cpus, worker_types, idle_timeout_minutes)
    config_file.write_text(json.dumps(config))
    subprocess.run(["ray", "get-auth-token", "--generate"], capture_output=True, check=True)
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    command = [
        "ray",
        "start",
        "--head",
        f"--port={port}",
        f"--num-cpus={head_cpus}",
        "--num-gpus=0",
        f"--autoscaling-config={config_file}",
    ]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield gcs_address
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)
