"""The Ray Data workers of a bulk job: each calls the live application's handle, with a bounded
number of requests in flight, and turns every answer or error into an output row.

The service's own batching and autoscaling do the GPU work: these workers only send requests.
A request refused for load or lost with a replica is sent again (up to ``retries`` times, with
backoff); an image the service refuses (corrupt, a refused URL, too large) becomes an error
row, never a failed job.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from pyarrow import fs
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from serve_app.bulk.results import SCHEMA, result_row
from serve_app.contract.api import CaptionRequest, ImageSource, VQARequest
from serve_app.contract.errors import (
    ModelOverloadedError,
    ModelUnavailableError,
    RequestTimeoutError,
    ServeAppError,
)
from serve_app.contract.retrieval import EmbeddingsRequest

Task = Literal["caption", "vqa", "embed"]


@dataclass(frozen=True)
class Calls:
    """What the workers ask, and how hard they push."""

    task: Task
    app_name: str = "blip2"
    question: str | None = None
    prompt: str | None = None
    in_flight: int = 16
    retries: int = 3
    backoff_s: float = 1.0


class ServiceCaller:
    """A ``map_batches`` callable class: one batch of input rows in, their result rows out."""

    def __init__(self, calls: Calls) -> None:
        """Get the application's handle (once per worker)."""
        self._calls = calls
        self._handle: Any = serve.get_app_handle(calls.app_name)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Send every row, at most ``in_flight`` at a time; rows come back in input order."""
        rows = batch.to_pylist()
        results: list[dict[str, Any] | None] = [None] * len(rows)
        pending: deque[tuple[int, Any]] = deque()
        for index, row in enumerate(rows):
            if len(pending) >= self._calls.in_flight:
                done, response = pending.popleft()
                results[done] = self._finish(rows[done], response)
            pending.append((index, self._send(row)))
        while pending:
            done, response = pending.popleft()
            results[done] = self._finish(rows[done], response)
        return pa.Table.from_pylist(results, schema=SCHEMA)

    def _send(self, row: dict[str, Any]) -> Any:
        """The request for ``row``, sent; or the exception that kept it from being sent."""
        try:
            return self._call(self._request(row))
        except Exception as exc:  # an unreadable file or a bad row: an error row, not a failure
            return exc

    def _finish(self, row: dict[str, Any], response: Any) -> dict[str, Any]:
        """Wait for ``response``, sending the request again while the service cannot take it."""
        attempt = 0
        while True:
            try:
                if isinstance(response, Exception):
                    raise response
                return self._row(row, response.result())
            except Exception as exc:
                if not _retryable(exc) or attempt >= self._calls.retries:
                    return self._error(row, _code(exc), _message(exc))
            attempt += 1
            time.sleep(self._calls.backoff_s * 2 ** (attempt - 1))
            response = self._send(row)

    def _request(self, row: dict[str, Any]) -> Any:
        image = _image(row)
        task = self._calls.task
        if task == "caption":
            return CaptionRequest(image=image, prompt=self._calls.prompt)
        if task == "vqa":
            question = row.get("question") or self._calls.question
            if not question:
                raise ValueError("no question: give --question or a question column")
            return VQARequest(image=image, question=question)
        return EmbeddingsRequest(images=[image])

    def _call(self, request: Any) -> Any:
        method = {"caption": "caption", "vqa": "vqa", "embed": "embeddings"}[self._calls.task]
        return getattr(self._handle, method).remote(request)

    def _row(self, row: dict[str, Any], response: Any) -> dict[str, Any]:
        task = self._calls.task
        usage = response.usage
        if task == "embed":
            return result_row(
                row["id"],
                row["input"],
                task,
                embedding=response.data[0].embedding,
                prompt_tokens=usage.prompt_tokens,
            )
        text = response.caption if task == "caption" else response.answer
        return result_row(
            row["id"],
            row["input"],
            task,
            text=text,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )

    def _error(self, row: dict[str, Any], code: str, message: str) -> dict[str, Any]:
        return result_row(row["id"], row["input"], self._calls.task, error=(code, message))


def _image(row: dict[str, Any]) -> ImageSource:
    """The row's image: its bytes, a URL for the service to fetch, or a file read here."""
    if row["image"] is not None:
        return ImageSource.from_upload(row["image"])
    reference: str = row["input"]
    if reference.startswith(("http://", "https://")):
        return ImageSource(url=reference)
    if "://" in reference:
        filesystem, path = fs.FileSystem.from_uri(reference)
    else:
        filesystem, path = fs.LocalFileSystem(), reference
    with filesystem.open_input_file(path) as file:
        return ImageSource.from_upload(file.read())


def _retryable(exc: Exception) -> bool:
    """Whether the service, not the image, kept ``exc``'s request from an answer."""
    if isinstance(exc, ServeAppError):
        return isinstance(exc, (ModelOverloadedError, ModelUnavailableError, RequestTimeoutError))
    return isinstance(exc, (BackPressureError, DeploymentUnavailableError, RayError))


def _code(exc: Exception) -> str:
    if isinstance(exc, ServeAppError):
        return exc.code
    if isinstance(exc, (BackPressureError, DeploymentUnavailableError, RayError)):
        return "service_unavailable"
    if isinstance(exc, OSError):  # a file that could not be read
        return "input_unreadable"
    return "invalid_request"  # a row the request could not be built from (no question, ...)


def _message(exc: Exception) -> str:
    message = getattr(exc, "message", None)
    if isinstance(message, str):
        return message
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"
