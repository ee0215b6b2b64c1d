"""A real local Ray + Serve per test module, with logical GPUs so GPU-pinned replicas schedule.

Serve's gRPC proxy is on in every module, as in the repository's configs, so every ingress
starts the way it does there (anonymous only where the app allows it).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from ray import cloudpickle, serve

import tests.support.fakes
from serve_app.deployments.ingress import serve_proxies
from serve_app.grpc import SERVICER_FUNCTION
from tests.support.local_ray import start_ray, stop_ray, stop_serve_handles

GRPC_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The gRPC proxy's message cap, as the deployment manifests set it (Serve's default: 2 GiB)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_serve(
    tmp_path_factory: pytest.TempPathFactory, host: str = "127.0.0.1", num_gpus: int = 2
) -> Iterator[str]:
    """Start Ray (4 logical CPUs, ``num_gpus`` logical GPUs) and Serve listening on ``host``
    and a free port (its gRPC proxy on another); yield its loopback URL; shut both down after."""
    os.environ["SERVE_APP_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    os.environ["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] = str(GRPC_MAX_MESSAGE_BYTES)
    cloudpickle.register_pickle_by_value(tests.support.fakes)
    start_ray(num_cpus=4, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(
        http_options={"host": host, "port": port},
        grpc_options={"port": free_port(), "grpc_servicer_functions": [SERVICER_FUNCTION]},
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_serve_handles()
        stop_ray()


@pytest.fixture(scope="module")
def serve_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Ray (2 logical GPUs) and Serve on a free loopback port, for one test module."""
    yield from local_serve(tmp_path_factory)


@pytest.fixture(scope="module")
def grpc_target(serve_url: str) -> str:
    """``host:port`` of the module's Serve gRPC proxy."""
    _, port = serve_proxies()
    assert port is not None
    return f"127.0.0.1:{port}"
