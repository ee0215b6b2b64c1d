"""The service's work without the service: the same steps and batch policy in one process.

Each call is handled as the ingress and the model replica handle it (parse the JSON body,
decode the image in a worker thread, resize it to the model's input, batch, generate in a
worker thread), with ``@serve.batch``'s gathering rebuilt in plain asyncio (it needs a Serve
replica) in front of the replica's own ``BatchScheduler``. torch uses one thread, as
in a Ray worker. Comparing this with the service over HTTP isolates what HTTP, the proxy, the
ingress, the handle and Ray cost.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence

import torch

from benchmarks.loadgen import Call, Load, LoadResult, Reply, drive
from serve_app.batching.scheduler import BatchScheduler, QueuedRequest
from serve_app.batching.streams import RequestStream
from serve_app.config import LimitsConfig
from serve_app.contract.api import VQARequest
from serve_app.contract.errors import ServeAppError
from serve_app.images.resize import fit_to_model_input
from serve_app.images.sources import load_image
from serve_app.model.blip2 import Blip2Model
from serve_app.model.types import GenerationObserver, ModelRequest, ModelResult

TORCH_THREADS = 1
"""What Ray gives its workers (``OMP_NUM_THREADS=1``), so both sides compute alike."""


class InProcessBatcher:
    """The replica's batch policy around a ``Blip2Model``, in this process's event loop.

    Batches form as ``@serve.batch`` forms them (closed when full or ``batch_wait_timeout_s``
    after their first request) and run through the replica's own ``BatchScheduler``.
    """

    def __init__(self, model: Blip2Model, max_batch_size: int, batch_wait_timeout_s: float):
        self._model = model
        self._max_batch_size = max_batch_size
        self._wait_s = batch_wait_timeout_s
        self._queue: asyncio.Queue[QueuedRequest] = asyncio.Queue()
        self._scheduler = BatchScheduler(self._generate, max_batch_size)
        self.batch_sizes: Counter[int] = Counter()

    async def generate(self, request: ModelRequest) -> ModelResult | Exception:
        """Queue one request; its outcome once its batch has run."""
        queued = QueuedRequest(request, RequestStream())
        await self._queue.put(queued)
        *_, outcome = [event async for event in queued.stream]
        return outcome if not isinstance(outcome, str) else RuntimeError("no outcome")

    async def form_batches(self) -> None:
        """Form batches forever (cancel to stop) and hand each to the scheduler."""
        while True:
            batch = [await self._queue.get()]
            closes = time.monotonic() + self._wait_s
            while len(batch) < self._max_batch_size:
                remaining = closes - time.monotonic()
                if remaining <= 0 and self._queue.empty():
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(remaining, 0)))
                except TimeoutError:
                    break
            self._scheduler.submit(batch)

    def _generate(
        self, requests: list[ModelRequest], observer: GenerationObserver
    ) -> list[ModelResult | Exception]:
        self.batch_sizes[len(requests)] += 1
        return self._model.generate(requests, observer)


def run_in_process(
    model: Blip2Model,
    calls: Sequence[Call],
    load: Load,
    max_batch_size: int,
    batch_wait_timeout_s: float,
) -> tuple[LoadResult, Counter[int]]:
    """Run ``load`` (closed loop) in process; the result and the batch sizes that formed."""
    torch.set_num_threads(TORCH_THREADS)
    limits = LimitsConfig()
    image_input = model.image_input()
    batcher = InProcessBatcher(model, max_batch_size, batch_wait_timeout_s)

    async def send(call: Call) -> Reply:
        try:
            body = VQARequest.model_validate_json(call.body)
            pixels = await load_image(body.image, limits)
            if image_input is not None:
                pixels = await asyncio.to_thread(fit_to_model_input, pixels, image_input)
            request = ModelRequest(task="vqa", text=body.question, image=pixels, params=body.params)
            result = await batcher.generate(request)
        except ServeAppError as error:
            return Reply(str(error.status_code))
        return Reply("200" if isinstance(result, ModelResult) else type(result).__name__)

    async def main() -> LoadResult:
        batches = asyncio.create_task(batcher.form_batches())
        try:
            return await drive(send, calls, load, f"in-process {load.label}")
        finally:
            batches.cancel()

    result = asyncio.run(main())
    return result, batcher.batch_sizes
