"""Autoscaling of the model deployment from 1 to 2 replicas under load and back down.

A ``SlowFakeModel`` stands in for BLIP-2 (autoscaling is under test, not the model) and the
autoscaling settings are test-only fast ones.
"""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import requests
from ray import serve

from serve_app.app import build_application
from serve_app.config import AppConfig
from tests.support.fakes import slow_fake_model
from tests.support.images import image_bytes
from tests.support.serving import running_replicas, wait_until

CLIENTS = 12


def test_model_replicas_scale_up_under_load_and_back_down(serve_url: str) -> None:
    config = AppConfig.model_validate(
        {
            "model_deployment": {
                "num_gpus": 1,
                "num_cpus": 0,
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
            },
            "ingress_deployment": {"num_cpus": 0},
        }
    )
    serve.run(build_application(config, model_factory=slow_fake_model), name="blip2")
    assert running_replicas("Blip2Server") == 1

    body = {"image": {"data": base64.b64encode(image_bytes(0)).decode()}, "question": "q"}
    stop = threading.Event()
    statuses: list[int] = []

    def client() -> None:
        for _ in range(2000):
            if stop.is_set():
                return
            response = requests.post(f"{serve_url}/v1/vqa", json=body, timeout=60)
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
