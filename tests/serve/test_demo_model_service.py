"""The CPU config serves the demo model: right answers over HTTP, over gRPC and through the
handle API, the folder-captioning example, run as a separate Ray driver, against the same
application, and batching: batches form under load with answers equal to the sequential ones,
and a change of ``user_config`` retunes the running replica (these run last: they retune it)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import ray
import requests
from ray import serve

from serve_app.contract.api import CaptionRequest, ImageSource, VQARequest, VQAResponse
from serve_app.demo.task import Example, judge, sample
from serve_app.grpc.client import Blip2GrpcClient
from serve_app.model.builtin import DEMO_SHAPES
from tests.support.demo import accuracy_bar
from tests.support.images import image_bytes
from tests.support.serving import (
    APP_NAME,
    REPO_ROOT,
    deploy_config,
    fit_for_tests,
    load_config,
    wait_until,
)

HTTP_SEED = 201
HANDLE_SEED = 202
GRPC_SEED = 203


@pytest.fixture(scope="module")
def url(serve_url: str) -> str:
    config = fit_for_tests(load_config())
    assert config["applications"][0]["args"]["model"]["model_id"] == DEMO_SHAPES
    deploy_config(config)
    return serve_url


def png(example: Example) -> bytes:
    buffer = io.BytesIO()
    example.scene.render().save(buffer, format="PNG")
    return buffer.getvalue()


def ask_over_http(url: str, index: int, example: Example) -> str:
    """Even indices send JSON with base64 data, odd ones a multipart upload."""
    route, key = ("caption", "caption") if example.family == "caption" else ("vqa", "answer")
    fields = {"question": example.question} if example.question else {}
    if index % 2 == 0:
        body: dict[str, Any] = {"image": {"data": base64.b64encode(png(example)).decode()}}
        response = requests.post(f"{url}/v1/{route}", json={**body, **fields}, timeout=120)
    else:
        files = {"image": ("scene.png", png(example), "image/png")}
        response = requests.post(f"{url}/v1/{route}", files=files, data=fields, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == DEMO_SHAPES
    text: str = response.json()[key]
    return text


def test_answers_over_http_are_right(url: str) -> None:
    examples = sample(HTTP_SEED, 40)
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda pair: ask_over_http(url, *pair), enumerate(examples)))
    right = sum(judge(example, text) for example, text in zip(examples, texts, strict=True))
    assert right / len(examples) >= accuracy_bar(), list(zip(examples, texts, strict=True))


def test_answers_over_grpc_are_right(url: str, grpc_target: str) -> None:
    examples = sample(GRPC_SEED, 20)
    with Blip2GrpcClient(grpc_target) as client:

        def ask(example: Example) -> str:
            if example.family == "caption":
                return client.caption(png(example)).caption
            return client.vqa(png(example), example.question).answer

        with ThreadPoolExecutor(4) as pool:
            texts = list(pool.map(ask, examples))
        readme_example = REPO_ROOT / "examples" / "images" / "shapes-1.png"
        answer = client.vqa(readme_example, "How many circles are there?")
    right = sum(judge(example, text) for example, text in zip(examples, texts, strict=True))
    assert right / len(examples) >= accuracy_bar(), list(zip(examples, texts, strict=True))
    assert (answer.answer, answer.model) == ("three", DEMO_SHAPES)


@ray.remote(num_cpus=0)
def ask_through_handle(items: list[tuple[bytes, str]]) -> list[str]:
    """A Ray task asking the running app (an empty question asks for a caption)."""
    handle = serve.get_app_handle("blip2")
    pending = [
        handle.vqa.remote(VQARequest(image=ImageSource.from_bytes(raw), question=question))
        if question
        else handle.caption.remote(CaptionRequest(image=ImageSource.from_bytes(raw)))
        for raw, question in items
    ]
    results = [response.result() for response in pending]
    return [r.answer if isinstance(r, VQAResponse) else r.caption for r in results]


def test_answers_through_the_handle_are_right(url: str) -> None:
    examples = sample(HANDLE_SEED, 20)
    items = [(png(example), example.question) for example in examples]
    texts = ray.get(ask_through_handle.remote(items), timeout=120)
    right = sum(judge(example, text) for example, text in zip(examples, texts, strict=True))
    assert right / len(examples) >= accuracy_bar(), list(zip(examples, texts, strict=True))


def run_example(folder: Path, output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    command = [sys.executable, "examples/caption_folder.py", str(folder), "--output", str(output)]
    return subprocess.run(
        [*command, "--concurrency", "3", *extra],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_example_captions_a_folder_and_reports_failures(url: str, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for index in range(5):
        (folder / f"{index}.png").write_bytes(image_bytes(index))
    (folder / "nested" / "5.jpg").write_bytes(image_bytes(5, "JPEG"))
    (folder / "broken.png").write_bytes(b"this is not an image")
    (folder / "notes.txt").write_text("not an image file at all")
    output = tmp_path / "out.jsonl"

    finished = run_example(folder, output)

    assert finished.returncode == 1, finished.stderr
    assert "FAILED broken.png: invalid_image" in finished.stderr
    records = {r["file"]: r for r in map(json.loads, output.read_text().splitlines())}
    assert set(records) == {
        "0.png",
        "1.png",
        "2.png",
        "3.png",
        "4.png",
        "nested/5.jpg",
        "broken.png",
    }
    assert records["broken.png"]["ok"] is False
    good = [r for name, r in records.items() if name != "broken.png"]
    assert all(
        r["ok"] and isinstance(r["text"], str) and r["usage"]["completion_tokens"] > 0 for r in good
    )


def test_example_answers_a_question(url: str, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(image_bytes(1))
    output = tmp_path / "answers.jsonl"

    finished = run_example(folder, output, "--question", "what is in the picture?")

    assert finished.returncode == 0, finished.stderr
    (record,) = map(json.loads, output.read_text().splitlines())
    assert record["ok"] and record["file"] == "a.png"


BATCHING_CLIENTS = 16


def with_batching(max_batch_size: int, batch_wait_timeout_s: float) -> dict[str, Any]:
    """The CPU config with another ``user_config``: applied live, the replica is not restarted."""
    config = fit_for_tests(load_config())
    deployment = config["applications"][0]["deployments"][0]
    deployment["user_config"] = {
        "max_batch_size": max_batch_size,
        "batch_wait_timeout_s": batch_wait_timeout_s,
    }
    return config


def ask_count(url: str, index: int) -> str:
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
    deploy_config(with_batching(max_batch_size=16, batch_wait_timeout_s=0.5))
    wait_until(lambda: model_card(url)["batch_wait_timeout_s"] == 0.5, 60, "the batch wait")
    sequential = [ask_count(url, i) for i in range(BATCHING_CLIENTS)]
    before = batch_sizes()
    with ThreadPoolExecutor(BATCHING_CLIENTS) as pool:
        concurrent = list(pool.map(lambda i: ask_count(url, i), range(BATCHING_CLIENTS)))
    assert concurrent == sequential
    after = batch_sizes()
    new_batches = {size: after[size] - before.get(size, 0) for size in after}
    assert max(size for size, count in new_batches.items() if count > 0) > 1, new_batches


def test_user_config_change_retunes_the_running_replica(url: str) -> None:
    history_before = batch_sizes()
    assert model_card(url)["max_batch_size"] == 16

    deploy_config(with_batching(max_batch_size=2, batch_wait_timeout_s=0.5))
    wait_until(lambda: model_card(url)["max_batch_size"] == 2, 60, "max_batch_size to become 2")
    assert model_card(url)["batch_wait_timeout_s"] == 0.5

    history = batch_sizes()
    assert all(history.get(size, 0) >= count for size, count in history_before.items()), (
        "the replica restarted: its batch history is gone"
    )
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: ask_count(url, i), range(8)))
    after = batch_sizes()
    grown = [size for size in after if after[size] > history.get(size, 0)]
    assert grown and max(grown) <= 2, after
