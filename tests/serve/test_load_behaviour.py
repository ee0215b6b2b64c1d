"""Behaviour under load: autoscaling from 1 to 2 model replicas and back, 503 on overload,
504 past the deadline.

A ``SlowFakeModel`` stands in for BLIP-2 (the serving layer is under test, not the model) and
the autoscaling settings are test-only fast ones.
"""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from ray import serve

from serve_app.app import build_application
from serve_app.config import AppConfig
from tests.support.fakes import slow_fake_model
from tests.support.images import image_bytes
from tests.support.serving import running_replicas, wait_until

CLIENTS = 12
BODY = {"image": {"data": base64.b64encode(image_bytes(0)).decode()}, "question": "q"}


def deploy_fake(overrides: dict[str, Any]) -> None:
    """Run the app with the slow fake model, one logical GPU per replica and no CPUs."""
    args: dict[str, Any] = {
        "model_deployment": {"num_gpus": 1, "num_cpus": 0},
        "ingress_deployment": {"num_cpus": 0},
    }
    for section, values in overrides.items():
        args.setdefault(section, {}).update(values)
    config = AppConfig.model_validate(args)
    serve.run(build_application(config, model_factory=slow_fake_model), name="blip2")


def test_model_replicas_scale_up_under_load_and_back_down(serve_url: str) -> None:
    deploy_fake(
        {
            "model_deployment": {
                "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.05},
                "autoscaling_config": {
                    "min_replicas": 1,
                    "max_replicas": 2,
                    "target_ongoing_requests": 2,
                    "upscale_delay_s": 1,
                    "downscale_delay_s": 3,
                    "metrics_interval_s": 0.5,
                    "look_back_period_s": 2,
                },
            }
        }
    )
    assert running_replicas("Blip2Server") == 1

    stop = threading.Event()
    statuses: list[int] = []

    def client() -> None:
        for _ in range(2000):
            if stop.is_set():
                return
            response = requests.post(f"{serve_url}/v1/vqa", json=BODY, timeout=60)
            statuses.append(response.status_code)

    with ThreadPoolExecutor(CLIENTS) as pool:
        for _ in range(CLIENTS):
            pool.submit(client)
        try:
            wait_until(lambda: running_replicas("Blip2Server") == 2, 90, "a second replica")
        finally:
            stop.set()
    assert statuses and set(statuses) == {200}

    wait_until(lambda: running_replicas("Blip2Server") == 1, 90, "scale down to one replica")


def test_overload_is_answered_503_with_retry_after(serve_url: str) -> None:
    deploy_fake(
        {
            "model_deployment": {
                "batching": {"max_batch_size": 1, "batch_wait_timeout_s": 0},
                "max_ongoing_requests": 1,
                "max_queued_requests": 1,
            }
        }
    )
    with ThreadPoolExecutor(10) as pool:
        responses = list(
            pool.map(
                lambda _: requests.post(f"{serve_url}/v1/vqa", json=BODY, timeout=60), range(10)
            )
        )
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["Retry-After"] == "1"
    assert rejected.json()["error"]["code"] == "overloaded"


def test_a_request_past_its_deadline_is_answered_504(serve_url: str) -> None:
    deploy_fake({"limits": {"request_timeout_s": 0.1}})
    response = requests.post(f"{serve_url}/v1/vqa", json=BODY, timeout=60)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
