"""``Blip2Server``: the GPU-pinned model deployment; its decoding loop runs the model."""

from __future__ import annotations

import logging
import statistics
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from serve_app.batching.batcher import RequestBatcher
from serve_app.batching.groups import GroupAdmitted
from serve_app.batching.loop_queue import LoopQueue
from serve_app.batching.streams import Outcome
from serve_app.config import BatchingConfig, ModelConfig
from serve_app.contract.errors import GenerationFailedError, ServeAppError
from serve_app.deployments.health import ReplicaHealth
from serve_app.deployments.memory_check import MemoryCheck, assigned_gpus
from serve_app.engine.loop import StepReport
from serve_app.engine.types import Engine, EngineStats
from serve_app.metrics import ServerMetrics
from serve_app.model.types import ModelRequest, ModelResult, ReplicaInfo

logger = logging.getLogger("ray.serve")

STEPS_KEPT = 200
"""Decoding steps whose wall time ``median_step_seconds`` reads."""

ModelFactory = Callable[[ModelConfig], Engine]
"""Builds the engine a replica runs: BLIP-2 as configured, or a fake in tests."""


def load_blip2(config: ModelConfig) -> Engine:
    """The default model factory: BLIP-2 as configured, in a decoding-loop engine."""
    from serve_app.engine.blip2_engine import Blip2Engine

    return Blip2Engine.load(config)


class Blip2Server:
    """Holds one model and runs every request through its decoding loop.

    ``user_config`` (a ``BatchingConfig``) sets how requests gather on their way in and the
    loop's live rows; a ``serve deploy`` that changes only it reconfigures running replicas
    without a restart.
    """

    def __init__(
        self,
        model_options: ModelConfig,
        max_ongoing_requests: int,
        batch_timeout_s: float,
        model_factory: ModelFactory | None = None,
    ) -> None:
        self._memory = MemoryCheck(model_options, assigned_gpus())
        self._memory.check_batch(model_options.max_rows)
        self._engine = (model_factory or load_blip2)(model_options)
        self._metrics = ServerMetrics()
        self._health = ReplicaHealth(batch_timeout_s)
        self._step_sizes: Counter[int] = Counter()
        self._group_sizes: Counter[int] = Counter()
        self._generate_cpu_s = 0.0
        self._step_seconds: deque[float] = deque(maxlen=STEPS_KEPT)
        self._stats = EngineStats()
        self._batcher: RequestBatcher[ModelRequest, ModelResult] = RequestBatcher(
            LoopQueue(self._engine, self), max_ongoing_requests
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new batching settings live (Serve calls this on start and on each update)."""
        batching = BatchingConfig.model_validate(user_config)
        self._batcher.configure(batching)
        logger.info("Batching set to %s", batching.model_dump())

    async def generate(self, request: ModelRequest) -> ModelResult:
        """Generate for one request in the decoding loop."""
        self._group_sizes[1] += 1
        outcome: str | Outcome | None = None
        async for event in self._batcher.events(request):
            outcome = event
        if isinstance(outcome, Exception):
            raise _public(outcome)
        if not isinstance(outcome, ModelResult):
            raise GenerationFailedError("the model returned no result for this request")
        return outcome

    async def generate_group(
        self, requests: list[ModelRequest]
    ) -> AsyncIterator[tuple[int, ModelResult | Exception] | GroupAdmitted]:
        """Generate for a group of requests sent in one call: ``GroupAdmitted`` once they all
        have rows, and ``(index, outcome)`` of each the moment its row ends (a short answer
        never waits for a long one).

        The group joins the loop's queue at once (it waits for no more company); a request's
        failure is its own outcome, not the group's.
        """
        self._group_sizes[len(requests)] += 1
        async for event in self._batcher.outcomes_as_done(requests):
            if isinstance(event, GroupAdmitted):
                yield event
                continue
            index, outcome = event
            yield index, outcome if isinstance(outcome, ModelResult) else _public(outcome)

    async def generate_stream(self, request: ModelRequest) -> AsyncIterator[str | ModelResult]:
        """Yield the request's text as it is generated, then its ``ModelResult``."""
        async for event in self._batcher.events(request.model_copy(update={"stream": True})):
            if isinstance(event, Exception):
                raise _public(event)
            yield event

    def describe(self) -> ReplicaInfo:
        """What this replica serves: its model and the live batching settings."""
        batching = self._batcher.settings
        if batching.max_rows is None:
            batching = batching.model_copy(update={"max_rows": self._engine.max_rows})
        return ReplicaInfo(model=self._engine.info(), batching=batching)

    def batch_size_counts(self) -> dict[int, int]:
        """How many decoding steps ran with each number of rows (for tests and diagnostics)."""
        return dict(self._step_sizes)

    def group_size_counts(self) -> dict[int, int]:
        """How many calls this replica has received by the requests they carried: grouped
        calls, and plain calls as groups of one (for tests and diagnostics)."""
        return dict(self._group_sizes)

    def engine_stats(self) -> tuple[str, EngineStats]:
        """This replica's id, its images encoded and feature cache counters (for tests,
        benchmarks and diagnostics)."""
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id, self._engine.stats()

    def median_step_seconds(self) -> float | None:
        """The median wall time of the last decoding steps (None before any; for benchmarks
        and diagnostics)."""
        return statistics.median(self._step_seconds) if self._step_seconds else None

    def generate_cpu_seconds(self) -> float:
        """CPU seconds the decoding loop's thread has spent in its steps (the rest of the
        replica's CPU is the cost of serving; for benchmarks and diagnostics)."""
        return self._generate_cpu_s

    def check_health(self) -> None:
        """Serve's health probe: a replica whose requests mostly fail in the model, or whose
        decoding step hangs, is replaced."""
        if problem := self._health.problem():
            raise RuntimeError(problem)

    def step_started(self) -> None:
        """The loop started a step (its thread)."""
        self._health.batch_started()

    def step_finished(self, report: StepReport) -> None:
        """Record a finished step: its rows, time, waits, outcomes and the engine's counters."""
        self._step_sizes[report.rows] += 1
        self._step_seconds.append(report.seconds)
        self._generate_cpu_s += report.cpu_seconds
        metrics = self._metrics
        metrics.batch_size.observe(report.rows)
        metrics.generate_time.observe(report.seconds)
        metrics.observe_waits(report.admitted_waits)
        outcomes = [
            o if isinstance(o, ModelResult) else _public(o, log=True) for o in report.outcomes
        ]
        self._health.batch_finished(outcomes)
        for outcome in outcomes:
            if isinstance(outcome, ModelResult):
                if outcome.completion_tokens:  # Ray counters refuse an increment of 0
                    metrics.generated_tokens.inc(outcome.completion_tokens)
            else:
                metrics.failures.inc(tags={"code": getattr(outcome, "code", "error")})
        self._stats = metrics.observe_engine(self._stats, self._engine.stats())


def _public(error: Exception, log: bool = False) -> Exception:
    """``error`` as a caller may see it: this service's typed errors pass, others are hidden."""
    if isinstance(error, ServeAppError):
        return error
    if log:
        logger.error("Request failed in the model: %r", error)
    return GenerationFailedError("the model failed to generate for this request")
