"""Faults: a replica dying mid-request, a replica whose batches keep failing, and errors that
never leak internals. A ``FaultyFakeModel`` misbehaves on command (the model is not under test).
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import requests
from ray import serve

from tests.support.fakes import broken_gpu_blip2, faulty_fake_model
from tests.support.grpc_calls import call_vqa, vqa_request
from tests.support.images import image_bytes
from tests.support.serving import APP_NAME, run_app, running_replicas, wait_until

IMAGE = {"data": base64.b64encode(image_bytes(0)).decode()}


def ask(url: str, question: str) -> requests.Response:
    return requests.post(f"{url}/v1/vqa", json={"image": IMAGE, "question": question}, timeout=60)


def run_faulty(replicas: int, **model_deployment: Any) -> None:
    run_app(
        faulty_fake_model,
        {
            "model_deployment": {
                "autoscaling_config": {"min_replicas": replicas, "max_replicas": replicas},
                **model_deployment,
            }
        },
        batching={"max_batch_size": 4, "batch_wait_timeout_s": 0.05},
    )


def test_requests_on_a_replica_that_dies_are_retried_on_another(
    serve_url: str, tmp_path: Path
) -> None:
    run_faulty(replicas=2)
    marker = tmp_path / "crashed"
    with ThreadPoolExecutor(8) as pool:
        others = [pool.submit(ask, serve_url, f"bystander {i}") for i in range(7)]
        crashing = pool.submit(ask, serve_url, f"crash-once:{marker}")
        responses = [crashing.result(), *(f.result() for f in others)]
    assert marker.exists(), "no replica crashed: the test did not exercise a death"
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    assert responses[0].json()["answer"] == f"fake:crash-once:{marker}"
    assert [r.json()["answer"] for r in responses[1:]] == [f"fake:bystander {i}" for i in range(7)]
    wait_until(lambda: running_replicas("Blip2Server") == 2, 60, "the dead replica's replacement")
    assert ask(serve_url, "after").status_code == 200


def test_a_request_that_kills_every_replica_gets_503_not_a_hang(
    serve_url: str, grpc_target: str
) -> None:
    run_faulty(replicas=2)
    with ThreadPoolExecutor(2) as pool:
        over_grpc = pool.submit(call_vqa, grpc_target, vqa_request("crash-always"))
        response = ask(serve_url, "crash-always")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "model_unavailable"
    outcome = over_grpc.result()
    assert outcome.code == grpc.StatusCode.UNAVAILABLE
    assert outcome.trailing == {"error-code": "model_unavailable", "retry-after-ms": "1000"}
    assert outcome.request_id  # Serve's, as over HTTP: the call can be found in the logs
    wait_until(lambda: running_replicas("Blip2Server") == 2, 90, "replicas to be replaced")
    assert ask(serve_url, "after").status_code == 200


def batch_sizes() -> dict[int, int]:
    server = serve.get_deployment_handle("Blip2Server", APP_NAME)
    counts: dict[int, int] = server.batch_size_counts.remote().result()
    return counts


def test_a_replica_whose_batches_keep_failing_is_replaced(serve_url: str, grpc_target: str) -> None:
    run_faulty(replicas=1, health_check_period_s=0.5, health_check_timeout_s=5)
    for _ in range(3):
        response = ask(serve_url, "break-batch")
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["code"] == "generation_failed"
        assert "0xdeadbeef" not in response.text and "/opt/secret" not in response.text
        assert "Traceback" not in response.text
    outcome = call_vqa(grpc_target, vqa_request("break-batch"))
    assert (outcome.code, outcome.trailing) == (
        grpc.StatusCode.INTERNAL,
        {"error-code": "generation_failed"},
    )
    assert "0xdeadbeef" not in outcome.details and "Traceback" not in outcome.details
    assert sum(batch_sizes().values()) >= 3
    # The failing replica reports itself unhealthy and Serve starts a fresh one.
    wait_until(lambda: batch_sizes() == {}, 60, "the unhealthy replica to be replaced")
    assert ask(serve_url, "healthy again").json()["answer"] == "fake:healthy again"


def test_a_replica_whose_accelerator_broke_is_replaced(serve_url: str) -> None:
    """The real model class on an accelerator that fails every request after a fault: no
    batch fails as a whole, yet the replica reports itself unhealthy and is replaced."""
    run_app(
        broken_gpu_blip2,
        {
            "model": {"model_id": "builtin:shapes-blip2"},
            "model_deployment": {"health_check_period_s": 0.5, "health_check_timeout_s": 5},
        },
        batching={"max_batch_size": 4, "batch_wait_timeout_s": 0.05},
    )
    assert ask(serve_url, "How many circles are there?").status_code == 200
    for question in ("gpu-fault", "How many circles are there?", "What color is it?"):
        response = ask(serve_url, question)
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "generation_failed"
        assert "CUDA" not in response.text
    wait_until(lambda: batch_sizes() == {}, 60, "the broken replica to be replaced")
    assert ask(serve_url, "How many circles are there?").status_code == 200
