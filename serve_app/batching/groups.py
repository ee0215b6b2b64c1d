"""``CallGroups``: concurrent requests share one call to the model deployment (no Ray).

Every call across Ray costs both ends the same fixed CPU, whatever it carries, so under load
the ingress sends the requests that are waiting together, one call per group. A request that
finds fewer than ``max_in_flight`` calls out goes at once (with whatever arrived in the same
turn of the event loop), so an idle service adds no wait; otherwise it waits for a call to
come back and then goes with every request that waited, in groups of at most
``max_group_size``. A full group never waits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

SendGroup = Callable[[list[ItemT]], Awaitable[Sequence[ResultT | Exception]]]
"""Sends a group in one call; returns one result or exception per item, in order."""


@dataclass(eq=False)
class _Member(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[ResultT]
    group: _Group[ItemT, ResultT] | None = None


@dataclass(eq=False)
class _Group(Generic[ItemT, ResultT]):
    members: list[_Member[ItemT, ResultT]]
    task: asyncio.Task[None] | None = field(default=None)


class CallGroups(Generic[ItemT, ResultT]):
    """Sends items through ``send`` in groups; each caller awaits its own result.

    A caller who goes away before its group is sent is left out of it; once every caller of a
    group has gone, its call is cancelled. Must be used on one event loop.
    """

    def __init__(
        self, send: SendGroup[ItemT, ResultT], max_group_size: int, max_in_flight: int
    ) -> None:
        self.max_group_size = max_group_size
        self.max_in_flight = max_in_flight
        self._send = send
        self._waiting: deque[_Member[ItemT, ResultT]] = deque()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False

    @property
    def calls_in_flight(self) -> int:
        """Calls sent and not yet answered."""
        return len(self._in_flight)

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
        self._flush_scheduled = False
        while self._waiting and (
            len(self._in_flight) < self.max_in_flight or len(self._waiting) >= self.max_group_size
        ):
            members = self._take_group()
            if members:
                self._start(_Group(members))

    def _take_group(self) -> list[_Member[ItemT, ResultT]]:
        members: list[_Member[ItemT, ResultT]] = []
        while self._waiting and len(members) < self.max_group_size:
            member = self._waiting.popleft()
            if not member.future.done():  # its caller has not gone away
                members.append(member)
        return members

    def _start(self, group: _Group[ItemT, ResultT]) -> None:
        for member in group.members:
            member.group = group
        task = asyncio.get_running_loop().create_task(self._run(group))
        group.task = task
        self._in_flight.add(task)
        task.add_done_callback(self._call_done)

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._waiting:
            self._schedule_flush()

    async def _run(self, group: _Group[ItemT, ResultT]) -> None:
        members = group.members
        try:
            results = await self._send([member.item for member in members])
            if len(results) != len(members):
                raise RuntimeError(f"{len(results)} results for a group of {len(members)}")
        except asyncio.CancelledError:
            for member in members:
                member.future.cancel()
            raise
        except Exception as exc:
            for member in members:
                if not member.future.done():
                    member.future.set_exception(exc)
            return
        for member, result in zip(members, results, strict=True):
            if member.future.done():
                continue
            if isinstance(result, Exception):
                member.future.set_exception(result)
            else:
                member.future.set_result(result)
