"""``RetrievalHandlers``: embeddings and ranking, shared by HTTP routes and handle calls.

Like the generation handlers: limits are checked and images decoded here (never on the GPU
replica), the retrieval deployment is called within the request's deadline, and the response
is built from its typed results. No HTTP and no Ray here.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Protocol

import numpy as np

from serve_app.config import LimitsConfig, RetrievalModelConfig
from serve_app.contract.api import ImageSource, RetrievalModelCard
from serve_app.contract.errors import InvalidRequestError, ServeAppError
from serve_app.contract.retrieval import (
    Embedding,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbeddingsUsage,
    RankRequest,
    RankResponse,
    RankResult,
)
from serve_app.ingress.model_calls import ImageObserver, ModelCalls
from serve_app.model.retrieval_types import (
    ImageEmbedding,
    ImageEmbeddingRequest,
    MatchRequest,
    MatchResult,
    RetrievalReplicaInfo,
    RetrievalRequest,
    RetrievalResult,
    TextEmbedding,
    TextEmbeddingRequest,
    text_params,
)
from serve_app.model.types import ModelImageInput


class RetrievalBackend(Protocol):
    """The retrieval deployment as handlers see it (``RetrievalClient``, or a fake in tests)."""

    async def run_group(
        self, requests: list[RetrievalRequest]
    ) -> list[RetrievalResult | Exception]: ...

    async def match(self, request: MatchRequest) -> MatchResult: ...

    async def describe(self) -> RetrievalReplicaInfo: ...


class RetrievalHandlers:
    """Validates embeddings and rank requests, decodes their images and asks the model."""

    def __init__(
        self,
        model: RetrievalBackend,
        config: RetrievalModelConfig,
        limits: LimitsConfig,
        observer: ImageObserver | None = None,
    ) -> None:
        self._model = model
        self._config = config
        self._limits = limits
        self._started = int(time.time())
        self.calls = ModelCalls(model.describe, self._image_input, limits, observer)

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        """Embed texts (``input``) and images; texts first in the response, then images."""
        texts, images = request.texts, request.images or []
        if isinstance(request.input, list) and not request.input:
            raise InvalidRequestError("input is an empty list", "input")
        if len(texts) + len(images) > self._config.max_inputs:
            raise InvalidRequestError(
                f"at most {self._config.max_inputs} texts and images in one request",
                "input" if texts else "images",
            )
        text_params = (
            ["input"]
            if isinstance(request.input, str)
            else [f"input[{i}]" for i in range(len(texts))]
        )
        for text, param in zip(texts, text_params, strict=True):
            self._check_chars(text, param)

        async def run() -> list[RetrievalResult]:
            with self.calls.admission.admitted():
                if request.dimensions is not None:
                    await self._check_dimensions(request.dimensions)
                pixels = await self._decode_all(images, "images")
                calls: list[RetrievalRequest] = [
                    TextEmbeddingRequest(text=text, param=param)
                    for text, param in zip(texts, text_params, strict=True)
                ]
                calls += [ImageEmbeddingRequest(image=image) for image in pixels]
                outcomes = await self.calls.ask(self._model.run_group(calls))
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    raise outcome
            return [outcome for outcome in outcomes if not isinstance(outcome, Exception)]

        results = await self.calls.within_deadline(run())
        data: list[Embedding] = []
        tokens = 0
        for index, result in enumerate(results):
            if isinstance(result, TextEmbedding):
                tokens += result.tokens
                vector = _encoded(result.vector, request.encoding_format)
                data.append(Embedding(index=index, embedding=vector, input_type="text"))
            elif isinstance(result, ImageEmbedding):
                pooled = request.image_embedding == "pooled"
                array = result.pooled() if pooled else result.queries
                vector = _encoded(array, request.encoding_format)
                data.append(Embedding(index=index, embedding=vector, input_type="image"))
        usage = EmbeddingsUsage(prompt_tokens=tokens, total_tokens=tokens)
        return EmbeddingsResponse(data=data, model=self._config.name, usage=usage)

    async def rank(self, request: RankRequest) -> RankResponse:
        """Rank candidate texts for an image, or candidate images for a text, best first."""
        candidates = request.texts if request.texts is not None else request.images
        assert candidates is not None  # the request model guarantees one side
        param = "texts" if request.texts is not None else "images"
        if len(candidates) > self._config.max_candidates:
            raise InvalidRequestError(
                f"at most {self._config.max_candidates} candidates in one request", param
            )
        if request.texts is not None and request.image is not None:
            texts, sources, text_param, image_param = request.texts, [request.image], None, "image"
        else:
            assert request.text is not None and request.images is not None
            texts, sources, text_param = [request.text], request.images, "text"
            image_param = "images"
        for text, name in zip(texts, text_params(len(texts), text_param), strict=True):
            self._check_chars(text, name)

        async def run() -> MatchResult:
            with self.calls.admission.admitted():
                pixels = await self._decode_all(sources, image_param)
                match = MatchRequest(images=pixels, texts=texts, text_param=text_param)
                return await self.calls.ask(self._model.match(match))

        result = await self.calls.within_deadline(run())
        results = [
            RankResult(
                index=i,
                text=texts[i] if request.texts is not None else None,
                score=result.scores[i],
                itm=result.itm[i],
            )
            for i in range(len(candidates))
        ]
        results.sort(key=lambda r: r.itm if request.sort_by == "itm" else r.score, reverse=True)
        usage = EmbeddingsUsage(prompt_tokens=result.tokens, total_tokens=result.tokens)
        return RankResponse(model=self._config.name, results=results[: request.top_k], usage=usage)

    async def card(self) -> RetrievalModelCard:
        """The retrieval model as ``/v1/models`` lists it, with its live batching settings."""
        info = await self.calls.within_deadline(self._info())
        return RetrievalModelCard(
            **info.model.model_dump(exclude={"image_input", "max_text_tokens"}),
            **info.batching.model_dump(exclude={"max_rows", "max_prefills_per_step"}),
            id=self._config.name,
            created=self._started,
            max_text_tokens=info.model.max_text_tokens,
            max_inputs=self._config.max_inputs,
            max_candidates=self._config.max_candidates,
        )

    async def _check_dimensions(self, dimensions: int) -> None:
        """A caller's ``dimensions`` must be the model's vector length (nothing is truncated)."""
        length = (await self._info()).model.dimensions
        if dimensions != length:
            raise InvalidRequestError(
                f"dimensions must be {length}, this model's vector length", "dimensions"
            )

    async def _info(self) -> RetrievalReplicaInfo:
        return await self.calls.ask(self._model.describe())

    async def _image_input(self) -> ModelImageInput | None:
        return (await self._model.describe()).model.image_input

    async def _decode_all(self, images: list[ImageSource], param: str) -> list[np.ndarray]:
        """Decode every image at once; an image's error names it (``images[2].url``)."""

        async def decode(index: int, image: ImageSource) -> np.ndarray:
            try:
                return await self.calls.decode(image)
            except ServeAppError as error:
                name = param if param == "image" else f"{param}[{index}]"
                if error.param and error.param.startswith("image"):
                    error.param = name + error.param.removeprefix("image")
                raise

        return list(await asyncio.gather(*(decode(i, image) for i, image in enumerate(images))))

    def _check_chars(self, text: str, param: str) -> None:
        if not text:
            raise InvalidRequestError(f"{param} is empty", param)
        if len(text) > self._limits.max_prompt_chars:
            raise InvalidRequestError(
                f"{param} is longer than {self._limits.max_prompt_chars} characters", param
            )


def _encoded(array: np.ndarray, encoding: str) -> list[float] | list[list[float]] | str:
    if encoding == "base64":
        return base64.b64encode(array.astype("<f4").tobytes()).decode("ascii")
    values: list[float] | list[list[float]] = array.astype(np.float32).tolist()
    return values
