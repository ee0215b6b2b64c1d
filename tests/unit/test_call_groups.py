"""``CallGroups``: concurrent requests share calls; none waits when calls are free."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from serve_app.batching.groups import CallGroups


class GatedFakeBackend:
    """A fake model deployment: records each call's group and answers when the test says."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.cancelled: list[list[str]] = []
        self._gates: list[asyncio.Event] = []

    async def send(self, items: list[str]) -> Sequence[str | Exception]:
        self.groups.append(items)
        gate = asyncio.Event()
        self._gates.append(gate)
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(items)
            raise
        return [ValueError(item) if item.startswith("bad") else item.upper() for item in items]

    def answer(self, call: int) -> None:
        self._gates[call].set()


async def settle() -> None:
    """Let every ready callback and task run (a call's answer takes a few loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_request_that_finds_calls_free_goes_at_once_alone() -> None:
    async def scenario() -> None:
        backend = GatedFakeBackend()
        groups = CallGroups(backend.send, max_group_size=8, max_in_flight=1)
        call = asyncio.create_task(groups.call("a"))
        await settle()
        assert backend.groups == [["a"]]
        backend.answer(0)
        assert await call == "A"

    asyncio.run(scenario())


def test_requests_that_wait_for_a_call_go_together_in_one_call() -> None:
    async def scenario() -> None:
        backend = GatedFakeBackend()
        groups = CallGroups(backend.send, max_group_size=8, max_in_flight=1)
        first = asyncio.create_task(groups.call("a"))
        await settle()
        later = [asyncio.create_task(groups.call(item)) for item in "bcd"]
        await settle()
        assert backend.groups == [["a"]]  # b, c, d wait: the one call allowed is out
        backend.answer(0)
        await settle()
        assert backend.groups == [["a"], ["b", "c", "d"]]
        backend.answer(1)
        assert await first == "A"
        assert await asyncio.gather(*later) == ["B", "C", "D"]

    asyncio.run(scenario())


def test_a_full_group_goes_without_waiting_and_groups_are_capped() -> None:
    async def scenario() -> None:
        backend = GatedFakeBackend()
        groups = CallGroups(backend.send, max_group_size=2, max_in_flight=1)
        calls = [asyncio.create_task(groups.call(item)) for item in "abcde"]
        await settle()
        # Arrived in one turn: the first group goes because a call is free, the second
        # because it is full; "e" waits until fewer than one call is out.
        assert backend.groups == [["a", "b"], ["c", "d"]]
        backend.answer(0)
        await settle()
        assert len(backend.groups) == 2
        backend.answer(1)
        await settle()
        assert backend.groups[-1] == ["e"]
        backend.answer(2)
        assert await asyncio.gather(*calls) == ["A", "B", "C", "D", "E"]

    asyncio.run(scenario())


def test_an_item_error_reaches_only_its_caller_and_a_call_error_reaches_all() -> None:
    async def scenario() -> None:
        backend = GatedFakeBackend()
        groups = CallGroups(backend.send, max_group_size=8, max_in_flight=1)
        good, bad = (asyncio.create_task(groups.call(item)) for item in ("ok", "bad"))
        await settle()
        backend.answer(0)
        assert await good == "OK"
        with pytest.raises(ValueError, match="bad"):
            await bad

        async def broken(items: list[str]) -> Sequence[str | Exception]:
            raise ConnectionError("replica gone")

        failing: CallGroups[str, str] = CallGroups(broken, max_group_size=8, max_in_flight=1)
        results = await asyncio.gather(
            *(failing.call(item) for item in "xyz"), return_exceptions=True
        )
        assert [type(result) for result in results] == [ConnectionError] * 3

    asyncio.run(scenario())


def test_callers_who_leave_are_dropped_and_a_call_nobody_awaits_is_cancelled() -> None:
    async def scenario() -> None:
        backend = GatedFakeBackend()
        groups = CallGroups(backend.send, max_group_size=8, max_in_flight=1)
        first = asyncio.create_task(groups.call("a"))
        await settle()
        waiting = [asyncio.create_task(groups.call(item)) for item in "bc"]
        await settle()
        waiting[0].cancel()  # leaves before its group is sent
        backend.answer(0)
        await first
        await settle()
        assert backend.groups[-1] == ["c"]
        waiting[1].cancel()  # the last caller of a call in flight leaves: it is cancelled
        await settle()
        assert backend.cancelled == [["c"]]
        assert groups.calls_in_flight == 0

    asyncio.run(scenario())
