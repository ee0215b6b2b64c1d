"""The CPU config serves the demo model: right answers over HTTP and through the handle API."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import ray
import requests
from ray import serve

from serve_app.contract.api import CaptionRequest, ImageSource, VQARequest, VQAResponse
from serve_app.demo.task import Example, judge, sample
from serve_app.model.builtin import DEMO_SHAPES
from tests.support.demo import accuracy_bar
from tests.support.serving import deploy_config, fit_for_tests, load_config

HTTP_SEED = 201
HANDLE_SEED = 202


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
