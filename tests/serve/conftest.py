"""A real local Ray + Serve per test module, with logical GPUs so GPU-pinned replicas schedule."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
import ray
from ray import cloudpickle, serve

import tests.support.fakes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_serve(
    tmp_path_factory: pytest.TempPathFactory, host: str = "127.0.0.1", num_gpus: int = 2
) -> Iterator[str]:
    """Start Ray (4 logical CPUs, ``num_gpus`` logical GPUs) and Serve listening on ``host``
    and a free port; yield its loopback URL; shut both down after."""
    os.environ["SERVE_APP_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    cloudpickle.register_pickle_by_value(tests.support.fakes)
    ray.init(num_cpus=4, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": host, "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def serve_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Ray (2 logical GPUs) and Serve on a free loopback port, for one test module."""
    yield from local_serve(tmp_path_factory)
