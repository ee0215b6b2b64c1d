"""Multi-node behaviour on ``ray.cluster_utils.Cluster``: a CPU head and two GPU workers.

A ``SlowFakeModel`` stands in for BLIP-2 (placement, scaling and node loss are under test).
Worker nodes declare one GPU, the ``blip2_gpu`` resource and no CPU; the ingress asks for a
little CPU, so it stays on the head, and the Serve proxy runs on the head only.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import ray
import requests
from ray import serve
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from tests.serve.conftest import free_port
from tests.support.fakes import slow_fake_model
from tests.support.images import image_bytes
from tests.support.local_ray import stop_serve_handles
from tests.support.serving import fast_autoscaling, run_app, running_replicas, wait_until

BODY = {"image": {"data": base64.b64encode(image_bytes(0)).decode()}, "question": "q"}
GPU_NODE = {"num_cpus": 0, "num_gpus": 1, "resources": {"blip2_gpu": 1}}
SMALL_STORE = 80 * 1024 * 1024


@dataclass
class SimulatedCluster:
    cluster: Cluster
    workers: list[Any]
    url: str

    def add_gpu_worker(self) -> Any:
        node = self.cluster.add_node(**GPU_NODE, object_store_memory=SMALL_STORE)
        self.workers.append(node)
        return node


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatedCluster]:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "num_gpus": 0, "object_store_memory": SMALL_STORE},
    )
    simulated = SimulatedCluster(cluster, [], "")
    try:
        for _ in range(2):
            simulated.add_gpu_worker()
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        simulated.url = f"http://127.0.0.1:{port}"
        yield simulated
    finally:
        stop_serve_handles()
        ray.shutdown()
        cluster.shutdown()


def deploy(min_replicas: int) -> None:
    run_app(
        slow_fake_model,
        {
            "model_deployment": {
                "num_cpus": 0,
                "num_gpus": 1,
                "resources": {"blip2_gpu": 1},
                "autoscaling_config": fast_autoscaling(min_replicas),
            },
            "ingress_deployment": {"num_cpus": 0.1},
        },
        batching={"max_batch_size": 4, "batch_wait_timeout_s": 0.05},
    )


def nodes_of(deployment: str) -> set[str]:
    actors = list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
    return {a.node_id for a in actors if a.class_name.endswith(f":{deployment}")}


class Load:
    """Clients that keep sending requests until stopped; every answer's status is kept."""

    def __init__(self, url: str, clients: int) -> None:
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(clients)
        self._futures = [self._pool.submit(self._client, url) for _ in range(clients)]

    def _client(self, url: str) -> None:
        for _ in range(3000):
            if self._stop.is_set():
                return
            response = requests.post(f"{url}/v1/vqa", json=BODY, timeout=60)
            self.statuses.append(response.status_code)

    def stop(self) -> list[int]:
        self._stop.set()
        for future in self._futures:
            future.result(timeout=120)
        self._pool.shutdown()
        return self.statuses


def test_model_replicas_land_only_on_gpu_workers_and_scale_across_them(
    sim: SimulatedCluster,
) -> None:
    deploy(min_replicas=1)
    workers = {node.node_id for node in sim.workers}
    head = sim.cluster.head_node.node_id
    assert nodes_of("Blip2Server") <= workers and head not in nodes_of("Blip2Server")

    load = Load(sim.url, clients=10)
    try:
        wait_until(
            lambda: running_replicas("Blip2Server") == 2 and nodes_of("Blip2Server") == workers,
            90,
            "a running replica on every GPU worker",
        )
    finally:
        statuses = load.stop()
    assert statuses and set(statuses) == {200}
    wait_until(lambda: running_replicas("Blip2Server") == 1, 90, "scale down to the minimum")


def test_losing_a_gpu_worker_loses_no_accepted_request(sim: SimulatedCluster) -> None:
    deploy(min_replicas=2)
    wait_until(lambda: running_replicas("Blip2Server") == 2, 90, "two replicas")
    victim = next(n for n in sim.workers if n.node_id in nodes_of("Blip2Server"))

    load = Load(sim.url, clients=8)
    try:
        wait_until(lambda: len(load.statuses) >= 10, 30, "traffic to flow")
        sim.cluster.remove_node(victim, allow_graceful=False)
        sim.workers.remove(victim)
        answered = len(load.statuses)
        wait_until(lambda: len(load.statuses) >= answered + 20, 60, "traffic after the loss")
    finally:
        statuses = load.stop()
    assert set(statuses) == {200}, sorted(set(statuses))

    sim.add_gpu_worker()
    wait_until(lambda: running_replicas("Blip2Server") == 2, 120, "the replica to come back")
    assert len(nodes_of("Blip2Server")) == 2
