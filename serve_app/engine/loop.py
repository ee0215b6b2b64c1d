"""``DecodingLoop``: the scheduler in front of an engine, in a thread of its own (no Ray).

Requests wait in one queue, oldest first. At every step the loop admits waiting requests into
free rows (at most ``max_prefills_per_step`` of them, so that prefills do not stall the
running rows for long), tells the engine which rows' callers went away, and runs one step:
every running row gets a token and rows that end leave at once, freeing their row for the
next request. That a request got its row, and what the step produced, reach each caller's sink
through ``post``, in a call or two per step (the Serve replica posts onto its event loop).
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from serve_app.contract.errors import GenerationFailedError
from serve_app.engine.types import Admission, Engine, RowEvent
from serve_app.model.types import ModelRequest, ModelResult

logger = logging.getLogger("ray.serve")


class RowSink(Protocol):
    """Where one request's text and outcome go (called through ``post``)."""

    @property
    def cancelled(self) -> bool:
        """Whether the caller went away (read from the loop's thread)."""

    def admit(self) -> None:
        """The request got a row (called before its first step runs)."""

    def put_text(self, delta: str) -> None: ...

    def finish(self, outcome: ModelResult | Exception) -> None: ...


Post = Callable[[Callable[[], None]], None]
"""Runs a callable where the sinks live (e.g. ``loop.call_soon_threadsafe``)."""


@dataclass(frozen=True)
class StepReport:
    """One step, for metrics and health."""

    rows: int
    """Rows the step held (the admitted included)."""
    admitted_waits: list[float]
    """How long each request admitted in this step waited for its row, in seconds."""
    outcomes: list[ModelResult | Exception]
    """The outcomes of the rows that ended in this step."""
    seconds: float
    cpu_seconds: float
    """CPU time of the loop's thread in the step."""


class StepObserver(Protocol):
    """Told when each step starts and how it went (called in the loop's thread)."""

    def step_started(self) -> None: ...

    def step_finished(self, report: StepReport) -> None: ...


@dataclass(eq=False)
class _Entry:
    request: ModelRequest
    sink: RowSink
    arrived: float = field(default_factory=time.perf_counter)


class DecodingLoop:
    """Feeds ``engine`` one step at a time from a queue of requests; thread-safe."""

    def __init__(
        self,
        engine: Engine,
        post: Post,
        observer: StepObserver | None = None,
    ) -> None:
        self._engine = engine
        self._post = post
        self._observer = observer
        self._max_rows = engine.max_rows
        self._max_prefills = engine.max_rows
        self._waiting: deque[tuple[int, _Entry]] = deque()
        self._running: dict[int, _Entry] = {}
        self._keys = itertools.count()
        self._work = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def max_rows(self) -> int:
        """Rows in use at most now (at most the engine's)."""
        return self._max_rows

    @property
    def free_rows(self) -> int:
        """Rows a request submitted now would find free (none if others wait)."""
        with self._work:
            return max(0, self._max_rows - len(self._running) - len(self._waiting))

    @property
    def busy(self) -> bool:
        """Whether any request is running or waiting."""
        with self._work:
            return bool(self._running or self._waiting)

    def configure(self, max_rows: int | None, max_prefills_per_step: int | None) -> None:
        """Use at most ``max_rows`` rows and admit at most ``max_prefills_per_step`` requests a
        step (None: the engine's bound; both move within it).

        Raises:
            ValueError: ``max_rows`` over the engine's bound.
        """
        bound = self._engine.max_rows
        if max_rows is not None and max_rows > bound:
            raise ValueError(
                f"max_rows {max_rows} exceeds the {bound} rows this replica started with "
                "(model.max_rows, fixed at start)"
            )
        with self._work:
            self._max_rows = max_rows or bound
            self._max_prefills = min(max_prefills_per_step or bound, self._max_rows)

    def submit(self, requests: Sequence[tuple[ModelRequest, RowSink]]) -> None:
        """Queue requests; their text and outcomes reach their sinks."""
        with self._work:
            for request, sink in requests:
                self._waiting.append((next(self._keys), _Entry(request, sink)))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="decoding-loop", daemon=True)
                self._thread.start()
            self._work.notify()

    def _run(self) -> None:
        while True:
            try:
                self._step()
            except Exception:  # the loop must outlive any one step
                logger.exception("A step failed outside the model; failing the rows it held")
                self._deliver(self._fail_all(), [])

    def _step(self) -> None:
        """Admit, run one engine step, deliver what it produced, report it."""
        admitted, cancelled = self._next_step()
        if admitted:
            self._post(functools.partial(_admit, [entry.sink for _, entry in admitted]))
        if self._observer is not None:
            self._observer.step_started()
        started, cpu_started = time.perf_counter(), time.thread_time()
        rows = len(self._running) - len(cancelled)
        try:
            events = self._engine.step(
                [Admission(key, entry.request) for key, entry in admitted], cancelled
            )
        except Exception:
            logger.exception("A step of %d rows failed as a whole", rows)
            events = self._fail_all()
        self._deliver(events, cancelled)
        if self._observer is not None:
            self._observer.step_finished(
                StepReport(
                    rows,
                    [started - entry.arrived for _, entry in admitted],
                    [event.outcome for event in events if event.outcome is not None],
                    time.perf_counter() - started,
                    time.thread_time() - cpu_started,
                )
            )

    def _next_step(self) -> tuple[list[tuple[int, _Entry]], list[int]]:
        """Wait for work; take the requests to admit and the running rows' cancellations."""
        with self._work:
            while not self._running and not self._waiting:
                self._work.wait()
            admitted: list[tuple[int, _Entry]] = []
            room = min(self._max_prefills, self._max_rows - len(self._running))
            while self._waiting and len(admitted) < room:
                key, entry = self._waiting.popleft()
                if not entry.sink.cancelled:
                    admitted.append((key, entry))
            self._running.update(admitted)
            if admitted:
                ids = " ".join(entry.request.request_id for _, entry in admitted)
                logger.info("Admitted %d: %s", len(admitted), ids)
            cancelled = [key for key, entry in self._running.items() if entry.sink.cancelled]
            return admitted, cancelled

    def _fail_all(self) -> list[RowEvent]:
        """Every held row fails, as the engine's state can no longer be trusted."""
        failure = GenerationFailedError("the model failed to generate for this request")
        self._engine.clear()
        return [RowEvent(key, outcome=failure) for key in list(self._running)]

    def _deliver(self, events: list[RowEvent], cancelled: list[int]) -> None:
        with self._work:
            for key in cancelled:
                self._running.pop(key, None)
            deliveries = []
            for event in events:
                entry = self._running.get(event.key)
                if entry is None:
                    continue
                if event.outcome is not None:
                    del self._running[event.key]
                deliveries.append((entry.sink, event))
        if deliveries:
            self._post(functools.partial(_dispatch, deliveries))


def _admit(sinks: list[RowSink]) -> None:
    for sink in sinks:
        sink.admit()


def _dispatch(deliveries: list[tuple[RowSink, RowEvent]]) -> None:
    for sink, event in deliveries:
        if event.text:
            sink.put_text(event.text)
        if event.outcome is not None:
            sink.finish(event.outcome)
