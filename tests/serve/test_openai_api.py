"""The OpenAI-compatible API, driven by the official ``openai`` client (sync and async).

The model is the real tiny BLIP-2 with a fake pace (each streamed step waits a little), so
streamed text visibly arrives over time; answers are checked against the same model
in-process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import requests
from ray import serve

from serve_app.config import DEFAULT_VQA_TEMPLATE, TINY_RANDOM_OPT, ModelConfig
from serve_app.contract.api import GenerationParams
from serve_app.model.blip2 import Blip2Model
from serve_app.model.types import ModelRequest, Task
from tests.support.fakes import paced_blip2
from tests.support.http_server import StaticServer, static_server
from tests.support.images import image_bytes, make_image
from tests.support.serving import APP_NAME, run_app

STEP_SECONDS = 0.05
MODEL = TINY_RANDOM_OPT


@pytest.fixture(scope="module")
def images() -> Iterator[StaticServer]:
    with static_server({"/2.png": ("image/png", image_bytes(2))}) as server:
        yield server


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("record") / "results.jsonl"


@pytest.fixture(scope="module")
def url(serve_url: str, record: Path) -> str:
    run_app(
        paced_blip2(STEP_SECONDS, record),
        {
            "model": {"model_id": MODEL, "default_max_new_tokens": 12},
            "limits": {"allow_private_urls": True},
        },
        batching={"max_batch_size": 8, "batch_wait_timeout_s": 0.3},
    )
    return serve_url


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(url: str) -> Blip2Model:
    return Blip2Model.load(ModelConfig(model_id=MODEL))


def expected(model: Blip2Model, index: int, task: Task, text: str, **params: Any) -> str:
    request = ModelRequest(
        task=task,
        text=text,
        image=np.asarray(make_image(index)),
        params=GenerationParams(max_new_tokens=params.pop("max_new_tokens", 12), **params),
    )
    result = model.generate([request])[0]
    assert not isinstance(result, Exception)
    return result.text


def data_uri(index: int) -> str:
    return "data:image/png;base64," + base64.b64encode(image_bytes(index)).decode()


def user(text: str | None, image_url: str | None = None) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text is not None:
        content.append({"type": "text", "text": text})
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    return {"role": "user", "content": content}


def test_a_question_about_an_image_by_data_uri(
    client: openai.OpenAI, reference: Blip2Model
) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[user("What is this?", data_uri(1))],
        temperature=0,  # type: ignore[list-item]
    )
    prompt = DEFAULT_VQA_TEMPLATE.format(question="What is this?")
    assert completion.choices[0].message.content == expected(reference, 1, "prompt", prompt)
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL and completion.choices[0].finish_reason in {"stop", "length"}
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_an_image_by_url_and_a_system_message_that_is_left_out(
    client: openai.OpenAI, images: StaticServer, reference: Blip2Model
) -> None:
    messages: Any = [
        {"role": "system", "content": "You are a helpful assistant."},
        user("Describe it.", f"{images.base_url}/2.png"),
    ]
    completion = client.chat.completions.create(model=MODEL, messages=messages)
    prompt = DEFAULT_VQA_TEMPLATE.format(question="Describe it.")
    assert completion.choices[0].message.content == expected(reference, 2, "prompt", prompt)
    assert images.hits["/2.png"] == 1


def test_a_follow_up_question_sees_the_earlier_turn(
    client: openai.OpenAI, reference: Blip2Model
) -> None:
    messages: Any = [
        user("What color is it?", data_uri(3)),
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "And the shape?"},
    ]
    completion = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    prompt = "Question: What color is it? Answer: red Question: And the shape? Answer:"
    assert completion.choices[0].message.content == expected(
        reference, 3, "prompt", prompt, max_new_tokens=8
    )


def test_an_image_alone_is_captioned(client: openai.OpenAI, reference: Blip2Model) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=[user(None, data_uri(4))])  # type: ignore[list-item]
    assert completion.choices[0].message.content == expected(reference, 4, "caption", "")


def test_streamed_text_arrives_over_time_and_adds_up(client: openai.OpenAI) -> None:
    messages: Any = [user("What is in the picture?", data_uri(5))]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
    arrivals: list[tuple[float, Any]] = []
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        arrivals.append((time.monotonic(), chunk))
    chunks = [chunk for _, chunk in arrivals]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    content_times = [t for t, c in arrivals if c.choices and c.choices[0].delta.content]
    assert len(content_times) > 2
    assert content_times[-1] - content_times[0] > STEP_SECONDS * (len(content_times) - 2)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == (
        whole.choices[0].finish_reason
    )
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def batch_sizes() -> dict[int, int]:
    server = serve.get_deployment_handle("Blip2Server", APP_NAME)
    counts: dict[int, int] = server.batch_size_counts.remote().result()
    return counts


def test_concurrent_streams_share_a_batch_and_match_their_whole_answers(url: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    questions = [f"What is thing {i}?" for i in range(4)]

    async def whole(index: int) -> str:
        messages: Any = [user(questions[index], data_uri(index))]
        completion = await client.chat.completions.create(model=MODEL, messages=messages)
        return completion.choices[0].message.content or ""

    async def streamed(index: int) -> str:
        messages: Any = [user(questions[index], data_uri(index))]
        stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def run() -> tuple[list[str], list[str]]:
        wholes = [await whole(i) for i in range(4)]
        streams = await asyncio.gather(*(streamed(i) for i in range(4)))
        await client.close()
        return wholes, list(streams)

    before = batch_sizes()
    wholes, streams = asyncio.run(run())
    assert streams == wholes
    after = batch_sizes()
    assert max(size for size in after if after[size] > before.get(size, 0)) > 1


def test_a_client_that_leaves_mid_stream_stops_its_generation(url: str, record: Path) -> None:
    body = {
        "model": MODEL,
        "messages": [user("Please keep talking", data_uri(6))],
        "max_tokens": 60,
        "stream": True,
    }
    with requests.post(
        f"{url}/v1/chat/completions", json=body, stream=True, timeout=60
    ) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line).startswith(b"data: ")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = [json.loads(line) for line in record.read_text().splitlines()]
        mine = [r for r in done if "Please keep talking" in r["text"]]
        if mine:
            break
        time.sleep(0.2)
    assert mine and mine[0]["completion_tokens"] < 30, mine


ERRORS: dict[str, tuple[dict[str, Any], type[openai.APIStatusError], str]] = {
    "two images": (
        {"messages": [user("q", data_uri(0)), user("and this?", data_uri(1))]},
        openai.BadRequestError,
        "invalid_request",
    ),
    "no image": ({"messages": [user("q")]}, openai.BadRequestError, "invalid_request"),
    "n above one": (
        {"messages": [user("q", data_uri(0))], "n": 2},
        openai.BadRequestError,
        "invalid_request",
    ),
    "unknown model": (
        {"messages": [user("q", data_uri(0))], "model": "gpt-4o"},
        openai.NotFoundError,
        "model_not_found",
    ),
    "bad data URI": (
        {"messages": [user("q", "data:image/png;base64,@@@")]},
        openai.BadRequestError,
        "invalid_base64",
    ),
    "last turn not a user": (
        {"messages": [user("q", data_uri(0)), {"role": "assistant", "content": "a"}]},
        openai.BadRequestError,
        "invalid_request",
    ),
    "max_tokens over the cap": (
        {"messages": [user("q", data_uri(0))], "max_tokens": 100_000},
        openai.BadRequestError,
        "invalid_request",
    ),
}


@pytest.mark.parametrize(("extra", "error", "code"), ERRORS.values(), ids=ERRORS.keys())
def test_errors_come_in_the_openai_shape(
    client: openai.OpenAI, extra: dict[str, Any], error: type[openai.APIStatusError], code: str
) -> None:
    arguments = {"model": MODEL, **extra}
    with pytest.raises(error) as raised:
        client.chat.completions.create(**arguments)
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["code"] == code and body["type"] == "invalid_request_error" and body["message"]


def test_models_are_listed_in_the_openai_form(client: openai.OpenAI) -> None:
    (model,) = client.models.list().data
    assert model.id == MODEL and model.object == "model" and model.created > 0
