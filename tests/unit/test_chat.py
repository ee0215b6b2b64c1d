"""An OpenAI conversation as one BLIP-2 request, and results as OpenAI bodies (no Ray)."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.config import ModelConfig
from serve_app.contract.errors import InvalidRequestError, ModelNotFoundError
from serve_app.contract.openai import ChatCompletionRequest, ChunkDelta
from serve_app.ingress.chat import Completion, chat_prompt
from serve_app.model.types import ModelResult

MODEL = ModelConfig(model_id="blip2")
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
LONG_URL_IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/" + "a" * 9000}}


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


def chat(*messages: dict[str, Any], **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "blip2", "messages": list(messages), **fields}
    )


def test_an_image_alone_asks_for_a_caption() -> None:
    prompt = chat_prompt(chat({"role": "user", "content": [IMAGE]}), MODEL)
    assert (prompt.task, prompt.text) == ("caption", "")
    assert prompt.image.url == "https://example.com/cat.png"


def test_earlier_turns_become_context_and_system_messages_are_left_out() -> None:
    prompt = chat_prompt(
        chat(
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": [IMAGE, text("What is it?")]},
            {"role": "assistant", "content": "a cat"},
            {"role": "user", "content": "What colour?"},
        ),
        MODEL,
    )
    assert prompt.task == "prompt"
    assert prompt.text == "Question: What is it? Answer: a cat Question: What colour? Answer:"


def test_openai_settings_become_generation_settings() -> None:
    sampled = chat_prompt(
        chat(
            {"role": "user", "content": [IMAGE]},
            temperature=0.7,
            top_p=0.9,
            max_tokens=12,
            stop="\n",
            seed=3,
        ),
        MODEL,
    ).params
    assert (sampled.do_sample, sampled.temperature, sampled.top_p) == (True, 0.7, 0.9)
    assert (sampled.max_new_tokens, sampled.stop, sampled.seed) == (12, ("\n",), 3)
    greedy = chat_prompt(chat({"role": "user", "content": [IMAGE]}, seed=3), MODEL).params
    assert (greedy.do_sample, greedy.seed) == (False, None)


@pytest.mark.parametrize(
    ("messages", "fields", "error", "param"),
    [
        ([{"role": "user", "content": "hi"}], {}, InvalidRequestError, "messages"),
        ([{"role": "user", "content": [IMAGE, IMAGE]}], {}, InvalidRequestError, "messages"),
        ([{"role": "user", "content": [IMAGE]}], {"n": 2}, InvalidRequestError, "n"),
        ([{"role": "user", "content": [IMAGE]}], {"model": "x"}, ModelNotFoundError, "model"),
        (
            [{"role": "user", "content": [IMAGE]}, {"role": "assistant", "content": "a"}],
            {},
            InvalidRequestError,
            "messages",
        ),
        (
            [{"role": "user", "content": [IMAGE]}],
            {"max_tokens": 99999},
            InvalidRequestError,
            "max_tokens",
        ),
        (
            [{"role": "user", "content": [LONG_URL_IMAGE]}],
            {},
            InvalidRequestError,
            "messages",
        ),
    ],
)
def test_what_blip2_cannot_honour_is_refused_naming_the_field(
    messages: list[dict[str, Any]], fields: dict[str, Any], error: type[Exception], param: str
) -> None:
    with pytest.raises(error) as refused:
        chat_prompt(chat(*messages, **fields), MODEL)
    assert getattr(refused.value, "param", None) == param


def test_a_completion_and_its_chunks_share_one_identity() -> None:
    completion = Completion.new("blip2")
    result = ModelResult(text="a cat", prompt_tokens=4, completion_tokens=2)
    whole = completion.whole(result)
    assert (whole.id, whole.model, whole.choices[0].message.content) == (
        completion.id,
        "blip2",
        "a cat",
    )
    assert whole.usage.total_tokens == 6
    delta = completion.chunk(ChunkDelta(content="a"))
    closing = completion.chunk(finish_reason=result)
    usage = completion.chunk(usage=result)
    assert {delta.id, closing.id, usage.id} == {completion.id}
    assert closing.choices[0].finish_reason == "stop" and not usage.choices
    assert usage.usage is not None and usage.usage.completion_tokens == 2
