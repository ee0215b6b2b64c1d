"""``CallGroups``: concurrent requests share one call to the model deployment (no Ray).

Every call across Ray costs both ends the same fixed CPU, whatever it carries, so the ingress
sends the requests that are waiting together, one call per group, and each result comes back
on the call's stream the moment it is ready. A request goes at once (with whatever arrived in
the same turn of the event loop) unless ``max_pending`` calls are still waiting for the model
to give their requests rows (a call's stream says ``GroupAdmitted`` when it has), or the
requests out would pass ``max_in_flight`` (the model replicas' rows and a little queue). Then
it waits, and goes with every request that waited as soon as a call is admitted or results
come back: an idle model, or one with free rows that admits what it gets at its next step,
adds no wait, and a busy one is sent groups, not one call per request. A full group of
``max_group_size`` never waits: a backlog reaches the model replicas (their queues and their
autoscaling) as full groups.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class GroupAdmitted:
    """On a group's stream: the model has given every request of the group a row."""


SendGroup = Callable[
    [list[ItemT]], AsyncIterator["tuple[int, ResultT | Exception] | GroupAdmitted"]
]
"""Sends a group in one call; yields ``GroupAdmitted`` once, and ``(index, result or
exception)`` of each item as it is ready, each index once."""


@dataclass(eq=False)
class _Member(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[ResultT]
    group: _Group[ItemT, ResultT] | None = None


@dataclass(eq=False)
class _Group(Generic[ItemT, ResultT]):
    members: list[_Member[ItemT, ResultT]]
    task: asyncio.Task[None] | None = field(default=None)
    admitted: bool = False


class CallGroups(Generic[ItemT, ResultT]):
    """Sends items through ``send`` in groups; each caller awaits its own result.

    A caller who goes away before its group is sent is left out of it; once every caller of a
    group has gone, its call is cancelled. Must be used on one event loop.
    """

    def __init__(
        self,
        send: SendGroup[ItemT, ResultT],
        max_group_size: int,
        max_in_flight: int,
        max_pending: int,
    ) -> None:
        self.max_group_size = max_group_size
        self.max_in_flight = max_in_flight
        self.max_pending = max_pending
        self._send = send
        self._waiting: deque[_Member[ItemT, ResultT]] = deque()
        self._in_flight = 0
        self._pending = 0
        self._calls: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False

    @property
    def in_flight(self) -> int:
        """Items sent and not yet answered."""
        return self._in_flight

    @property
    def pending(self) -> int:
        """Calls sent whose requests the model has not all given rows yet."""
        return self._pending

    @property
    def calls_in_flight(self) -> int:
        """Calls sent and not yet finished."""
        return len(self._calls)

    async def call(self, item: ItemT) -> ResultT:
        """``item``'s result, sent in a group with the other items waiting.

        Raises:
            Exception: The item's own error, or the error of its group's call.
        """
        loop = asyncio.get_running_loop()
        member: _Member[ItemT, ResultT] = _Member(item, loop.create_future())
        self._waiting.append(member)
        self._schedule_flush()
        try:
            return await member.future
        except asyncio.CancelledError:
            group = member.group
            if group and group.task and all(m.future.done() for m in group.members):
                group.task.cancel()
            raise

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Send full groups at once, and a partial one when no more calls wait to be admitted
        than allowed and the requests out leave room for all it holds."""
        self._flush_scheduled = False
        while self._waiting:
            if len(self._waiting) >= self.max_group_size:
                size = self.max_group_size
            else:
                size = min(self.max_group_size, self.max_in_flight - self._in_flight)
                needed = min(self.max_in_flight, len(self._waiting))
                if size < needed or self._pending >= self.max_pending:
                    return
            members = self._take_group(size)
            if members:
                self._start(_Group(members))

    def _take_group(self, size: int) -> list[_Member[ItemT, ResultT]]:
        members: list[_Member[ItemT, ResultT]] = []
        while self._waiting and len(members) < size:
            member = self._waiting.popleft()
            if not member.future.done():  # its caller has not gone away
                members.append(member)
        return members

    def _start(self, group: _Group[ItemT, ResultT]) -> None:
        for member in group.members:
            member.group = group
        self._in_flight += len(group.members)
        self._pending += 1
        task = asyncio.get_running_loop().create_task(self._run(group))
        group.task = task
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    def _admitted(self, group: _Group[ItemT, ResultT]) -> None:
        if not group.admitted:
            group.admitted = True
            self._pending -= 1
            if self._waiting:
                self._schedule_flush()

    def _answered(self, count: int) -> None:
        self._in_flight -= count
        if self._waiting:
            self._schedule_flush()

    async def _run(self, group: _Group[ItemT, ResultT]) -> None:
        members = group.members
        open_members = set(range(len(members)))
        try:
            async for event in self._send([member.item for member in members]):
                if isinstance(event, GroupAdmitted):
                    self._admitted(group)
                    continue
                self._admitted(group)  # a result means rows, whether or not it was said
                index, result = event
                if index not in open_members:
                    raise RuntimeError(f"result {index} of a group of {len(members)} is unknown")
                open_members.discard(index)
                _settle(members[index].future, result)
                self._answered(1)
            if open_members:
                raise RuntimeError(f"{len(open_members)} of a group of {len(members)} unanswered")
        except asyncio.CancelledError:
            for index in open_members:
                members[index].future.cancel()
            raise
        except Exception as exc:
            for index in open_members:
                _settle(members[index].future, exc)
        finally:
            self._admitted(group)
            self._answered(len(open_members))


def _settle(future: asyncio.Future[ResultT], result: ResultT | Exception) -> None:
    if future.done():
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
