"""Async load generator, over HTTP (aiohttp) or gRPC (grpc.aio): closed-loop concurrency or
open-loop Poisson arrivals.

Every run is bounded twice, by a request count and by a time limit, and stops by itself. It
talks to loopback addresses only. Latency is measured per request from the moment it was due
(its arrival time in an open loop), so a server that falls behind is not flattered by a
client that waits for it.

A closed loop measures the steady state: its clients run without a pause from the warm-up into
the measured window, which opens when the warm-up's requests have completed and closes at the
time limit. Throughput counts the 200s that arrived inside the window (whenever they were
sent, so a server slower than the window is not measured as idle); the requests still
in flight when it closes are awaited and their latencies and statuses recorded, but the drain
is not timed. A run that reaches its request count first is timed to its last response. An
open loop's throughput is its successful responses over the span of its arrivals.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import grpc
import numpy as np
from tqdm import tqdm

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
GRACE_S = 60.0
"""How long an open loop waits for requests still in flight after its time limit."""


@dataclass(frozen=True)
class Call:
    """One request to send: a path and a prepared body (for gRPC: the method's path and the
    serialized request message)."""

    path: str
    body: bytes
    content_type: str = "application/json"


@dataclass(frozen=True)
class Load:
    """A load shape: ``concurrency`` clients in a closed loop, or ``rate`` arrivals per second."""

    concurrency: int | None = None
    rate: float | None = None
    max_requests: int = 500
    time_limit_s: float = 30.0
    warmup_requests: int = 0
    honour_retry_after: bool = False
    """Closed loop: a client told to retry later (``retry-after-ms`` or ``Retry-After``) waits
    that long before its next request."""

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of concurrency or rate")

    @property
    def label(self) -> str:
        """``c16`` for 16 concurrent clients, ``r50`` for 50 arrivals per second."""
        return f"c{self.concurrency}" if self.concurrency is not None else f"r{self.rate:g}"


@dataclass
class LoadResult:
    """What one load run measured."""

    load: Load
    duration_s: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    shed_latencies_s: list[float] = field(default_factory=list)
    ok_in_window: int = 0

    @property
    def ok(self) -> int:
        """Requests answered with 200."""
        return self.statuses["200"]

    @property
    def throughput(self) -> float:
        """Successful responses per second over the measured window."""
        return self.ok_in_window / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_ms(self, q: float, shed: bool = False) -> float:
        """Latency percentile ``q`` (0-100) of the successful requests (``shed``: of the
        503s), in milliseconds."""
        latencies = self.shed_latencies_s if shed else self.latencies_s
        if not latencies:
            return float("nan")
        return float(np.percentile(latencies, q) * 1000)

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: throughput, latency percentiles and every status seen."""
        load = self.load
        return {
            "mode": "closed" if load.concurrency is not None else "open",
            "concurrency": load.concurrency,
            "rate": load.rate,
            "requests": sum(self.statuses.values()),
            "ok": self.ok,
            "duration_s": round(self.duration_s, 3),
            "throughput_rps": round(self.throughput, 2),
            "p50_ms": round(self.percentile_ms(50), 1),
            "p90_ms": round(self.percentile_ms(90), 1),
            "p99_ms": round(self.percentile_ms(99), 1),
            "mean_ms": round(float(np.mean(self.latencies_s)) * 1000, 1)
            if self.latencies_s
            else float("nan"),
            "statuses": dict(sorted(self.statuses.items())),
            **(
                {
                    "p50_503_ms": round(self.percentile_ms(50, shed=True), 1),
                    "p99_503_ms": round(self.percentile_ms(99, shed=True), 1),
                }
                if self.shed_latencies_s
                else {}
            ),
        }


def check_loopback(base_url: str) -> None:
    """Refuse anything but a loopback address: benchmarks never load another machine."""
    host = urlsplit(base_url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"the load generator only targets loopback addresses, not {host!r}")


class Reply(NamedTuple):
    """A call's outcome: its status (``"200"``, ``"503"``... or an error's name; a gRPC call's
    OK is ``"200"``, RESOURCE_EXHAUSTED ``"503"``, any other code its name) and the
    ``Retry-After`` seconds it asked for, if any."""

    status: str
    retry_after_s: float = 0.0


Sender = Callable[[Call], Awaitable[Reply]]
"""Sends one call and returns its ``Reply``."""


def run_load(base_url: str, calls: Sequence[Call], load: Load, title: str = "") -> LoadResult:
    """Run ``load`` over HTTP against ``base_url`` (after its warm-up)."""
    check_loopback(base_url)
    return asyncio.run(_over_http(base_url, calls, load, title or load.label))


async def _over_http(base_url: str, calls: Sequence[Call], load: Load, title: str) -> LoadResult:
    connections = load.concurrency or min(load.max_requests, 1000)
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=120.0, connect=10.0)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as session:

        async def send(call: Call) -> Reply:
            try:
                headers = {"content-type": call.content_type}
                async with session.post(call.path, data=call.body, headers=headers) as response:
                    await response.read()
                    return Reply(str(response.status), _retry_after_s(response.headers))
            except (aiohttp.ClientError, TimeoutError) as error:
                return Reply(type(error).__name__)

        return await drive(send, calls, load, title)


def run_grpc_load(target: str, calls: Sequence[Call], load: Load, title: str = "") -> LoadResult:
    """Run ``load`` over gRPC against ``target`` (``host:port``), after its warm-up."""
    check_loopback(f"grpc://{target}")
    return asyncio.run(_over_grpc(target, calls, load, title or load.label))


async def _over_grpc(target: str, calls: Sequence[Call], load: Load, title: str) -> LoadResult:
    async with grpc.aio.insecure_channel(target) as channel:
        methods: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {
            call.path: channel.unary_unary(call.path) for call in calls
        }

        async def send(call: Call) -> Reply:
            try:
                await methods[call.path](call.body, timeout=120.0)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    trailing = dict(error.trailing_metadata() or ())
                    return Reply("503", float(trailing.get("retry-after-ms", 0)) / 1000)
                return Reply(code.name)
            return Reply("200")

        return await drive(send, calls, load, title)


def _retry_after_s(headers: Mapping[str, str]) -> float:
    """The wait a 503 asks for, as the OpenAI client reads it: ``retry-after-ms`` first."""
    if "retry-after-ms" in headers:
        return float(headers["retry-after-ms"]) / 1000
    return float(headers.get("Retry-After", "0"))


async def drive(send: Sender, calls: Sequence[Call], load: Load, title: str) -> LoadResult:
    """Run ``load`` through ``send``: its warm-up (not recorded), then the measured run."""
    result = LoadResult(load)
    with tqdm(total=load.max_requests, desc=title, unit="req", leave=False) as bar:
        if load.concurrency is not None:
            await _closed_loop(send, calls, load, result, bar)
        else:
            if load.warmup_requests:
                warmup = Load(
                    concurrency=4,
                    max_requests=0,
                    time_limit_s=load.time_limit_s,
                    warmup_requests=load.warmup_requests,
                )
                await _closed_loop(send, calls, warmup, LoadResult(warmup), None)
            await _open_loop(send, calls, load, result, bar)
    return result


async def _closed_loop(
    send: Sender,
    calls: Sequence[Call],
    load: Load,
    result: LoadResult,
    bar: tqdm[Any] | None,
) -> None:
    assert load.concurrency is not None
    warmup_ends = time.perf_counter() + load.time_limit_s
    warmup_left = load.warmup_requests
    window: list[float] = []  # [opens, closes] once the warm-up is over
    answered: list[float] = []  # when each 200 arrived, warm-up included
    issued = 0

    def open_window(now: float) -> None:
        window.extend([now, now + load.time_limit_s])

    if not warmup_left:
        open_window(time.perf_counter())

    async def client_loop() -> None:
        nonlocal issued, warmup_left
        while True:
            now = time.perf_counter()
            if not window and now >= warmup_ends:
                open_window(now)
            measured = bool(window)
            if measured and (issued >= load.max_requests or now >= window[1]):
                return
            call = calls[issued % len(calls)]
            issued += measured
            reply = await send(call)
            done = time.perf_counter()
            if reply.status == "200":
                answered.append(done)
            if measured:
                result.statuses[reply.status] += 1
                if reply.status == "200":
                    result.latencies_s.append(done - now)
                elif reply.status == "503":
                    result.shed_latencies_s.append(done - now)
                if bar is not None:
                    bar.update()
            else:
                warmup_left -= 1
                if warmup_left <= 0 and not window:
                    open_window(done)
            if load.honour_retry_after and reply.retry_after_s:
                await asyncio.sleep(reply.retry_after_s)

    await asyncio.gather(*(client_loop() for _ in range(load.concurrency)))
    if not window:
        return
    # Stopped by the time limit: the window ends there. By the request count: at the last answer.
    closes = window[1] if issued < load.max_requests else max(answered, default=window[0])
    result.duration_s = closes - window[0]
    result.ok_in_window = sum(window[0] <= done <= closes for done in answered)


async def _timed(
    send: Sender, call: Call, due: float, result: LoadResult, bar: tqdm[Any] | None
) -> None:
    reply = await send(call)
    result.statuses[reply.status] += 1
    if reply.status == "200":
        result.latencies_s.append(time.perf_counter() - due)
        result.ok_in_window += 1
    elif reply.status == "503":
        result.shed_latencies_s.append(time.perf_counter() - due)
    if bar is not None:
        bar.update()


async def _open_loop(
    send: Sender,
    calls: Sequence[Call],
    load: Load,
    result: LoadResult,
    bar: tqdm[Any] | None,
) -> None:
    assert load.rate is not None
    arrivals = random.Random(0)
    started = time.perf_counter()
    due = started
    tasks: list[asyncio.Task[None]] = []
    for issued in range(load.max_requests):
        due += arrivals.expovariate(load.rate)
        if due - started > load.time_limit_s:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        call = calls[issued % len(calls)]
        tasks.append(asyncio.create_task(_timed(send, call, due, result, bar)))
    done, pending = await asyncio.wait(tasks, timeout=GRACE_S) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    if pending:
        result.statuses["unfinished"] += len(pending)
    result.duration_s = min(due - started, load.time_limit_s) if done else 0.0
