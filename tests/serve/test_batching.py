"""Batching on a real local Serve: batches form under load, answers match the sequential ones,
and a config change of ``user_config`` retunes batching on the running replica."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from ray import serve

from tests.support.images import image_bytes
from tests.support.serving import APP_NAME, deploy_config, fit_for_tests, load_config, wait_until

CONCURRENCY = 16


def configured(max_batch_size: int, batch_wait_timeout_s: float) -> dict[str, Any]:
    config = fit_for_tests(load_config())
    deployment = config["applications"][0]["deployments"][0]
    deployment["user_config"] = {
        "max_batch_size": max_batch_size,
        "batch_wait_timeout_s": batch_wait_timeout_s,
    }
    return config


@pytest.fixture(scope="module")
def url(serve_url: str) -> str:
    deploy_config(configured(max_batch_size=16, batch_wait_timeout_s=0.5))
    return serve_url


def ask(url: str, index: int) -> str:
    body = {
        "image": {"data": base64.b64encode(image_bytes(index % 5)).decode()},
        "question": f"how many things are there {'really ' * (index % 4)}?",
    }
    response = requests.post(f"{url}/v1/vqa", json=body, timeout=120)
    assert response.status_code == 200, response.text
    answer: str = response.json()["answer"]
    return answer


def batch_sizes() -> dict[int, int]:
    server = serve.get_deployment_handle("Blip2Server", APP_NAME)
    counts: dict[int, int] = server.batch_size_counts.remote().result()
    return counts


def model_card(url: str) -> dict[str, Any]:
    card: dict[str, Any] = requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]
    return card


def test_concurrent_requests_are_batched_and_match_sequential_answers(url: str) -> None:
    sequential = [ask(url, i) for i in range(CONCURRENCY)]
    before = batch_sizes()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        concurrent = list(pool.map(lambda i: ask(url, i), range(CONCURRENCY)))
    assert concurrent == sequential
    after = batch_sizes()
    new_batches = {size: after[size] - before.get(size, 0) for size in after}
    assert max(size for size, count in new_batches.items() if count > 0) > 1, new_batches


def test_user_config_change_retunes_the_running_replica(url: str) -> None:
    history_before = batch_sizes()
    assert model_card(url)["max_batch_size"] == 16

    deploy_config(configured(max_batch_size=2, batch_wait_timeout_s=0.5))
    wait_until(lambda: model_card(url)["max_batch_size"] == 2, 60, "max_batch_size to become 2")
    assert model_card(url)["batch_wait_timeout_s"] == 0.5

    history = batch_sizes()
    assert all(history.get(size, 0) >= count for size, count in history_before.items()), (
        "the replica restarted: its batch history is gone"
    )
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: ask(url, i), range(8)))
    after = batch_sizes()
    grown = [size for size in after if after[size] > history.get(size, 0)]
    assert grown and max(grown) <= 2, after
