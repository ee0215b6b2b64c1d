"""The ingress's typed handlers, without Ray: a fake model deployment stands behind them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serve_app.config import LimitsConfig, ModelConfig
from serve_app.contract.api import (
    CaptionRequest,
    GenerateRequest,
    GenerationParams,
    ImageSource,
    VQARequest,
)
from serve_app.contract.errors import (
    InvalidImageError,
    InvalidRequestError,
    ModelUnavailableError,
    RequestTimeoutError,
)
from serve_app.contract.openai import ChatCompletionRequest
from serve_app.ingress import model_calls as model_calls_module
from serve_app.ingress.handlers import Blip2Handlers
from tests.support.fakes import FakeModelBackend
from tests.support.images import image_bytes

MODEL = ModelConfig(
    model_id="fake", default_max_new_tokens=8, max_new_tokens_limit=16, max_num_beams=2
)


def png() -> ImageSource:
    return ImageSource.from_bytes(image_bytes(0))


def test_a_question_reaches_the_model_decoded_resized_and_typed() -> None:
    model = FakeModelBackend()
    handlers = Blip2Handlers(model, MODEL, LimitsConfig())
    answer = asyncio.run(handlers.vqa(VQARequest(image=png(), question="How many?")))
    assert answer.answer == "vqa:How many?"
    assert (answer.model, answer.usage.total_tokens) == ("fake", 5)
    (sent,) = model.requests
    assert sent.image.shape == (16, 16, 3) and sent.image.dtype.name == "uint8"


def test_every_form_of_image_gives_the_model_the_same_pixels() -> None:
    model = FakeModelBackend()
    handlers = Blip2Handlers(model, MODEL, LimitsConfig())
    raw = image_bytes(0)
    for image in (ImageSource.from_bytes(raw), ImageSource.from_upload(raw, "image/png")):
        asyncio.run(handlers.caption(CaptionRequest(image=image)))
    first, second = model.requests
    assert (first.image == second.image).all()


def test_the_model_is_asked_its_image_input_once() -> None:
    model = FakeModelBackend()
    handlers = Blip2Handlers(model, MODEL, LimitsConfig())

    async def three() -> None:
        for _ in range(3):
            await handlers.generate(GenerateRequest(image=png(), prompt="a photo of"))

    asyncio.run(three())
    assert model.described == 1 and len(model.requests) == 3


@pytest.mark.parametrize(
    ("params", "param"),
    [({"max_new_tokens": 17}, "params.max_new_tokens"), ({"num_beams": 3}, "params.num_beams")],
)
def test_settings_over_the_caps_are_refused_before_the_model(
    params: dict[str, Any], param: str
) -> None:
    model = FakeModelBackend()
    handlers = Blip2Handlers(model, MODEL, LimitsConfig())
    request = VQARequest(image=png(), question="q", params=GenerationParams.model_validate(params))
    with pytest.raises(InvalidRequestError) as refused:
        asyncio.run(handlers.vqa(request))
    assert refused.value.param == param
    assert not model.requests


def test_a_long_question_and_a_bad_image_are_refused() -> None:
    model = FakeModelBackend()
    handlers = Blip2Handlers(model, MODEL, LimitsConfig(max_prompt_chars=5))
    with pytest.raises(InvalidRequestError, match="longer than 5 characters"):
        asyncio.run(handlers.vqa(VQARequest(image=png(), question="too long")))
    with pytest.raises(InvalidImageError):
        bad = ImageSource.from_upload(b"not an image", "image/png")
        asyncio.run(handlers.vqa(VQARequest(image=bad, question="q")))
    assert not model.requests


def test_a_request_past_its_deadline_is_a_timeout() -> None:
    handlers = Blip2Handlers(
        FakeModelBackend(seconds=1.0), MODEL, LimitsConfig(request_timeout_s=0.05)
    )
    with pytest.raises(RequestTimeoutError):
        asyncio.run(handlers.vqa(VQARequest(image=png(), question="q")))


def test_readiness_fails_when_no_replica_answers_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(model_calls_module, "READY_TIMEOUT_S", 0.05)
    slow = Blip2Handlers(FakeModelBackend(seconds=1.0), MODEL, LimitsConfig())
    with pytest.raises(ModelUnavailableError):
        asyncio.run(slow.ready())
    fast = Blip2Handlers(FakeModelBackend(), MODEL, LimitsConfig())
    assert asyncio.run(fast.ready()).status == "ok"


def test_the_model_card_joins_config_limits_and_live_batching() -> None:
    handlers = Blip2Handlers(FakeModelBackend(), MODEL, LimitsConfig(max_prompt_chars=99))
    (card,) = asyncio.run(handlers.models()).data
    assert (card.id, card.source, card.family, card.max_batch_size) == ("fake", "fake", "opt", 8)
    assert card.limits is not None
    assert (card.limits.max_new_tokens_limit, card.limits.max_prompt_chars) == (16, 99)


def chat(**fields: Any) -> ChatCompletionRequest:
    content = [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": png().data}},
    ]
    return ChatCompletionRequest.model_validate(
        {"model": "fake", "messages": [{"role": "user", "content": content}], **fields}
    )


def test_a_chat_completion_asks_the_vqa_prompt() -> None:
    model = FakeModelBackend()
    handlers = Blip2Handlers(model, MODEL, LimitsConfig())
    completion = asyncio.run(handlers.chat_completions(chat()))
    assert completion.choices[0].message.content == "prompt:Question: What is it? Answer:"
    assert completion.usage.total_tokens == 5
    with pytest.raises(InvalidRequestError):
        asyncio.run(handlers.chat_completions(chat(stream=True)))


def test_a_chat_stream_starts_with_its_first_event() -> None:
    model = FakeModelBackend()
    handlers = Blip2Handlers(model, MODEL, LimitsConfig())
    started = asyncio.run(handlers.chat_stream(chat(stream=True)))
    assert started.text.first == "two "
    assert model.requests[0].stream
    assert not started.include_usage


def test_a_chat_stream_whose_deadline_passes_before_its_first_token_is_a_timeout() -> None:
    handlers = Blip2Handlers(
        FakeModelBackend(seconds=1.0), MODEL, LimitsConfig(request_timeout_s=0.05)
    )
    with pytest.raises(RequestTimeoutError):
        asyncio.run(handlers.chat_stream(chat(stream=True)))
