"""The whole chain on Ray's fake multi-node autoscaler: load -> Serve adds model replicas ->
they wait for GPUs -> the Ray autoscaler adds GPU workers -> replicas serve; idle workers go.

A ``SlowFakeModel`` stands in for BLIP-2; the GPU worker nodes are local processes started by
Ray's fake node provider.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray
from ray import serve

from tests.cluster.test_multi_node import Load, deploy
from tests.serve.conftest import free_port
from tests.support.fake_autoscaler import fake_autoscaling_cluster
from tests.support.local_ray import stop_serve_handles
from tests.support.serving import running_replicas, wait_until


def gpu_workers() -> int:
    return sum(1 for node in ray.nodes() if node["Alive"] and node["Resources"].get("GPU"))


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    gpu_worker = {
        "resources": {"CPU": 0, "GPU": 1, "blip2_gpu": 1},
        "node_config": {},
        "min_workers": 0,
        "max_workers": 2,
    }
    with fake_autoscaling_cluster(
        tmp_path_factory.mktemp("autoscaler"),
        port=free_port(),
        head_cpus=2,
        worker_types={"gpu_worker": gpu_worker},
        idle_timeout_minutes=0.1,
    ) as address:
        ray.init(address=address, log_to_driver=False)
        try:
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_serve_handles()
            ray.shutdown()


def test_load_brings_gpu_workers_and_idleness_takes_them_away(url: str) -> None:
    assert gpu_workers() == 0
    deploy(min_replicas=1)  # the first replica waits for a GPU until a worker is added
    assert running_replicas("Blip2Server") == 1 and gpu_workers() == 1

    load = Load(url, clients=10)
    try:
        wait_until(lambda: running_replicas("Blip2Server") == 2, 180, "a second replica")
        assert gpu_workers() == 2
    finally:
        statuses = load.stop()
    assert statuses and set(statuses) == {200}

    wait_until(lambda: running_replicas("Blip2Server") == 1, 90, "scale down to one replica")
    wait_until(lambda: gpu_workers() == 1, 120, "the idle GPU worker to be removed")
