"""The Server-Sent Events of a streamed chat completion (no Ray, a fake model stream)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from serve_app.contract.errors import ModelOverloadedError
from serve_app.http.sse import STREAM_END, chat_events
from serve_app.ingress.chat import Completion
from serve_app.ingress.text_stream import ChatStream, TextStream
from serve_app.model.types import ModelResult
from tests.support.fakes import FakeModelStream

RESULT = ModelResult(text="a red cat", prompt_tokens=4, completion_tokens=3)


class FailingStream(FakeModelStream):
    """A fake stream whose model replica is overloaded after the first delta."""

    async def __anext__(self) -> str | ModelResult:
        raise ModelOverloadedError("the model is overloaded; retry shortly")


def events(stream: FakeModelStream, first: str | ModelResult, include_usage: bool) -> list[str]:
    async def collect() -> list[str]:
        deadline = asyncio.get_running_loop().time() + 5
        text = TextStream(stream, first, deadline, timeout_s=5)
        started = ChatStream(Completion.new("blip2"), text, include_usage)
        return [event async for event in chat_events(started)]

    return asyncio.run(collect())


def payloads(sent: list[str]) -> list[dict[str, Any]]:
    assert sent[-1] == STREAM_END
    assert all(event.startswith("data: ") and event.endswith("\n\n") for event in sent)
    return [json.loads(event.removeprefix("data: ")) for event in sent[:-1]]


def test_deltas_add_up_to_the_text_then_the_finish_reason_and_usage() -> None:
    stream = FakeModelStream(["red ", "cat", RESULT])
    chunks = payloads(events(stream, "a ", include_usage=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks[:-1])
    assert text.strip() == RESULT.text
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 7
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert not stream.cancelled


def test_a_failure_after_the_first_byte_is_an_error_event_and_the_stream_is_cancelled() -> None:
    stream = FailingStream([])
    chunks = payloads(events(stream, "a ", include_usage=False))
    assert chunks[-1]["error"]["code"] == "overloaded"
    assert stream.cancelled
