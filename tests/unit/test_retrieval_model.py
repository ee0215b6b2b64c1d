"""``Blip2Retrieval`` on the builtin tiny retrieval model: what transformers' own ``forward``
computes, unit vectors, batches equal to single requests, per-request failures (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from serve_app.contract.errors import InvalidImageError, InvalidRequestError
from serve_app.model.retrieval import Blip2Retrieval
from serve_app.model.retrieval_types import (
    ImageEmbedding,
    ImageEmbeddingRequest,
    MatchRequest,
    MatchResult,
    RetrievalResult,
    TextEmbedding,
    TextEmbeddingRequest,
)
from tests.support.results import image

TEXTS = ["a cat sitting on a red sofa", "the car is blue", "two children playing football"]


def forward(model: Blip2Retrieval, pixels: np.ndarray, texts: list[str], itm: bool) -> torch.Tensor:
    """Transformers' ``Blip2ForImageTextRetrieval.forward`` on one image and ``texts``."""
    hf = model._model
    processed = model._image_processor(images=[Image.fromarray(pixels)], return_tensors="pt")
    tokens = model._tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        if itm:
            output = hf(
                pixel_values=processed["pixel_values"].expand(len(texts), -1, -1, -1),
                input_ids=tokens["input_ids"],
                attention_mask=tokens["attention_mask"],
                use_image_text_matching_head=True,
            )
            probabilities: torch.Tensor = output.logits_per_image.softmax(dim=-1)[:, 1]
            return probabilities
        output = hf(
            pixel_values=processed["pixel_values"],
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
        )
        scores: torch.Tensor = output.logits_per_image[0]
        return scores


def match(result: RetrievalResult | Exception) -> MatchResult:
    assert isinstance(result, MatchResult), result
    return result


def test_scores_equal_transformers_forward(retrieval_model: Blip2Retrieval) -> None:
    pixels = image(1, 32)
    result = match(retrieval_model.run([MatchRequest(images=[pixels], texts=TEXTS)])[0])
    contrastive = forward(retrieval_model, pixels, TEXTS, itm=False)
    matching = forward(retrieval_model, pixels, TEXTS, itm=True)
    np.testing.assert_allclose(result.scores, contrastive.numpy(), atol=1e-5)
    np.testing.assert_allclose(result.itm, matching.numpy(), atol=1e-5)
    assert len(set(np.round(result.itm, 4))) == len(TEXTS), "texts should score differently"


def test_embeddings_are_unit_vectors_of_the_models_size(retrieval_model: Blip2Retrieval) -> None:
    info = retrieval_model.info()
    queries = retrieval_model.embed_images([image(1), image(2, 64)])
    texts = retrieval_model.embed_texts(TEXTS)
    assert queries.shape == (2, info.num_query_tokens, info.dimensions)
    assert texts.shape == (3, info.dimensions)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=-1), 1.0, atol=1e-5)
    assert not np.allclose(queries[0], queries[1]), "different images embed differently"


def test_the_contrastive_score_is_the_best_query_dot_product(
    retrieval_model: Blip2Retrieval,
) -> None:
    pixels = image(3)
    (queries,) = retrieval_model.embed_images([pixels])
    texts = retrieval_model.embed_texts(TEXTS)
    result = match(retrieval_model.run([MatchRequest(images=[pixels], texts=TEXTS)])[0])
    np.testing.assert_allclose(result.scores, (queries @ texts.T).max(axis=0), atol=1e-5)


def test_a_mixed_batch_equals_each_request_alone(retrieval_model: Blip2Retrieval) -> None:
    requests = [
        ImageEmbeddingRequest(image=image(4)),
        TextEmbeddingRequest(text=TEXTS[0]),
        MatchRequest(images=[image(5)], texts=TEXTS),
        TextEmbeddingRequest(text=TEXTS[2]),
        MatchRequest(images=[image(6), image(7), image(8)], texts=[TEXTS[1]], text_param="text"),
        ImageEmbeddingRequest(image=image(9, 64)),
    ]
    batched = retrieval_model.run(requests)
    alone = [retrieval_model.run([request])[0] for request in requests]
    for together, single in zip(batched, alone, strict=True):
        assert type(together) is type(single)
        if isinstance(together, ImageEmbedding) and isinstance(single, ImageEmbedding):
            np.testing.assert_allclose(together.queries, single.queries, atol=1e-5)
        elif isinstance(together, TextEmbedding) and isinstance(single, TextEmbedding):
            np.testing.assert_allclose(together.vector, single.vector, atol=1e-5)
            assert together.tokens == single.tokens
        else:
            np.testing.assert_allclose(match(together).scores, match(single).scores, atol=1e-5)
            np.testing.assert_allclose(match(together).itm, match(single).itm, atol=1e-5)


def test_a_text_over_the_token_limit_fails_alone_and_is_named(
    retrieval_model: Blip2Retrieval,
) -> None:
    long = " ".join(["football"] * 40)
    results = retrieval_model.run(
        [
            TextEmbeddingRequest(text=long, param="input[1]"),
            MatchRequest(images=[image(1)], texts=[TEXTS[0], long]),
            MatchRequest(images=[image(1), image(2)], texts=[long], text_param="text"),
            TextEmbeddingRequest(text=TEXTS[0]),
        ]
    )
    params = [getattr(result, "param", None) for result in results[:3]]
    assert all(isinstance(result, InvalidRequestError) for result in results[:3])
    assert params == ["input[1]", "texts[1]", "text"]
    assert "the limit is 24" in str(results[0])
    assert isinstance(results[3], TextEmbedding)


def test_an_array_that_is_not_an_rgb_image_is_refused_alone(
    retrieval_model: Blip2Retrieval,
) -> None:
    grey = np.zeros((8, 8), dtype=np.uint8)
    results = retrieval_model.run(
        [ImageEmbeddingRequest.model_construct(image=grey), ImageEmbeddingRequest(image=image(1))]
    )
    assert isinstance(results[0], InvalidImageError)
    assert isinstance(results[1], ImageEmbedding)


def test_one_image_against_many_texts_and_many_images_against_one_text_only() -> None:
    with pytest.raises(ValueError, match="one image with candidate texts"):
        MatchRequest(images=[image(1), image(2)], texts=TEXTS)
