"""The retrieval API's request and response models: embeddings (OpenAI's shape) and ranking.

Shared by HTTP and handle callers. Texts come first in an embeddings response (``index`` 0 to
k-1, in ``input`` order), then images (k onward, in ``images`` order).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from serve_app.contract.api import ImageSource
from serve_app.contract.base import StrictModel


class EmbeddingsRequest(StrictModel):
    """Texts and/or images to embed into BLIP-2's shared image-text space.

    ``input`` and ``encoding_format`` follow OpenAI's embeddings API, so its clients work
    unchanged for texts.
    """

    input: str | list[str] | None = Field(
        None, description="A text, or a list of texts (none of them empty)."
    )
    images: list[ImageSource] | None = Field(None, description="Images to embed.")
    model: str | None = Field(None, description="Accepted for OpenAI clients; not checked.")
    image_embedding: Literal["pooled", "queries"] = Field(
        "pooled",
        description="'pooled': one unit vector per image (the mean of its query vectors, "
        "normalised); 'queries': every query vector, a (query tokens x dimensions) matrix "
        "whose best dot product with a text embedding is BLIP-2's own contrastive score.",
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float",
        description="'base64': little-endian float32 bytes, base64-encoded (a query matrix "
        "row by row).",
    )
    dimensions: int | None = Field(
        None, ge=1, description="Must equal the model's vector length if given."
    )
    user: str | None = Field(None, description="Accepted for OpenAI clients; not used.")

    @model_validator(mode="after")
    def _something_to_embed(self) -> EmbeddingsRequest:
        if self.input is None and not self.images:
            raise ValueError("give at least one text in 'input' or one image in 'images'")
        return self

    @property
    def texts(self) -> list[str]:
        """``input`` as a list."""
        if self.input is None:
            return []
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingsUsage(StrictModel):
    """Tokens of the texts embedded or scored (images count none)."""

    prompt_tokens: int
    total_tokens: int


class Embedding(StrictModel):
    """One input's embedding."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[list[float]] | str = Field(
        description="A vector, a query matrix (image_embedding='queries'), or base64."
    )
    input_type: Literal["text", "image"]


class EmbeddingsResponse(StrictModel):
    """One embedding per input: texts first, then images."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage


class RankRequest(StrictModel):
    """One image and candidate texts, or one text and candidate images, to rank.

    ``score`` is BLIP-2's contrastive similarity (fast, for shortlists); ``itm`` is the
    image-text matching head's probability that the pair matches (slower, more accurate), as
    BLIP-2's paper uses them: contrastive to shortlist, matching to re-rank.
    """

    image: ImageSource | None = Field(None, description="The image to rank texts for.")
    texts: list[str] | None = Field(None, min_length=1, description="Candidate texts.")
    text: str | None = Field(None, description="The text to rank images for.")
    images: list[ImageSource] | None = Field(None, min_length=1, description="Candidate images.")
    sort_by: Literal["itm", "score"] = Field("itm", description="The key results are sorted by.")
    top_k: int | None = Field(None, ge=1, description="Return only the best k.")
    model: str | None = Field(None, description="Accepted for symmetry; not checked.")

    @model_validator(mode="after")
    def _one_against_many(self) -> RankRequest:
        image_to_texts = self.image is not None and self.texts is not None
        text_to_images = self.text is not None and self.images is not None
        given = [n for n in ("image", "texts", "text", "images") if getattr(self, n) is not None]
        if image_to_texts == text_to_images or len(given) != 2:
            raise ValueError(
                "give 'image' with candidate 'texts', or 'text' with candidate 'images'"
            )
        return self


class RankResult(StrictModel):
    """One candidate's scores; ``text`` is set when candidates are texts."""

    index: int = Field(description="The candidate's position in the request.")
    text: str | None = None
    score: float = Field(description="Contrastive similarity, -1 to 1.")
    itm: float = Field(description="Probability that the pair matches, 0 to 1.")


class RankResponse(StrictModel):
    """The candidates, best first by ``sort_by``."""

    model: str
    results: list[RankResult]
    usage: EmbeddingsUsage
