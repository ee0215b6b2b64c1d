"""What the ingress knows of the model deployment's replicas, from the calls it makes.

A readiness probe is answered from this state, never by a call of its own: every model call
records whether a replica answered, and while no traffic flows one background probe per
ingress replica (every ``probe_interval_s``) keeps the state fresh. An overloaded model is
reachable: overload sheds requests, it does not make the service unready.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from serve_app.contract.errors import ModelUnavailableError, ServeAppError


class ModelAvailability:
    """Whether a model replica answered recently."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        probe_interval_s: float = 5.0,
        fresh_for_s: float = 15.0,
        probe_timeout_s: float = 5.0,
    ) -> None:
        self._probe = probe
        self._interval_s = probe_interval_s
        self._fresh_for_s = fresh_for_s
        self._timeout_s = probe_timeout_s
        self._answered_at: float | None = None
        self._prober: asyncio.Task[None] | None = None
        self._first_probe = asyncio.Event()

    def record(self, error: BaseException | None) -> None:
        """Note a model call's outcome: any answer (overload and typed errors included) means
        a replica is reachable; no replica, or no answer in time, means it is not."""
        if isinstance(error, ModelUnavailableError | TimeoutError):
            self._answered_at = None
        elif error is None or isinstance(error, ServeAppError):
            self._answered_at = time.monotonic()

    async def available(self) -> bool:
        """Whether a replica answered within ``fresh_for_s`` (waits for the first probe)."""
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self._probe_forever())
        if self._answered_at is None and not self._first_probe.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout_s):
                    await self._first_probe.wait()
        answered = self._answered_at
        return answered is not None and time.monotonic() - answered < self._fresh_for_s

    async def _probe_forever(self) -> None:
        while True:
            answered = self._answered_at
            if answered is None or time.monotonic() - answered >= self._interval_s:
                try:
                    async with asyncio.timeout(self._timeout_s):
                        await self._probe()
                    self.record(None)
                except Exception as exc:
                    self.record(exc)
                self._first_probe.set()
            await asyncio.sleep(self._interval_s)
