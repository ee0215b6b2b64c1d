"""Streams that have started: a generation's text as it comes, and a chat completion's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from serve_app.contract.errors import GenerationFailedError, RequestTimeoutError, ServeAppError
from serve_app.ingress.chat import Completion
from serve_app.ingress.model_client import ModelStream, as_service_error
from serve_app.model.types import ModelResult


@dataclass(frozen=True)
class TextStream:
    """A streamed generation that has started: its first event came from the model."""

    stream: ModelStream
    first: str | ModelResult
    deadline: float
    timeout_s: float

    async def events(self) -> AsyncGenerator[str | ModelResult, None]:
        """The text deltas as they come, then the result, within the request's deadline.

        Failures arrive as the service's typed errors. Closed early (its consumer went away),
        it cancels the model's work on the request.
        """
        finished = False
        item = self.first
        try:
            while isinstance(item, str):
                yield item
                async with asyncio.timeout_at(self.deadline):
                    item = await anext(self.stream)
            finished = True
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request did not finish within {self.timeout_s:g} s"
            ) from None
        except ServeAppError:
            raise
        except Exception as exc:
            error = as_service_error(exc)
            if isinstance(error, ServeAppError):
                raise error from exc
            raise GenerationFailedError("the model failed on this request") from exc
        finally:
            if not finished:
                self.stream.cancel()
        yield item


@dataclass(frozen=True)
class ChatStream:
    """A streamed chat completion that has started."""

    completion: Completion
    text: TextStream
    include_usage: bool
