"""The embeddings and rank handlers without Ray: the tiny retrieval model runs in process
behind an in-process stand-in for its deployment."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from serve_app.config import BatchingConfig, LimitsConfig, ModelConfig, RetrievalModelConfig
from serve_app.contract.api import ImageSource, VQARequest
from serve_app.contract.errors import ModelNotFoundError, ServeAppError
from serve_app.contract.retrieval import EmbeddingsRequest, RankRequest
from serve_app.http.body import validate
from serve_app.ingress.handlers import Blip2Handlers
from serve_app.ingress.retrieval import RetrievalHandlers
from serve_app.model.retrieval import Blip2Retrieval
from serve_app.model.retrieval_types import (
    MatchRequest,
    MatchResult,
    RetrievalReplicaInfo,
    RetrievalRequest,
    RetrievalResult,
)
from tests.support.fakes import FakeModelBackend
from tests.support.images import image_bytes

CONFIG = RetrievalModelConfig(model_id="tiny", max_inputs=4, max_candidates=3)
TEXTS = ["a cat sitting on a red sofa", "the car is blue", "two children playing football"]


class InProcessRetrieval:
    """Stands in for the retrieval deployment: runs the real model in process, records calls."""

    def __init__(self, model: Blip2Retrieval) -> None:
        self.model = model
        self.sent: list[Sequence[RetrievalRequest]] = []

    async def run_group(
        self, requests: list[RetrievalRequest]
    ) -> list[RetrievalResult | Exception]:
        self.sent.append(requests)
        return self.model.run(requests)

    async def match(self, request: MatchRequest) -> MatchResult:
        self.sent.append([request])
        result = self.model.run([request])[0]
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, MatchResult)
        return result

    async def describe(self) -> RetrievalReplicaInfo:
        return RetrievalReplicaInfo(model=self.model.info(), batching=BatchingConfig())


@pytest.fixture
def backend(retrieval_model: Blip2Retrieval) -> InProcessRetrieval:
    return InProcessRetrieval(retrieval_model)


@pytest.fixture
def handlers(backend: InProcessRetrieval) -> RetrievalHandlers:
    return RetrievalHandlers(backend, CONFIG, LimitsConfig(max_prompt_chars=100))


def png(index: int) -> ImageSource:
    return ImageSource.from_bytes(image_bytes(index))


def embeddings(handlers: RetrievalHandlers, **fields: Any) -> Any:
    return asyncio.run(handlers.embeddings(validate(EmbeddingsRequest, fields)))


def rank(handlers: RetrievalHandlers, **fields: Any) -> Any:
    return asyncio.run(handlers.rank(validate(RankRequest, fields)))


def error_of(call: Any) -> ServeAppError:
    with pytest.raises(ServeAppError) as caught:
        call()
    return caught.value


def test_texts_then_images_come_back_as_unit_vectors_in_openais_shape(
    handlers: RetrievalHandlers, retrieval_model: Blip2Retrieval
) -> None:
    response = embeddings(handlers, input=TEXTS[:2], images=[{"data": png(1).data}])
    assert (response.object, response.model) == ("list", "tiny")
    assert [(d.index, d.input_type) for d in response.data] == [
        (0, "text"),
        (1, "text"),
        (2, "image"),
    ]
    vectors = np.array([d.embedding for d in response.data])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[:2], retrieval_model.embed_texts(TEXTS[:2]), atol=1e-5)
    tokens = sum(len(ids) for ids in retrieval_model._tokenizer(TEXTS[:2])["input_ids"])
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens


def test_query_vectors_score_texts_as_rank_does(handlers: RetrievalHandlers) -> None:
    queries = embeddings(handlers, images=[{"data": png(2).data}], image_embedding="queries")
    texts = embeddings(handlers, input=TEXTS)
    matrix = np.array(queries.data[0].embedding)
    vectors = np.array([d.embedding for d in texts.data])
    ranked = rank(handlers, image={"data": png(2).data}, texts=TEXTS, sort_by="score")
    by_index = {r.index: r.score for r in ranked.results}
    np.testing.assert_allclose(
        [by_index[i] for i in range(3)], (matrix @ vectors.T).max(axis=0), atol=1e-5
    )


def test_base64_holds_the_same_float32_vector(handlers: RetrievalHandlers) -> None:
    floats = embeddings(handlers, input="the car is blue")
    encoded = embeddings(handlers, input="the car is blue", encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(encoded.data[0].embedding), dtype="<f4")
    np.testing.assert_allclose(decoded, floats.data[0].embedding, atol=0)


def test_rank_sorts_best_first_by_the_chosen_key_and_keeps_top_k(
    handlers: RetrievalHandlers,
) -> None:
    by_itm = rank(handlers, image={"data": png(3).data}, texts=TEXTS)
    assert [r.itm for r in by_itm.results] == sorted((r.itm for r in by_itm.results), reverse=True)
    assert sorted(r.index for r in by_itm.results) == [0, 1, 2]
    assert all(r.text == TEXTS[r.index] for r in by_itm.results)
    top = rank(handlers, image={"data": png(3).data}, texts=TEXTS, sort_by="score", top_k=2)
    assert len(top.results) == 2 and top.results[0].score >= top.results[1].score
    images = rank(handlers, text=TEXTS[0], images=[{"data": png(i).data} for i in range(3)])
    assert sorted(r.index for r in images.results) == [0, 1, 2]
    assert all(r.text is None for r in images.results)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": ["a", ""]}, "input[1]"),
        ({"input": []}, "input"),
        ({"images": []}, None),
        ({"input": ["a", "b", "c"], "images": [{"data": "x"}, {"data": "y"}]}, "input"),
        ({"input": "x" * 101}, "input"),
        ({"input": ["ok", "x" * 101]}, "input[1]"),
        ({"input": ["ok", " ".join(["football"] * 70)]}, "input[1]"),
        ({"input": "ok", "dimensions": 7}, "dimensions"),
        ({"images": [{"data": png(1).data}, {"data": "bm90IGFuIGltYWdl"}]}, "images[1].data"),
    ],
)
def test_bad_embeddings_requests_are_typed_and_named(
    handlers: RetrievalHandlers, fields: dict[str, Any], param: str | None
) -> None:
    error = error_of(lambda: embeddings(handlers, **fields))
    assert error.status_code in (400, 422)
    if param is not None:
        assert error.param == param, error


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"image": {"data": "x"}}, None),
        ({"image": {"data": "x"}, "texts": ["a"], "images": [{"data": "x"}]}, None),
        ({"text": "a", "texts": ["b"]}, None),
        ({"image": {"data": "x"}, "texts": []}, "texts"),
        ({"image": {"data": png(1).data}, "texts": ["a", ""]}, "texts[1]"),
        ({"image": {"data": "x"}, "texts": ["a", "b", "c", "d"]}, "texts"),
        ({"image": {"data": png(1).data}, "texts": ["a", " ".join(["red"] * 70)]}, "texts[1]"),
        ({"text": " ".join(["red"] * 70), "images": [{"data": png(1).data}]}, "text"),
        (
            {"text": "a", "images": [{"data": png(1).data}, {"url": "ftp://x/y.png"}]},
            "images[1].url",
        ),
    ],
)
def test_bad_rank_requests_are_typed_and_named(
    handlers: RetrievalHandlers, fields: dict[str, Any], param: str | None
) -> None:
    error = error_of(lambda: rank(handlers, **fields))
    assert isinstance(error, ServeAppError) and error.status_code in (400, 422)
    if param is not None:
        assert error.param == param, error


def test_a_service_without_a_model_for_the_task_says_so(backend: InProcessRetrieval) -> None:
    retrieval_only = Blip2Handlers(
        None,
        ModelConfig(),
        LimitsConfig(),
        retrieval=RetrievalHandlers(backend, CONFIG, LimitsConfig()),
    )
    assert asyncio.run(retrieval_only.ready()).status == "ok"
    (card,) = asyncio.run(retrieval_only.models()).data
    assert (card.id, getattr(card, "task", None), getattr(card, "max_candidates", None)) == (
        "tiny",
        "retrieval",
        3,
    )
    with pytest.raises(ModelNotFoundError):
        asyncio.run(retrieval_only.vqa(VQARequest(image=png(0), question="q")))
    generation_only = Blip2Handlers(FakeModelBackend(), ModelConfig(), LimitsConfig())
    with pytest.raises(ModelNotFoundError):
        asyncio.run(generation_only.embeddings(validate(EmbeddingsRequest, {"input": "a"})))
