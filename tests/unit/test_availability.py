"""Readiness from what the ingress already knows: no model call per probe (no Ray)."""

from __future__ import annotations

import asyncio

from serve_app.contract.errors import (
    GenerationFailedError,
    ModelOverloadedError,
    ModelUnavailableError,
)
from serve_app.ingress.availability import ModelAvailability


class FakeProbe:
    """Stands in for a describe call to the model deployment; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: Exception | None = None

    async def __call__(self) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error


def test_many_probes_cost_one_model_call() -> None:
    probe = FakeProbe()

    async def scenario() -> list[bool]:
        availability = ModelAvailability(probe, probe_interval_s=60)
        return [await availability.available() for _ in range(100)]

    assert all(asyncio.run(scenario()))
    assert probe.calls == 1


def test_no_replica_makes_it_unavailable_and_an_answer_available_again() -> None:
    probe = FakeProbe()
    probe.error = ModelUnavailableError("no model replica is available")

    async def scenario() -> list[bool]:
        availability = ModelAvailability(probe, probe_interval_s=0.05)
        seen = [await availability.available()]
        probe.error = None
        await asyncio.sleep(0.2)
        seen.append(await availability.available())
        availability.record(ModelUnavailableError("gone"))
        seen.append(await availability.available())
        return seen

    assert asyncio.run(scenario()) == [False, True, False]


def test_overload_and_failed_requests_are_answers_not_absence() -> None:
    probe = FakeProbe()

    async def scenario() -> list[bool]:
        availability = ModelAvailability(probe, probe_interval_s=60)
        await availability.available()
        seen = []
        for error in (ModelOverloadedError("busy"), GenerationFailedError("failed")):
            availability.record(error)
            seen.append(await availability.available())
        return seen

    assert asyncio.run(scenario()) == [True, True]


def test_an_answer_goes_stale() -> None:
    probe = FakeProbe()

    async def scenario() -> bool:
        availability = ModelAvailability(probe, probe_interval_s=60, fresh_for_s=0.05)
        await availability.available()
        await asyncio.sleep(0.1)
        return await availability.available()

    assert asyncio.run(scenario()) is False
