"""``BatchScheduler`` and ``RequestBatcher``: no wait when idle, merging batches that wait for a
busy model, groups, limits, streams, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np

from serve_app.batching.batcher import RequestBatcher
from serve_app.batching.scheduler import BatchScheduler, QueuedRequest
from serve_app.batching.streams import Outcome, RequestStream
from serve_app.config import BatchingConfig
from serve_app.contract.errors import GenerationFailedError
from serve_app.model.types import GenerationObserver, ModelRequest, ModelResult


class GatedFakeModel:
    """A fake model whose batches wait until the test opens the gate; records every batch.

    Each request's text is streamed word by word, then echoed as its result.
    """

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.started = threading.Event()

    def __call__(
        self, requests: list[ModelRequest], observer: GenerationObserver
    ) -> Sequence[Outcome]:
        self.batches.append([r.text for r in requests])
        self.started.set()
        self.gate.wait(timeout=10)
        for index, request in enumerate(requests):
            for word in request.text.split():
                observer.on_text(index, word + " ")
        return [ModelResult(text=r.text, prompt_tokens=1, completion_tokens=1) for r in requests]


IMAGE = np.zeros((4, 4, 3), dtype=np.uint8)


def queued(*texts: str) -> list[QueuedRequest]:
    return [
        QueuedRequest(ModelRequest(task="prompt", text=text, image=IMAGE), RequestStream())
        for text in texts
    ]


async def collect(stream: RequestStream) -> list[str | Outcome]:
    return [event async for event in stream]


async def wait_for(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 10)


def test_batches_that_form_while_the_model_is_busy_run_as_one_full_batch() -> None:
    async def scenario() -> list[list[str]]:
        model = GatedFakeModel()
        scheduler = BatchScheduler(model, max_batch_size=4)
        first = queued("a")
        scheduler.submit(first)
        await wait_for(model.started)
        later = [queued("b", "c"), queued("d"), queued("e", "f")]
        for group in later:
            scheduler.submit(group)
        model.gate.set()
        everyone = first + [q for group in later for q in group]
        await asyncio.gather(*(collect(q.stream) for q in everyone))
        return model.batches

    assert asyncio.run(scenario()) == [["a"], ["b", "c", "d", "e"], ["f"]]


def test_without_merging_each_group_runs_as_its_own_batch() -> None:
    async def scenario() -> list[list[str]]:
        model = GatedFakeModel()
        scheduler = BatchScheduler(model, max_batch_size=4, merge=False)
        first = queued("a")
        scheduler.submit(first)
        await wait_for(model.started)
        later = [queued("b", "c"), queued("d")]
        for group in later:
            scheduler.submit(group)
        model.gate.set()
        everyone = first + [q for group in later for q in group]
        await asyncio.gather(*(collect(q.stream) for q in everyone))
        return model.batches

    assert asyncio.run(scenario()) == [["a"], ["b", "c"], ["d"]]


def test_each_request_gets_its_own_streamed_text_then_its_result() -> None:
    async def scenario() -> dict[str, list[str | Outcome]]:
        model = GatedFakeModel()
        model.gate.set()
        scheduler = BatchScheduler(model, max_batch_size=8)
        requests = queued("one two three", "four five") + queued("six")
        scheduler.submit(requests[:2])
        scheduler.submit(requests[2:])
        events = await asyncio.gather(*(collect(q.stream) for q in requests))
        return {q.request.text: e for q, e in zip(requests, events, strict=True)}

    for text, events in asyncio.run(scenario()).items():
        *deltas, outcome = events
        assert "".join(str(delta) for delta in deltas) == text + " "
        assert isinstance(outcome, ModelResult) and outcome.text == text


def test_a_request_whose_caller_left_before_its_batch_is_not_run() -> None:
    async def scenario() -> list[list[str]]:
        model = GatedFakeModel()
        scheduler = BatchScheduler(model, max_batch_size=4)
        scheduler.submit(queued("busy"))
        await wait_for(model.started)
        waiting = queued("stays", "leaves", "stays too")
        waiting[1].stream.cancel()
        scheduler.submit(waiting)
        model.gate.set()
        await asyncio.gather(collect(waiting[0].stream), collect(waiting[2].stream))
        return model.batches

    assert asyncio.run(scenario()) == [["busy"], ["stays", "stays too"]]


def test_a_lower_max_batch_size_applies_to_the_next_batch() -> None:
    async def scenario() -> list[list[str]]:
        model = GatedFakeModel()
        model.gate.set()
        scheduler = BatchScheduler(model, max_batch_size=8)
        scheduler.max_batch_size = 2
        requests = queued("a", "b", "c", "d", "e")
        scheduler.submit(requests)
        await asyncio.gather(*(collect(q.stream) for q in requests))
        return model.batches

    assert asyncio.run(scenario()) == [["a", "b"], ["c", "d"], ["e"]]


def test_a_batch_that_raises_fails_its_requests_and_the_next_batch_still_runs() -> None:
    calls: list[int] = []

    def flaky(requests: list[ModelRequest], observer: GenerationObserver) -> Sequence[Outcome]:
        calls.append(len(requests))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return [ModelResult(text="ok", prompt_tokens=1, completion_tokens=1)] * len(requests)

    async def scenario() -> tuple[list[str | Outcome], list[str | Outcome]]:
        scheduler = BatchScheduler(flaky, max_batch_size=1)
        first, second = queued("x", "y")
        scheduler.submit([first, second])
        return await collect(first.stream), await collect(second.stream)

    failed, succeeded = asyncio.run(scenario())
    assert len(failed) == 1 and isinstance(failed[0], GenerationFailedError)
    assert "device lost" not in str(failed[0])
    assert len(succeeded) == 1 and isinstance(succeeded[0], ModelResult)
    assert calls == [1, 1]


def test_a_request_that_finds_the_model_idle_does_not_wait_for_company() -> None:
    async def scenario() -> tuple[float, list[list[str]]]:
        model = GatedFakeModel()
        model.gate.set()
        batcher = RequestBatcher(BatchScheduler(model), max_ongoing_requests=16)
        batcher.configure(BatchingConfig(max_batch_size=8, batch_wait_timeout_s=5.0))
        started = time.perf_counter()
        events = [event async for event in batcher.events(queued("alone")[0].request)]
        assert isinstance(events[-1], ModelResult)
        return time.perf_counter() - started, model.batches

    elapsed, batches = asyncio.run(scenario())
    assert batches == [["alone"]] and elapsed < 1.0  # not the 5 s batch wait


def test_a_group_sent_in_one_call_joins_the_queue_at_once_and_merges() -> None:
    async def scenario() -> tuple[list[Outcome], list[list[str]]]:
        model = GatedFakeModel()
        batcher = RequestBatcher(BatchScheduler(model), max_ongoing_requests=16)
        batcher.configure(BatchingConfig(max_batch_size=8, batch_wait_timeout_s=5.0))
        busy = asyncio.create_task(batcher.outcomes([queued("busy")[0].request]))
        await wait_for(model.started)
        group = [q.request for q in queued("a", "b")] + [q.request for q in queued("c")]
        waiting = asyncio.create_task(batcher.outcomes(group))
        await asyncio.sleep(0.05)
        model.gate.set()
        await busy
        return await waiting, model.batches

    outcomes, batches = asyncio.run(scenario())
    assert [o.text for o in outcomes if isinstance(o, ModelResult)] == ["a", "b", "c"]
    assert batches == [["busy"], ["a", "b", "c"]]


def test_a_group_whose_caller_leaves_is_not_run() -> None:
    async def scenario() -> list[list[str]]:
        model = GatedFakeModel()
        batcher = RequestBatcher(BatchScheduler(model), max_ongoing_requests=16)
        busy = asyncio.create_task(batcher.outcomes([queued("busy")[0].request]))
        await wait_for(model.started)
        leaving = asyncio.create_task(batcher.outcomes([q.request for q in queued("x", "y")]))
        await asyncio.sleep(0.05)
        leaving.cancel()
        await asyncio.sleep(0.05)
        model.gate.set()
        await busy
        await asyncio.sleep(0.05)
        return model.batches

    assert asyncio.run(scenario()) == [["busy"]]
