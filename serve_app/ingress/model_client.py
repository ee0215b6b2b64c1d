"""Calling the model deployment: typed calls, Ray's failures as this service's typed errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.context import _get_serve_request_context
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle

from serve_app.batching.groups import CallGroups, GroupAdmitted
from serve_app.config import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_ROWS, BatchingConfig
from serve_app.contract.errors import (
    GenerationFailedError,
    ModelOverloadedError,
    ModelUnavailableError,
    ServeAppError,
)
from serve_app.model.types import ModelRequest, ModelResult, ReplicaInfo

logger = logging.getLogger("ray.serve")

ResultT = TypeVar("ResultT")


class ModelStream(Protocol):
    """A streamed generation: its events (text, then the result), cancellable."""

    def __aiter__(self) -> AsyncIterator[str | ModelResult]: ...

    async def __anext__(self) -> str | ModelResult: ...

    def cancel(self) -> None: ...


def as_service_error(exc: BaseException) -> BaseException:
    """The error a caller should see for a failed model call (unknown errors pass through)."""
    if isinstance(exc, BackPressureError):
        return ModelOverloadedError("the model is overloaded; retry shortly")
    if isinstance(exc, DeploymentUnavailableError | ReplicaUnavailableError | RayActorError):
        return ModelUnavailableError("no model replica is available; retry shortly")
    if isinstance(exc, RayTaskError):
        if isinstance(exc.cause, ServeAppError):
            return exc.cause
        return GenerationFailedError("the model failed on this request")
    return exc


async def until_done(response: Any) -> Any:
    """Await a model call; a caller that stops waiting (deadline, disconnect) cancels it.

    Serve does not cancel a call whose awaiting task is cancelled, so without this the
    model replica would still run the work of a request its caller has given up on.
    """
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise


async def call_with_retry(send: Callable[[], Awaitable[ResultT]]) -> ResultT:
    """Make a model call; if its replica dies mid-request, make it once more elsewhere.

    Generation is idempotent, so a retry is safe.
    """
    try:
        return await send()
    except (ReplicaUnavailableError, RayActorError):
        logger.warning("A model replica died mid-request; retrying it once")
    except Exception as exc:
        raise as_service_error(exc) from None
    try:
        return await send()
    except Exception as exc:
        raise as_service_error(exc) from None


MODEL_REFRESH_S = 5.0
"""How often an ingress replica re-reads how many model replicas run and their batching."""


def running_replicas(app_name: str, deployment_name: str) -> int:
    """How many replicas of a deployment Serve reports running (a blocking controller call)."""
    app = serve.status().applications.get(app_name)
    deployment = app.deployments.get(deployment_name) if app else None
    states = deployment.replica_states if deployment else {}
    return sum(count for state, count in states.items() if state == "RUNNING")


class ModelClient:
    """The model deployment as the ingress calls it: typed calls, typed errors, one retry.

    Concurrent requests share calls (``CallGroups``): one call per group of up to the model's
    ``max_batch_size``, each result streamed back as its row ends. A request goes at once
    unless ``calls_per_replica`` grouped calls per running model replica still wait for rows
    (then it goes with the next group as soon as one is admitted), and the ingress keeps at
    most as many requests out as the replicas have rows, plus ``calls_per_replica`` groups
    each.
    """

    def __init__(self, handle: DeploymentHandle[Any], calls_per_replica: int) -> None:
        self._handle = handle
        self._streaming = handle.options(stream=True)
        self._calls_per_replica = calls_per_replica
        self._groups: CallGroups[ModelRequest, ModelResult] = CallGroups(
            self._send_group,
            DEFAULT_MAX_BATCH_SIZE,
            in_flight_per_replica(BatchingConfig(), DEFAULT_MAX_ROWS, calls_per_replica),
            calls_per_replica,
        )
        self._follower: asyncio.Task[None] | None = None

    async def generate(self, request: ModelRequest) -> ModelResult:
        """Generate for one request (it shares a call with others in flight)."""
        if self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(self._follow_model())
        request_id = _get_serve_request_context().request_id
        return await self._groups.call(request.model_copy(update={"request_id": request_id}))

    async def open_stream(self, request: ModelRequest) -> tuple[ModelStream, str | ModelResult]:
        """Start a streamed generation: the stream and its first event (text or the result)."""
        return await call_with_retry(lambda: self._open_stream(request))

    async def describe(self) -> ReplicaInfo:
        """What a model replica serves, and its live batching settings (groups follow them)."""
        info: ReplicaInfo = await call_with_retry(
            lambda: until_done(self._handle.describe.remote())
        )
        self._groups.max_group_size = info.batching.max_batch_size
        return info

    async def _send_group(
        self, requests: list[ModelRequest]
    ) -> AsyncIterator[tuple[int, ModelResult | Exception] | GroupAdmitted]:
        """One call for ``requests``: ``GroupAdmitted`` once they have rows, then each result
        as its row ends. A lone request is a plain call, taken as admitted when sent (a
        streamed call costs both ends more than a plain one). If the replica dies mid-call,
        the requests it had not answered are sent once more, elsewhere (generation is
        idempotent)."""
        if len(requests) == 1:
            yield GroupAdmitted()
            result: ModelResult = await call_with_retry(
                lambda: until_done(self._handle.generate.remote(requests[0]))
            )
            yield 0, result
            return
        unanswered = list(range(len(requests)))
        for attempt in (1, 2):
            sent = list(unanswered)
            stream: Any = self._streaming.generate_group.remote([requests[i] for i in sent])
            try:
                async for event in stream:
                    if isinstance(event, GroupAdmitted):
                        yield event
                        continue
                    position, outcome = event
                    unanswered.remove(sent[position])
                    yield sent[position], outcome
                return
            except asyncio.CancelledError:
                stream.cancel()
                raise
            except (ReplicaUnavailableError, RayActorError) as exc:
                if attempt == 2:
                    raise as_service_error(exc) from None
                logger.warning("A model replica died mid-call; sending its open requests again")
            except Exception as exc:
                raise as_service_error(exc) from None

    async def _follow_model(self) -> None:
        """Size the calls by the model deployment as it is now: its running replicas' rows
        and queues, in groups of its live ``max_batch_size``."""
        app, deployment = self._handle.app_name, self._handle.deployment_name
        while True:
            try:
                running = await asyncio.to_thread(running_replicas, app, deployment)
                info = await self.describe()
                per_replica = in_flight_per_replica(
                    info.batching, DEFAULT_MAX_ROWS, self._calls_per_replica
                )
                self._groups.max_in_flight = per_replica * max(1, running)
                self._groups.max_pending = self._calls_per_replica * max(1, running)
            except Exception:  # the controller or the replicas are briefly unreachable
                logger.debug("Could not read the model deployment's state", exc_info=True)
            await asyncio.sleep(MODEL_REFRESH_S)

    async def _open_stream(self, request: ModelRequest) -> tuple[ModelStream, str | ModelResult]:
        stream: Any = self._streaming.generate_stream.remote(request)
        try:
            return stream, await anext(stream)
        except BaseException:
            stream.cancel()
            raise


def in_flight_per_replica(
    batching: BatchingConfig, default_rows: int, calls_per_replica: int
) -> int:
    """Requests to keep out per model replica: its rows, and ``calls_per_replica`` groups of
    ``max_batch_size`` waiting for a row."""
    rows = batching.max_rows or default_rows
    return rows + calls_per_replica * batching.max_batch_size
