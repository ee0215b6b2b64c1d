"""Metrics on Ray's Prometheus endpoint after traffic, and request ids in both deployments' logs."""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import requests
from ray import serve

from serve_app.config import TINY_RANDOM_OPT
from serve_app.deployments.server import load_blip2
from tests.serve.conftest import free_port
from tests.support.images import image_bytes
from tests.support.local_ray import start_ray, stop_ray, stop_serve_handles
from tests.support.serving import run_app, wait_until

IMAGE = {"data": base64.b64encode(image_bytes(0)).decode()}


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """Ray with its metrics exported on a known port, and the app on the tiny model."""
    os.environ["SERVE_APP_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    metrics_port = free_port()
    start_ray(
        num_cpus=4,
        num_gpus=1,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
    )
    http_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    try:
        run_app(load_blip2, {"model": {"model_id": TINY_RANDOM_OPT}})
        yield f"http://127.0.0.1:{http_port}", metrics_port
    finally:
        stop_serve_handles()
        stop_ray()


def test_application_metrics_reach_the_prometheus_endpoint(ports: tuple[str, int]) -> None:
    url, metrics_port = ports
    for i in range(3):
        body = {"image": IMAGE, "question": f"what is {i}?"}
        assert requests.post(f"{url}/v1/vqa", json=body, timeout=60).status_code == 200
    bad = requests.post(
        f"{url}/v1/vqa", json={"image": {"data": "@@"}, "question": "q"}, timeout=30
    )
    assert bad.status_code == 400

    wanted = [
        "ray_blip2_batch_size_bucket",
        "ray_blip2_queue_wait_seconds_bucket",
        "ray_blip2_generate_seconds_bucket",
        "ray_blip2_generated_tokens_total",
        "ray_blip2_image_bytes_bucket",
        "ray_blip2_image_decode_seconds_bucket",
        "ray_blip2_http_request_seconds_bucket",
        "ray_blip2_http_requests_total",
        "ray_blip2_http_errors_total",
    ]
    exported = ""

    def all_exported() -> bool:
        nonlocal exported
        exported = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        return all(name in exported for name in wanted)

    wait_until(all_exported, 90, "the application metrics to be exported", interval_s=2)
    error_line = next(
        line for line in exported.splitlines() if line.startswith("ray_blip2_http_errors_total")
    )
    assert 'code="invalid_base64"' in error_line and 'endpoint="/v1/vqa"' in error_line
    ok_line = re.search(
        r'ray_blip2_http_requests_total\{[^}]*endpoint="/v1/vqa"[^}]*status="200"', exported
    )
    assert ok_line is not None


def replica_logs(deployment: str) -> str:
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    return "".join(path.read_text() for path in logs.glob(f"replica_*_{deployment}_*.log"))


def test_a_request_id_follows_the_request_through_both_deployments(ports: tuple[str, int]) -> None:
    url, _ = ports
    request_id = f"trace-{time.time_ns()}"
    body = {"image": IMAGE, "question": "where does this go?"}
    response = requests.post(
        f"{url}/v1/vqa", json=body, headers={"x-request-id": request_id}, timeout=60
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    wait_until(
        lambda: (
            request_id in replica_logs("Blip2Ingress") and request_id in replica_logs("Blip2Server")
        ),
        30,
        "the request id in both deployments' logs",
    )
    for line in replica_logs("Blip2Ingress").splitlines():
        if "/v1/vqa" in line and "where does this go" not in line and request_id in line:
            break
    else:
        pytest.fail("the ingress access log line lacks the request id")
