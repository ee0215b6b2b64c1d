"""The service's work without the service: the same steps and batch policy in one process.

Each call is handled as the ingress and the model replica handle it (parse the JSON body,
decode the image in a worker thread, resize it to the model's input, batch, generate in a
worker thread), with Serve's batch policy rebuilt in plain asyncio (``@serve.batch`` needs a
Serve replica): a batch closes when full or ``batch_wait_timeout_s`` after its first request,
the next batch forms while one runs, and one batch runs at a time. torch uses one thread, as
in a Ray worker. Comparing this with the service over HTTP isolates what HTTP, the proxy, the
ingress, the handle and Ray cost.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence

import torch

from benchmarks.loadgen import Call, Load, LoadResult, drive
from serve_app.config import LimitsConfig
from serve_app.errors import ServeAppError
from serve_app.images import ModelImageInput, fit_to_model_input, load_image
from serve_app.model import Blip2Model
from serve_app.schemas import GenerationRequest, GenerationResult, VQARequest

TORCH_THREADS = 1
"""What Ray gives its workers (``OMP_NUM_THREADS=1``), so both sides compute alike."""
Pending = tuple[GenerationRequest, asyncio.Future[GenerationResult | Exception]]


class InProcessBatcher:
    """Serve's batch policy around a ``Blip2Model``, in this process's event loop."""

    def __init__(self, model: Blip2Model, max_batch_size: int, batch_wait_timeout_s: float):
        self._model = model
        self._max_batch_size = max_batch_size
        self._wait_s = batch_wait_timeout_s
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._one_batch_at_a_time = asyncio.Semaphore(1)
        self._running: set[asyncio.Task[None]] = set()
        self.batch_sizes: Counter[int] = Counter()

    async def generate(self, request: GenerationRequest) -> GenerationResult | Exception:
        """Queue one request; its result once its batch has run."""
        future: asyncio.Future[GenerationResult | Exception] = (
            asyncio.get_running_loop().create_future()
        )
        await self._queue.put((request, future))
        return await future

    async def run_batches(self) -> None:
        """Form batches forever (cancel to stop), each run as soon as the previous one ends."""
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
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[Pending]) -> None:
        async with self._one_batch_at_a_time:
            self.batch_sizes[len(batch)] += 1
            requests = [request for request, _ in batch]
            results = await asyncio.to_thread(self._model.generate, requests)
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)


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
    image_input = ModelImageInput.from_description(model.describe())
    batcher = InProcessBatcher(model, max_batch_size, batch_wait_timeout_s)

    async def send(call: Call) -> str:
        try:
            body = VQARequest.model_validate_json(call.body)
            pixels = await load_image(body.image, limits)
            if image_input is not None:
                pixels = await asyncio.to_thread(fit_to_model_input, pixels, image_input)
            request = GenerationRequest(
                task="vqa", text=body.question, image=pixels, params=body.params
            )
            result = await batcher.generate(request)
        except ServeAppError as error:
            return str(error.status_code)
        return "200" if isinstance(result, GenerationResult) else type(result).__name__

    async def main() -> LoadResult:
        batches = asyncio.create_task(batcher.run_batches())
        try:
            return await drive(send, calls, load, f"in-process {load.label}")
        finally:
            batches.cancel()

    result = asyncio.run(main())
    return result, batcher.batch_sizes
