"""The service's work without the service: the same steps and batch policy in one process.

Each call is handled as the ingress and the model replica handle it (parse the JSON body,
decode the image and resize it to the model's input, hand it to the replica's own
``BatchScheduler``, which starts at once when idle and merges what waits while the model is
busy, generate in a worker thread). torch uses one thread, as in a Ray worker. Comparing this
with the service over HTTP isolates what HTTP, the proxy, the ingress, the handle and Ray cost.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

import torch

from benchmarks.loadgen import Call, Load, LoadResult, Reply, drive
from serve_app.batching.scheduler import BatchScheduler, QueuedRequest
from serve_app.batching.streams import RequestStream
from serve_app.config import LimitsConfig
from serve_app.contract.api import VQARequest
from serve_app.contract.errors import ServeAppError
from serve_app.images.sources import load_image
from serve_app.model.blip2 import Blip2Model
from serve_app.model.types import GenerationObserver, ModelRequest, ModelResult

TORCH_THREADS = 1
"""What Ray gives its workers (``OMP_NUM_THREADS=1``), so both sides compute alike."""


class InProcessBatcher:
    """The replica's batch policy around a ``Blip2Model``: requests go to its ``BatchScheduler``
    as they come, as the ingress's groups do."""

    def __init__(self, model: Blip2Model, max_batch_size: int):
        self._model = model
        self._scheduler: BatchScheduler[ModelRequest, ModelResult] = BatchScheduler(
            self._generate, max_batch_size
        )
        self.batch_sizes: Counter[int] = Counter()

    async def generate(self, request: ModelRequest) -> ModelResult | Exception:
        """One request's outcome once its batch has run."""
        stream: RequestStream[ModelResult] = RequestStream()
        queued = QueuedRequest(request, stream)
        self._scheduler.submit([queued])
        return await queued.stream.outcome()

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
) -> tuple[LoadResult, Counter[int]]:
    """Run ``load`` (closed loop) in process; the result and the batch sizes that formed."""
    torch.set_num_threads(TORCH_THREADS)
    limits = LimitsConfig()
    image_input = model.image_input()
    batcher = InProcessBatcher(model, max_batch_size)

    async def send(call: Call) -> Reply:
        try:
            body = VQARequest.model_validate_json(call.body)
            pixels = await load_image(body.image, limits, fit=image_input)
            request = ModelRequest(task="vqa", text=body.question, image=pixels, params=body.params)
            result = await batcher.generate(request)
        except ServeAppError as error:
            return Reply(str(error.status_code))
        return Reply("200" if isinstance(result, ModelResult) else type(result).__name__)

    result = asyncio.run(drive(send, calls, load, f"in-process {load.label}"))
    return result, batcher.batch_sizes
