"""The typed contract between the ingress and the retrieval deployment (no Ray, no torch).

The ingress sends images already decoded (RGB ``uint8`` arrays) and texts already checked for
length in characters; the model checks texts in tokens and names the offending field with the
request's ``param``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.config import BatchingConfig
from serve_app.model.types import ModelImageInput

RgbImage = np.ndarray[Any, np.dtype[np.uint8]]
Vectors = np.ndarray[Any, np.dtype[np.float32]]


class _Frozen(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)


class ImageEmbeddingRequest(_Frozen):
    """Embed one image."""

    image: RgbImage
    request_id: str = ""


class TextEmbeddingRequest(_Frozen):
    """Embed one text; ``param`` names it in errors (e.g. ``input[2]``)."""

    text: str
    param: str = "input"
    request_id: str = ""


class MatchRequest(_Frozen):
    """Score one image against candidate texts, or one text against candidate images."""

    images: list[RgbImage] = Field(min_length=1)
    texts: list[str] = Field(min_length=1)
    text_param: str | None = Field(
        None, description="The one text's field, for errors; texts[i] for candidate texts."
    )
    request_id: str = ""

    @model_validator(mode="after")
    def _one_side_single(self) -> MatchRequest:
        if len(self.images) > 1 and len(self.texts) > 1:
            raise ValueError("one image with candidate texts, or one text with candidate images")
        return self

    def text_params(self) -> list[str]:
        """Each text's field, for errors."""
        return text_params(len(self.texts), self.text_param)

    @property
    def pairs(self) -> int:
        """How many image-text pairs are scored."""
        return max(len(self.images), len(self.texts))


def text_params(count: int, single: str | None) -> list[str]:
    """The fields of ``count`` texts, for errors: ``single`` for one text so named, else
    ``texts[i]``."""
    if single is not None and count == 1:
        return [single]
    return [f"texts[{i}]" for i in range(count)]


RetrievalRequest = ImageEmbeddingRequest | TextEmbeddingRequest | MatchRequest


class ImageEmbedding(_Frozen):
    """An image's contrastive embedding: one L2-normalised vector per query token."""

    queries: Vectors

    def pooled(self) -> Vectors:
        """One unit vector for the image (see :func:`pool`)."""
        return pool(self.queries)


def pool(queries: Vectors) -> Vectors:
    """The normalised mean of query vectors (over the second-to-last axis): one unit vector per
    image, for stores that hold one vector per item."""
    mean = queries.mean(axis=-2)
    norm = np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
    pooled: Vectors = (mean / norm).astype(np.float32)
    return pooled


class TextEmbedding(_Frozen):
    """A text's contrastive embedding (L2-normalised) and its length in tokens."""

    vector: Vectors
    tokens: int


class MatchResult(_Frozen):
    """One score per candidate, in the candidates' order, and the texts' tokens.

    ``scores``: BLIP-2's contrastive similarity (the best cosine over the image's query
    vectors); ``itm``: the image-text matching head's probability that the pair matches.
    """

    scores: list[float]
    itm: list[float]
    tokens: int


RetrievalResult = ImageEmbedding | TextEmbedding | MatchResult


class RetrievalInfo(BaseModel):
    """What a retrieval model has loaded."""

    model_config = ConfigDict(frozen=True)

    source: str
    dtype: str
    device: str
    num_query_tokens: int
    dimensions: int = Field(description="Length of every embedding vector.")
    max_text_tokens: int
    image_input: ModelImageInput | None = None


class RetrievalReplicaInfo(BaseModel):
    """What a retrieval replica serves: its model and its live batching settings."""

    model_config = ConfigDict(frozen=True)

    model: RetrievalInfo
    batching: BatchingConfig
