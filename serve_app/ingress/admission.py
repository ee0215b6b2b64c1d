"""Load shedding by expected wait: refuse at once what the model could not start in time.

An ingress replica counts the work it has in flight (requests decoding their images or waiting
on the model deployment: its backlog), in the model's work: a generation request weighs the
tokens it may generate (its ``max_new_tokens``), so a 128-token request ahead counts as 64
two-token ones; it measures the rate at which that work completes (tokens per second of the
decoding loop's steps); time spent waiting on other servers (image URLs) is set aside. A
request's expected wait is the work ahead of it over that rate; one whose wait exceeds the
budget is refused at once with a 503, instead of joining a queue that would answer it late.
Its ``Retry-After`` is its turn in a virtual queue: the time the backlog needs to drain to the
budget, plus one service interval per caller refused before it, so refused callers return at
the rate they can be served. Each ingress replica sees its share of the traffic and of the
completions, so the ratio holds however many ingress and model replicas run.

The rate counts completions per second of *busy* time (time with requests in flight),
weighted towards the last ``half_life_s`` of it: idle time neither dilutes nor ages it, so a
burst after a quiet spell is judged by the rate the model last showed under load.
"""

from __future__ import annotations

import contextvars
import itertools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from serve_app.contract.errors import ModelOverloadedError

MAX_RETRY_AFTER_S = 60
MIN_RETRY_AFTER_S = 0.1


_WORK: contextvars.ContextVar[float] = contextvars.ContextVar("admitted_work", default=1.0)
"""The work of the request admitted in this context (what :meth:`Admission.set_aside` moves)."""


class BusyRate:
    """Work completed per second of busy time, exponentially weighted by busy time."""

    def __init__(self, half_life_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self._half_life_s = half_life_s
        self._clock = clock
        self._in_flight = 0.0
        self._requests = 0
        self._since = clock()
        self._completed = 0.0
        self._completions = 0.0
        self._busy_s = 0.0

    @property
    def in_flight(self) -> float:
        """Work started and not yet finished."""
        return self._in_flight

    @property
    def requests_in_flight(self) -> int:
        """Requests started and not yet finished."""
        return self._requests

    def per_second(self) -> float | None:
        """The measured rate of work; None until a request has completed."""
        self._advance()
        if self._completed == 0.0:
            return None
        return self._completed / self._busy_s

    def requests_per_second(self) -> float | None:
        """The measured rate of completed requests; None until one has completed."""
        self._advance()
        if self._completions == 0.0:
            return None
        return self._completions / self._busy_s

    def busy_s(self) -> float:
        """The weighted busy time the rate is measured over."""
        self._advance()
        return self._busy_s

    def started(self, work: float = 1.0) -> None:
        """A request of ``work`` started (or came back from waiting elsewhere)."""
        self._advance()
        self._in_flight += work
        self._requests += 1

    def finished(self, completed: bool, work: float = 1.0) -> None:
        """A request of ``work`` finished; ``completed``: it was served (failures do not count
        as rate)."""
        self._advance()
        self._in_flight -= work
        self._requests -= 1
        if completed:
            self._completed += work
            self._completions += 1.0

    def _advance(self) -> None:
        now = self._clock()
        elapsed = now - self._since
        self._since = now
        if self._requests == 0 or elapsed <= 0:
            return
        keep = 0.5 ** (elapsed / self._half_life_s)
        self._completed *= keep
        self._completions *= keep
        # The weighted busy time gained: the integral of the decay over ``elapsed``.
        self._busy_s = self._busy_s * keep + (1.0 - keep) * self._half_life_s / math.log(2)


class Admission:
    """Admits work while its expected wait fits ``budget_s`` (None: admits all).

    Refused callers are given retry times spaced at the measured rate (a virtual queue), so
    that they come back as fast as the model can take them, not all at once.
    """

    def __init__(
        self,
        budget_s: float | None,
        rate: BusyRate | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._budget_s = budget_s
        self._rate = rate or BusyRate(clock=clock)
        self._clock = clock
        self._next_retry = 0.0
        self._started: dict[int, float] = {}  # in insertion order: the oldest first
        self._tickets = itertools.count()

    def expected_wait_s(self) -> float:
        """The backlog over the measured rate: how long a request admitted now would wait."""
        rate = self._rate.per_second()
        if rate is None or self._rate.requests_in_flight == 0:
            return 0.0
        return self._rate.in_flight / rate

    def oldest_wait_s(self) -> float:
        """How long the oldest request in work has been in it (0 when there is none)."""
        oldest = next(iter(self._started.values()), None)
        return 0.0 if oldest is None else self._clock() - oldest

    def check(self) -> None:
        """Refuse now if a request would wait past the budget.

        The rate measured at low load understates what batching serves at high load, so an
        expected wait over the budget refuses only once a queue shows: the oldest request in
        work has waited half the budget. Before the first completion the rate is unknown;
        requests are admitted until the busy time with no answer, times the requests ahead,
        passes the budget.

        Raises:
            ModelOverloadedError: with ``retry_after_s``: when the backlog will have drained
                to the budget, after the callers refused before this one.
        """
        if self._budget_s is None:
            return
        rate = self._rate.per_second()
        if rate is None:
            # Nothing has completed in the busy time so far: the wait is at least that long
            # for each request ahead (batches aside), so refuse only once that is past the budget.
            if self._rate.requests_in_flight * self._rate.busy_s() > self._budget_s:
                raise ModelOverloadedError(
                    "the model has not answered yet; retry after 1 s", retry_after_s=1.0
                )
            return
        wait = self._rate.in_flight / rate
        if wait > self._budget_s and self.oldest_wait_s() > self._budget_s / 2:
            served = self._rate.requests_per_second() or rate
            retry_after = self._retry_slot(wait - self._budget_s, served)
            raise ModelOverloadedError(
                f"the model is overloaded (expected wait {wait:.1f} s, over the "
                f"{self._budget_s:g} s budget); retry after {retry_after:.1f} s",
                retry_after_s=retry_after,
            )

    def _retry_slot(self, drain_s: float, rate: float) -> float:
        """Seconds until this caller's turn: the backlog's excess drained, then one slot of
        ``1 / rate`` (``rate``: requests served a second) per caller refused before it whose
        turn has not come yet."""
        now = self._clock()
        slot = max(now + drain_s, self._next_retry)
        self._next_retry = min(slot + 1.0 / rate, now + MAX_RETRY_AFTER_S)
        return min(float(MAX_RETRY_AFTER_S), max(MIN_RETRY_AFTER_S, slot - now))

    @contextmanager
    def set_aside(self) -> Iterator[None]:
        """Leave the backlog while the enclosed code waits on another server (a URL fetch):
        a slow remote host must not make the service look overloaded. (The request's age
        still counts towards :meth:`oldest_wait_s`; the expected wait decides alone then.)"""
        work = _WORK.get()
        self._rate.finished(completed=False, work=work)  # out of the backlog, not served
        try:
            yield
        finally:
            self._rate.started(work)

    @contextmanager
    def admitted(self, work: float = 1.0) -> Iterator[None]:
        """Count the enclosed request, of ``work`` (a generation request: its
        ``max_new_tokens``), in the backlog, after checking it may start."""
        self.check()
        self._rate.started(work)
        outer = _WORK.get()
        _WORK.set(work)
        ticket = next(self._tickets)
        self._started[ticket] = self._clock()
        completed = False
        try:
            yield
            completed = True
        finally:
            del self._started[ticket]
            _WORK.set(outer)
            self._rate.finished(completed, work)
