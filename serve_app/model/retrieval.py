"""BLIP-2 image-text retrieval without Ray: embeddings and matching for batches of requests.

``Blip2Retrieval`` wraps a ``Blip2ForImageTextRetrieval`` and its processor. A batch encodes
all its images in one vision pass and all its texts in one Q-Former pass; a match request's
image is encoded once for all its candidate texts. A request that fails (a text over the token
limit, or an error inside the model) gets its own exception without failing the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from serve_app.config import RetrievalModelConfig
from serve_app.contract.errors import GenerationFailedError, InvalidImageError, InvalidRequestError
from serve_app.model import retrieval_forward as heads
from serve_app.model.inputs import image_input_of, is_rgb_array
from serve_app.model.loading import load_checkpoint
from serve_app.model.retrieval_types import (
    ImageEmbedding,
    ImageEmbeddingRequest,
    MatchRequest,
    MatchResult,
    RetrievalInfo,
    RetrievalRequest,
    RetrievalResult,
    TextEmbedding,
    TextEmbeddingRequest,
)

logger = logging.getLogger(__name__)


class Blip2Retrieval:
    """A loaded BLIP-2 retrieval checkpoint that answers batches of ``RetrievalRequest``."""

    def __init__(
        self,
        config: RetrievalModelConfig,
        source: str,
        processor: Any,
        model: Any,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        """Wrap an already loaded processor and model; use :meth:`load` instead."""
        self._config = config
        self._source = source
        self._tokenizer = processor.tokenizer
        self._tokenizer.padding_side = "right"  # the first token's state is the text embedding
        self._image_processor = processor.image_processor
        self._model = model
        self._device = device
        self._dtype = dtype
        positions = int(model.config.qformer_config.max_position_embeddings)
        self._max_text_tokens = min(config.max_text_tokens, positions)

    @classmethod
    def load(cls, config: RetrievalModelConfig) -> Blip2Retrieval:
        """Load the processor and model that ``config`` names (see :func:`load_checkpoint`).

        Raises:
            ValueError: Unknown builtin name, or ``device='cuda'`` without CUDA.
        """
        loaded = load_checkpoint(config, "Blip2ForImageTextRetrieval")
        return cls(config, loaded.name, loaded.processor, loaded.model, loaded.device, loaded.dtype)

    def info(self) -> RetrievalInfo:
        """What is loaded: source, dtype, device, query tokens, vector length, text limit."""
        return RetrievalInfo(
            source=self._source,
            dtype=str(self._dtype).removeprefix("torch."),
            device=str(next(self._model.parameters()).device),
            num_query_tokens=int(self._model.config.num_query_tokens),
            dimensions=int(self._model.config.image_text_hidden_size),
            max_text_tokens=self._max_text_tokens,
            image_input=image_input_of(self._image_processor),
        )

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The images' query embeddings: (images, query tokens, dimensions), float32."""
        with torch.inference_mode():
            encoded = heads.encode_images(self._model, self._pixels(images))
            return _numpy(heads.image_query_embeddings(self._model, encoded))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """The texts' embeddings: (texts, dimensions), float32 (no token limit checked)."""
        ids, mask = self._tokenize(texts)
        with torch.inference_mode():
            return _numpy(heads.text_embeddings(self._model, ids, mask))

    def run(self, requests: Sequence[RetrievalRequest]) -> list[RetrievalResult | Exception]:
        """Answer a batch; one outcome per request, in order.

        A batch that fails as a whole is run again one request at a time, so one bad request
        fails alone.
        """
        outcomes: list[RetrievalResult | Exception | None] = [self._check(r) for r in requests]
        runnable = [i for i, outcome in enumerate(outcomes) if outcome is None]
        try:
            for i, result in zip(runnable, self._run([requests[i] for i in runnable]), strict=True):
                outcomes[i] = result
        except Exception:
            if len(runnable) == 1:
                logger.exception("A retrieval request failed")
                outcomes[runnable[0]] = _failure()
            else:
                logger.exception("A retrieval batch of %d failed; running it alone", len(runnable))
                for i in runnable:
                    outcomes[i] = self.run([requests[i]])[0]
        return [outcome if outcome is not None else _failure() for outcome in outcomes]

    def _check(self, request: RetrievalRequest) -> Exception | None:
        """The request's error if it cannot run: not an RGB image, or a text over the limit."""
        images = [request.image] if isinstance(request, ImageEmbeddingRequest) else []
        texts: list[tuple[str, str]] = []
        if isinstance(request, TextEmbeddingRequest):
            texts = [(request.text, request.param)]
        elif isinstance(request, MatchRequest):
            images = request.images
            texts = list(zip(request.texts, request.text_params(), strict=True))
        if not all(is_rgb_array(image) for image in images):
            return InvalidImageError("the image is not an RGB uint8 array")
        if texts:
            lengths = self._tokenizer([text for text, _ in texts])["input_ids"]
            for (_, param), ids in zip(texts, lengths, strict=True):
                if len(ids) > self._max_text_tokens:
                    return InvalidRequestError(
                        f"{param} is {len(ids)} tokens; the limit is {self._max_text_tokens}",
                        param,
                    )
        return None

    def _run(self, requests: Sequence[RetrievalRequest]) -> list[RetrievalResult]:
        images: list[np.ndarray] = []
        texts: list[str] = []
        for request in requests:
            if isinstance(request, ImageEmbeddingRequest):
                images.append(request.image)
            elif isinstance(request, TextEmbeddingRequest):
                texts.append(request.text)
            else:
                images.extend(request.images)
                texts.extend(request.texts)
        with torch.inference_mode():
            encoded = queries = None
            if images:
                encoded = heads.encode_images(self._model, self._pixels(images))
                queries = heads.image_query_embeddings(self._model, encoded)
            ids = mask = vectors = None
            if texts:
                ids, mask = self._tokenize(texts)
                vectors = heads.text_embeddings(self._model, ids, mask)
            results: list[RetrievalResult] = []
            next_image = next_text = 0
            for request in requests:
                if isinstance(request, ImageEmbeddingRequest):
                    assert queries is not None
                    results.append(ImageEmbedding(queries=_numpy(queries[next_image])))
                    next_image += 1
                elif isinstance(request, TextEmbeddingRequest):
                    assert vectors is not None and mask is not None
                    tokens = int(mask[next_text].sum())
                    results.append(TextEmbedding(vector=_numpy(vectors[next_text]), tokens=tokens))
                    next_text += 1
                else:
                    assert encoded is not None and queries is not None
                    assert ids is not None and mask is not None and vectors is not None
                    image_rows = slice(next_image, next_image + len(request.images))
                    text_rows = slice(next_text, next_text + len(request.texts))
                    results.append(
                        self._match(
                            request.pairs,
                            encoded[image_rows],
                            queries[image_rows],
                            ids[text_rows],
                            mask[text_rows],
                            vectors[text_rows],
                        )
                    )
                    next_image, next_text = image_rows.stop, text_rows.stop
        return results

    def _match(
        self,
        pairs: int,
        encoded: torch.Tensor,
        queries: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        vectors: torch.Tensor,
    ) -> MatchResult:
        """Scores of one image against its texts, or of one text against its images."""
        scores = heads.similarity(queries, vectors).reshape(-1)
        width = int(mask.sum(dim=1).max())
        logits = heads.matching_logits(
            self._model,
            encoded.expand(pairs, -1, -1),
            ids[:, :width].expand(pairs, -1),
            mask[:, :width].expand(pairs, -1),
        )
        itm = logits.float().softmax(dim=-1)[:, 1]
        return MatchResult(
            scores=[float(s) for s in scores],
            itm=[float(p) for p in itm],
            tokens=int(mask.sum()),
        )

    def _pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        pil = [Image.fromarray(np.ascontiguousarray(image)) for image in images]
        processed = self._image_processor(images=pil, return_tensors="pt")
        pixels: torch.Tensor = processed["pixel_values"]
        return pixels.to(self._device, self._dtype)

    def _tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self._tokenizer(list(texts), padding=True, return_tensors="pt")
        return encoded["input_ids"].to(self._device), encoded["attention_mask"].to(self._device)


def _failure() -> GenerationFailedError:
    return GenerationFailedError("the retrieval model failed on this request")


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    array: np.ndarray = tensor.float().cpu().numpy()
    return array
