"""Server-Sent Events of a streamed chat completion, fed by the model's token stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from serve_app.chat import STREAM_END, Completion, stream_error
from serve_app.errors import GenerationFailedError, RequestTimeoutError, ServeAppError
from serve_app.model_calls import as_service_error
from serve_app.openai_schemas import ChunkDelta
from serve_app.schemas import GenerationResult


async def chat_events(
    completion: Completion,
    stream: Any,
    first: str | GenerationResult,
    deadline: float,
    include_usage: bool,
) -> AsyncIterator[str]:
    """The SSE body: the role, each text delta as it arrives, the finish reason, optionally the
    usage, then ``[DONE]``. A failure after the first byte is sent as an error event.

    ``stream`` is the model deployment's streaming response; ``first`` its first event. When the
    client goes away, this generator is closed and the model's share of work is cancelled.
    """
    finished = False
    try:
        yield completion.chunk(ChunkDelta(role="assistant", content=""))
        event = first
        while isinstance(event, str):
            yield completion.chunk(ChunkDelta(content=event))
            async with asyncio.timeout_at(deadline):
                event = await anext(stream)
        finished = True
        yield completion.chunk(finish_reason=event)
        if include_usage:
            yield completion.chunk(usage=event)
    except TimeoutError:
        yield stream_error(RequestTimeoutError("the request did not finish in time"))
    except Exception as exc:
        error = as_service_error(exc)
        if not isinstance(error, ServeAppError):
            error = GenerationFailedError("the model failed on this request")
        yield stream_error(error)
    finally:
        if not finished:
            stream.cancel()
    yield STREAM_END
