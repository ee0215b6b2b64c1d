"""``CallGroups``: concurrent requests share calls, each result returns as soon as it is ready,
and the requests out never exceed the room the model has."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from serve_app.batching.groups import CallGroups


class GatedFakeBackend:
    """A fake model deployment: records each call's group and answers each item when the test
    says, on the call's stream."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.cancelled: list[list[str]] = []
        self._answers: dict[str, asyncio.Queue[int]] = {}

    async def send(self, items: list[str]) -> AsyncIterator[tuple[int, str | Exception]]:
        self.groups.append(items)
        answers: asyncio.Queue[int] = asyncio.Queue()
        for item in items:
            self._answers[item] = answers
        try:
            for _ in items:
                index = await answers.get()
                item = items[index]
                yield index, ValueError(item) if item.startswith("bad") else item.upper()
        except asyncio.CancelledError:
            self.cancelled.append(items)
            raise

    def answer(self, *items: str) -> None:
        for item in items:
            group = next(g for g in reversed(self.groups) if item in g)
            self._answers[item].put_nowait(group.index(item))


async def settle() -> None:
    """Let every ready callback and task run (an answer takes a few loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_request_that_finds_room_goes_at_once_alone() -> None:
    async def scenario() -> None:
        backend = GatedFakeBackend()
        groups = CallGroups(backend.send, max_group_size=8, max_in_flight=4)
        call = asyncio.create_task(groups.call("a"))
        await settle()
        assert backend.groups == [["a"]]
        backend.answer("a")
        assert await call == "A"
        assert groups.in_flight == 0

    asyncio.run(scenario())


def test_each_result_returns_when_ready_not_when_its_group_ends() -> None:
    async def scenario() -> None:
        backend = GatedFakeBackend()
        groups = CallGroups(backend.send, max_group_size=8, max_in_flight=8)
        short, long = (asyncio.create_task(groups.call(item)) for item in ("short", "long"))
        await settle()
        assert backend.groups == [["short", "long"]]
        backend.answer("short")
        await settle()
        assert short.done() and not long.done()
        assert await short == "SHORT"
        backend.answer("long")
        assert await long == "LONG"

    asyncio.run(scenario())


def test_partial_groups_wait_for_room_and_full_groups_never_wait() -> None:
    async def scenario() -> None:
        backend = GatedFakeBackend()
        groups = CallGroups(backend.send, max_group_size=3, max_in_flight=4)
        calls = [asyncio.create_task(groups.call(item)) for item in "abcde"]
        await settle()
        # One full group goes; the two left would pass the 4 requests out: they wait.
        assert backend.groups == [["a", "b", "c"]]
        assert groups.in_flight == 3
        backend.answer("a")  # room for both now: they go together, not one per freed row
        await settle()
        assert backend.groups[-1] == ["d", "e"]
        assert groups.in_flight == 4
        more = [asyncio.create_task(groups.call(item)) for item in "fghij"]
        await settle()
        assert backend.groups[-1] == ["f", "g", "h"]  # full: it goes beyond the room
        assert groups.in_flight == 7
        backend.answer("b", "c", "d", "e", "f", "g", "h")
        await settle()
        assert backend.groups[-1] == ["i", "j"]
        backend.answer("i", "j")
        assert await asyncio.gather(*calls, *more) == list("ABCDEFGHIJ")
        assert groups.in_flight == 0

    asyncio.run(scenario())


def test_an_item_error_reaches_only_its_caller_and_a_call_error_reaches_all() -> None:
    async def scenario() -> None:
        backend = GatedFakeBackend()
        groups = CallGroups(backend.send, max_group_size=8, max_in_flight=8)
        good, bad = (asyncio.create_task(groups.call(item)) for item in ("ok", "bad"))
        await settle()
        backend.answer("ok", "bad")
        assert await good == "OK"
        with pytest.raises(ValueError, match="bad"):
            await bad

        async def broken(items: list[str]) -> AsyncIterator[tuple[int, str | Exception]]:
            yield 0, "first"
            raise ConnectionError("replica gone")

        failing: CallGroups[str, str] = CallGroups(broken, max_group_size=8, max_in_flight=8)
        results = await asyncio.gather(
            *(failing.call(item) for item in "xyz"), return_exceptions=True
        )
        assert results[0] == "first"
        assert [type(result) for result in results[1:]] == [ConnectionError] * 2
        assert failing.in_flight == 0

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
        backend.answer("a")
        await first
        await settle()
        assert backend.groups[-1] == ["c"]
        waiting[1].cancel()  # the last caller of a call in flight leaves: it is cancelled
        await settle()
        assert backend.cancelled == [["c"]]
        assert groups.calls_in_flight == 0 and groups.in_flight == 0

    asyncio.run(scenario())
