"""``CallGroups``: concurrent requests share calls, each result returns as soon as it is ready,
and the requests out never exceed the room the model has."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from serve_app.batching.groups import CallGroups, GroupAdmitted

MANY = 100
"""Calls waiting for rows: more than any test here sends, so only the room limits them."""


class GatedFakeBackend:
    """A fake model deployment: records each call's group, says it is admitted and answers
    each item when the test says, on the call's stream."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.cancelled: list[list[str]] = []
        self._events: dict[str, asyncio.Queue[int | GroupAdmitted]] = {}

    async def send(
        self, items: list[str]
    ) -> AsyncIterator[tuple[int, str | Exception] | GroupAdmitted]:
        self.groups.append(items)
        events: asyncio.Queue[int | GroupAdmitted] = asyncio.Queue()
        for item in items:
            self._events[item] = events
        answered = 0
        try:
            while answered < len(items):
                event = await events.get()
                if isinstance(event, GroupAdmitted):
                    yield event
                    continue
                answered += 1
                item = items[event]
                yield event, ValueError(item) if item.startswith("bad") else item.upper()
        except asyncio.CancelledError:
            self.cancelled.append(items)
            raise

    def admit(self, item: str) -> None:
        """The call that holds ``item`` says its group got rows."""
        self._events[item].put_nowait(GroupAdmitted())

    def answer(self, *items: str) -> None:
        for item in items:
            group = next(g for g in reversed(self.groups) if item in g)
            self._events[item].put_nowait(group.index(item))


def grouped(backend: GatedFakeBackend, size: int, room: int) -> CallGroups[str, str]:
    """Groups of ``size`` with ``room`` requests out, paced by room alone."""
    return CallGroups(backend.send, max_group_size=size, max_in_flight=room, max_pending=MANY)


async def settle() -> None:
    """Let every ready callback and task run (an answer takes a few loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_request_that_finds_room_goes_at_once_alone() -> None:
    async def scenario() -> None:
        backend = GatedFakeBackend()
        groups = CallGroups(backend.send, max_group_size=8, max_in_flight=4, max_pending=MANY)
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
        groups = CallGroups(backend.send, max_group_size=8, max_in_flight=8, max_pending=MANY)
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
        groups = CallGroups(backend.send, max_group_size=3, max_in_flight=4, max_pending=MANY)
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


def test_requests_wait_while_a_call_waits_for_rows_and_go_together_once_it_has_them() -> None:
    async def scenario() -> None:
        backend = GatedFakeBackend()
        groups = CallGroups(backend.send, max_group_size=8, max_in_flight=32, max_pending=1)
        first = asyncio.create_task(groups.call("a"))
        await settle()
        assert backend.groups == [["a"]] and groups.pending == 1
        later = [asyncio.create_task(groups.call(item)) for item in "bcd"]
        await settle()
        assert backend.groups == [["a"]]  # the model has not taken "a" in yet
        backend.admit("a")  # it has: the waiting ones go, together
        await settle()
        assert backend.groups == [["a"], ["b", "c", "d"]] and groups.pending == 1
        backend.answer("b")  # a result before the group's admission counts as it
        await settle()
        assert groups.pending == 0
        backend.answer("a", "c", "d")
        assert await asyncio.gather(first, *later) == ["A", "B", "C", "D"]

    asyncio.run(scenario())


def test_an_item_error_reaches_only_its_caller_and_a_call_error_reaches_all() -> None:
    async def scenario() -> None:
        backend = GatedFakeBackend()
        groups = CallGroups(backend.send, max_group_size=8, max_in_flight=8, max_pending=MANY)
        good, bad = (asyncio.create_task(groups.call(item)) for item in ("ok", "bad"))
        await settle()
        backend.answer("ok", "bad")
        assert await good == "OK"
        with pytest.raises(ValueError, match="bad"):
            await bad

        async def broken(
            items: list[str],
        ) -> AsyncIterator[tuple[int, str | Exception] | GroupAdmitted]:
            yield 0, "first"
            raise ConnectionError("replica gone")

        failing: CallGroups[str, str] = CallGroups(
            broken, max_group_size=8, max_in_flight=8, max_pending=MANY
        )
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
        groups = CallGroups(backend.send, max_group_size=8, max_in_flight=1, max_pending=MANY)
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
