"""Server-Sent Events of a streamed chat completion, fed by the model's token stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing

from serve_app.contract.errors import ServeAppError
from serve_app.contract.openai import ChatCompletionChunk, ChunkDelta
from serve_app.http.errors import openai_error
from serve_app.ingress.text_stream import ChatStream

STREAM_END = "data: [DONE]\n\n"


def event(chunk: ChatCompletionChunk) -> str:
    """One chunk as a Server-Sent Event."""
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"


def error_event(error: ServeAppError) -> str:
    """An error event inside a stream that has already started."""
    _, body = openai_error(error)
    return f"data: {json.dumps(body.model_dump())}\n\n"


async def chat_events(started: ChatStream) -> AsyncIterator[str]:
    """The SSE body: the role, each text delta as it arrives, the finish reason, optionally the
    usage, then ``[DONE]``. A failure after the first byte is sent as an error event.

    When the client goes away, this generator is closed and the model's share of work is
    cancelled.
    """
    completion = started.completion
    try:
        yield event(completion.chunk(ChunkDelta(role="assistant", content="")))
        async with aclosing(started.text.events()) as events:
            async for item in events:
                if isinstance(item, str):
                    yield event(completion.chunk(ChunkDelta(content=item)))
                    continue
                yield event(completion.chunk(finish_reason=item))
                if started.include_usage:
                    yield event(completion.chunk(usage=item))
    except ServeAppError as error:
        yield error_event(error)
    yield STREAM_END
