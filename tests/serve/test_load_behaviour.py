"""Behaviour under load: autoscaling from 1 to 2 model replicas and back, 503 on overload,
504 past the deadline.

A ``SlowFakeModel`` stands in for BLIP-2 (the serving layer is under test, not the model) and
the autoscaling settings are test-only fast ones.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import requests
from ray import serve

from tests.support.fakes import recording_fake_model, slow_fake_model
from tests.support.grpc_calls import call_vqa, vqa_request
from tests.support.images import image_bytes
from tests.support.serving import (
    APP_NAME,
    fast_autoscaling,
    run_app,
    running_replicas,
    wait_until,
)

CLIENTS = 12
BODY = {"image": {"data": base64.b64encode(image_bytes(0)).decode()}, "question": "q"}


def test_model_replicas_scale_up_under_load_and_back_down(serve_url: str) -> None:
    run_app(
        slow_fake_model,
        {
            "model_deployment": {
                "autoscaling_config": fast_autoscaling(),
            }
        },
        batching={"max_batch_size": 4, "batch_wait_timeout_s": 0.05},
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


def test_requests_about_one_image_reach_one_replica(serve_url: str, tmp_path: Path) -> None:
    """Two model replicas: every question about an image goes to the replica that has its
    features, and the images spread over both."""
    fixed = {"min_replicas": 2, "max_replicas": 2}
    run_app(recording_fake_model(tmp_path), {"model_deployment": {"autoscaling_config": fixed}})
    wait_until(lambda: running_replicas("Blip2Server") == 2, 60, "two model replicas")
    bodies = [
        {"image": {"data": base64.b64encode(image_bytes(i)).decode()}, "question": "q"}
        for i in range(16)
    ]
    for _ in range(3):
        for body in bodies:
            assert requests.post(f"{serve_url}/v1/vqa", json=body, timeout=60).status_code == 200
    replicas_by_image: dict[str, set[str]] = {}
    for record in tmp_path.glob("*.txt"):
        for key in record.read_text().split():
            replicas_by_image.setdefault(key, set()).add(record.stem)
    assert len(replicas_by_image) == 16
    assert all(len(replicas) == 1 for replicas in replicas_by_image.values()), replicas_by_image
    assert len(set().union(*replicas_by_image.values())) == 2


def post_vqa(serve_url: str) -> requests.Response:
    return requests.post(f"{serve_url}/v1/vqa", json=BODY, timeout=60)


def generated_requests() -> int:
    """How many requests the model replica has generated for (summed over its batches)."""
    server = serve.get_deployment_handle("Blip2Server", APP_NAME)
    counts: dict[int, int] = server.batch_size_counts.remote().result()
    return sum(size * count for size, count in counts.items())


def test_rows_run_full_under_sustained_load_even_with_no_batch_wait(serve_url: str) -> None:
    """The decoding loop admits what waits into every free row at each step: with
    ``batch_wait_timeout_s: 0`` ``@serve.batch`` alone would run a train of single requests."""
    run_app(
        slow_fake_model,
        {"model": {"max_rows": 4}},
        batching={"max_batch_size": 4, "batch_wait_timeout_s": 0},
    )
    server = serve.get_deployment_handle("Blip2Server", APP_NAME)
    before: dict[int, int] = server.batch_size_counts.remote().result()
    with ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(lambda _: post_vqa(serve_url), range(5 * CLIENTS)))
    assert {response.status_code for response in responses} == {200}
    after: dict[int, int] = server.batch_size_counts.remote().result()
    new_batches = {size: after[size] - before.get(size, 0) for size in after}
    served = sum(size * count for size, count in new_batches.items())
    assert served == len(responses)
    in_full_batches = 4 * new_batches.get(4, 0)
    assert in_full_batches >= 0.75 * served, new_batches
    # Each response names the rows it ran beside (the fake's rows last one step each): a step
    # of n rows gives n answers saying n.
    reported = Counter(response.json()["batch_size"] for response in responses)
    assert reported == {size: size * count for size, count in new_batches.items() if count}


def test_concurrent_requests_reach_the_model_in_grouped_calls(serve_url: str) -> None:
    """The ingress sends requests that wait for the model together: far fewer calls than
    requests, every request answered once."""
    run_app(
        slow_fake_model,
        {"model": {"max_rows": 4}},
        batching={"max_batch_size": 4, "batch_wait_timeout_s": 0},
    )
    server = serve.get_deployment_handle("Blip2Server", APP_NAME)
    before: dict[int, int] = server.group_size_counts.remote().result()
    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = list(pool.map(lambda _: post_vqa(serve_url).status_code, range(4 * CLIENTS)))
    assert set(statuses) == {200}
    after: dict[int, int] = server.group_size_counts.remote().result()
    groups = {size: after[size] - before.get(size, 0) for size in after}
    calls = sum(groups.values())
    assert sum(size * count for size, count in groups.items()) == len(statuses)
    assert max(groups) == 4 and calls <= len(statuses) / 2, groups


def test_a_request_that_finds_the_model_idle_does_not_wait_for_a_batch(serve_url: str) -> None:
    run_app(slow_fake_model, {}, batching={"max_batch_size": 4, "batch_wait_timeout_s": 5})
    post_vqa(serve_url)  # the ingress learns the model's input size once
    started = time.monotonic()
    assert post_vqa(serve_url).status_code == 200
    assert time.monotonic() - started < 2.5  # a 0.3 s batch, not a 5 s batch wait


def test_overload_is_answered_503_with_retry_after_never_a_hang(
    serve_url: str, grpc_target: str
) -> None:
    run_app(
        slow_fake_model,
        {
            "model_deployment": {
                "max_ongoing_requests": 2,
                "max_queued_requests": 4,
            },
            "limits": {"max_queue_wait_s": None},  # Serve's queue cap, the last line, alone
        },
        batching={"max_batch_size": 2, "batch_wait_timeout_s": 0},
    )
    requests_sent = 60
    with ThreadPoolExecutor(40) as pool:
        over_http, over_grpc = [], []
        for _ in range(requests_sent // 3):  # two over HTTP, one over gRPC, and again
            for _ in range(2):
                post = pool.submit(requests.post, f"{serve_url}/v1/vqa", json=BODY, timeout=60)
                over_http.append(post)
            over_grpc.append(pool.submit(call_vqa, grpc_target, vqa_request("q")))
        responses = [future.result() for future in over_http]
        outcomes = [future.result() for future in over_grpc]
    statuses = [r.status_code for r in responses]
    assert len(statuses) == requests_sent * 2 // 3
    assert set(statuses) == {200, 503}, statuses
    for rejected in (r for r in responses if r.status_code == 503):
        assert rejected.headers["Retry-After"] == "1"
        assert rejected.json()["error"]["code"] == "overloaded"
    codes = {outcome.code for outcome in outcomes}
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, outcomes
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, outcomes
    for refused in (o for o in outcomes if o.code != grpc.StatusCode.OK):
        assert refused.trailing == {"error-code": "overloaded", "retry-after-ms": "1000"}


def test_sustained_load_past_the_wait_budget_is_shed_with_spaced_retry_times(
    serve_url: str,
) -> None:
    run_app(
        slow_fake_model,
        {"model": {"max_rows": 4}, "limits": {"max_queue_wait_s": 0.5}},
        batching={"max_batch_size": 4, "batch_wait_timeout_s": 0},
    )
    before = generated_requests()
    for _ in range(4):  # the ingress measures the model: 4 requests per 0.3 s step
        assert post_vqa(serve_url).status_code == 200
    # 30 clients, two requests each in a row: the first wave is admitted whole (no queue yet)
    # and takes over 2 s to serve, so most second ones find a queue of seconds and are refused.
    with ThreadPoolExecutor(30) as pool:
        waves = list(pool.map(lambda _: [post_vqa(serve_url) for _ in range(2)], range(30)))
    responses = [response for wave in waves for response in wave]
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    shed = [r for r in responses if r.status_code == 503]
    assert len(shed) >= 15, statuses
    assert {r.json()["error"]["code"] for r in shed} == {"overloaded"}
    turns = sorted(int(r.headers["retry-after-ms"]) for r in shed)
    # ~13 requests a second: the refused callers are told to come back spread over seconds.
    assert turns[-1] - turns[0] >= 1000, turns
    for refused in shed:  # whole seconds, rounded up
        assert int(refused.headers["Retry-After"]) * 1000 >= int(refused.headers["retry-after-ms"])
    # Refused requests cost the model nothing.
    assert generated_requests() - before == 4 + statuses.count(200)


def test_a_redeploy_under_load_answers_every_request_already_accepted(serve_url: str) -> None:
    """Changing the args replaces every replica; the old ones finish their work first."""
    batching = {"max_batch_size": 1, "batch_wait_timeout_s": 0}
    run_app(slow_fake_model, {}, batching=batching)
    with ThreadPoolExecutor(12) as pool:
        pending = [pool.submit(post_vqa, serve_url) for _ in range(12)]  # 3.6 s of model work
        wait_until(lambda: generated_requests() >= 1, 30, "the first request to be served")
        run_app(slow_fake_model, {"limits": {"max_prompt_chars": 1999}}, batching=batching)
        statuses = [future.result().status_code for future in pending]
    assert statuses == [200] * 12


def test_requests_past_their_deadline_get_504_and_their_queued_work_is_dropped(
    serve_url: str, grpc_target: str
) -> None:
    run_app(
        slow_fake_model,
        {"model": {"max_rows": 1}, "limits": {"request_timeout_s": 0.5}},
        batching={"max_batch_size": 1, "batch_wait_timeout_s": 0},
    )
    before = generated_requests()
    with ThreadPoolExecutor(9) as pool:
        over_http = [
            pool.submit(requests.post, f"{serve_url}/v1/vqa", json=BODY, timeout=60)
            for _ in range(6)
        ]
        over_grpc = [pool.submit(call_vqa, grpc_target, vqa_request("q")) for _ in range(3)]
        responses = [future.result() for future in over_http]
        outcomes = [future.result() for future in over_grpc]
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 504} and 504 in statuses, statuses
    timed_out = next(r for r in responses if r.status_code == 504)
    assert timed_out.json()["error"]["code"] == "timeout"
    codes = [outcome.code for outcome in outcomes]
    assert grpc.StatusCode.DEADLINE_EXCEEDED in codes, outcomes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}, outcomes
    late = next(o for o in outcomes if o.code == grpc.StatusCode.DEADLINE_EXCEEDED)
    assert late.trailing == {"error-code": "timeout"}
    time.sleep(2)  # give any work that was not cancelled time to show up
    assert generated_requests() - before < 9


def test_a_client_that_disconnects_cancels_its_queued_work(serve_url: str) -> None:
    run_app(
        slow_fake_model,
        {"model": {"max_rows": 1}},
        batching={"max_batch_size": 1, "batch_wait_timeout_s": 0},
    )
    before = generated_requests()

    def impatient(_: int) -> None:
        with contextlib.suppress(requests.Timeout):
            requests.post(f"{serve_url}/v1/vqa", json=BODY, timeout=0.4)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(impatient, range(8)))
    time.sleep(3)  # 8 requests would take 2.4 s of model time if none were cancelled
    assert generated_requests() - before <= 4
