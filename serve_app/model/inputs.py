"""Requests as BLIP-2's inputs: the prompt of a task, its token ids, the image's pixel values,
and a batch of them padded the way the language model expects (no Ray)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from serve_app.config import ModelConfig
from serve_app.contract.errors import InvalidImageError, InvalidRequestError
from serve_app.model.types import Family, ModelImageInput, ModelRequest, Task


@dataclass
class PreparedRequest:
    """One request turned into model inputs."""

    index: int
    task: Task
    prompt: str
    text_ids: list[int]
    plain_ids: list[int]
    pixel_values: torch.Tensor
    stream: bool

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the prompt text (the image's query tokens are not counted)."""
        return len(self.plain_ids)


class InputBuilder:
    """Builds a model's inputs with its processor: image tokens first, then the prompt."""

    def __init__(self, config: ModelConfig, processor: Any, family: Family, hf_config: Any) -> None:
        self._config = config
        self._processor = processor
        self._tokenizer = processor.tokenizer
        self._family = family
        self._query_ids = [int(hf_config.image_token_index)] * int(hf_config.num_query_tokens)
        self.pad_id = int(self._tokenizer.pad_token_id)
        # A decoder-only model has a fixed number of positions for the image's query tokens,
        # the prompt and the new tokens together; past it a GPU kernel fails (and poisons the
        # process). T5's relative positions have no such limit.
        positions = getattr(hf_config.text_config, "max_position_embeddings", None)
        self._max_positions: int | None = int(positions) if family == "opt" and positions else None

    def build_prompt(self, task: Task, text: str) -> str:
        """The text the language model sees for ``task`` (VQA uses the configured template)."""
        if task == "vqa":
            return self._config.vqa_prompt_template.format(question=text)
        if task == "caption":
            return text.rstrip()
        return text

    def image_input(self) -> ModelImageInput | None:
        """The size images are resized to and Pillow's filter, if resizing elsewhere is exact."""
        return image_input_of(self._processor.image_processor)

    def prepare_all(
        self, requests: Sequence[tuple[int, ModelRequest, int]]
    ) -> list[PreparedRequest | Exception]:
        """Tokenize the prompts and process the images of ``(index, request, max_new_tokens)``
        items, each step once for all of them; one prepared request or error per item.

        A request fails alone: its image is not an RGB ``uint8`` array (``InvalidImageError``),
        its prompt and ``max_new_tokens`` do not fit the model (``InvalidRequestError``), or it
        makes the tokenizer or image processor fail.
        """
        images_ok = [is_rgb_array(request.image) for _, request, _ in requests]
        valid = [item for item, ok in zip(requests, images_ok, strict=True) if ok]
        prepared = iter(self._prepare_isolated(valid))
        return [
            next(prepared)
            if ok
            else InvalidImageError(
                "image must be an RGB uint8 array of shape (height, width, 3)", "image"
            )
            for ok in images_ok
        ]

    def _prepare_isolated(
        self, items: Sequence[tuple[int, ModelRequest, int]]
    ) -> list[PreparedRequest | Exception]:
        """All items in one go; if that fails, each alone, so only the culprit fails."""
        if len(items) > 1:
            with contextlib.suppress(Exception):
                return self._prepare(items)
        prepared: list[PreparedRequest | Exception] = []
        for item in items:
            try:
                prepared.extend(self._prepare([item]))
            except Exception as exc:
                prepared.append(exc)
        return prepared

    def _prepare(
        self, items: Sequence[tuple[int, ModelRequest, int]]
    ) -> list[PreparedRequest | Exception]:
        prompts = [self.build_prompt(request.task, request.text) for _, request, _ in items]
        with_special = self._tokenizer(prompts)["input_ids"]
        plain = self._tokenizer(prompts, add_special_tokens=False)["input_ids"]
        images = [Image.fromarray(np.ascontiguousarray(r.image)) for _, r, _ in items]
        pixels = self._processor.image_processor(images=images, return_tensors="pt")
        pixel_values = pixels["pixel_values"]
        prepared: list[PreparedRequest | Exception] = []
        for row, (index, request, max_new_tokens) in enumerate(items):
            text_ids = [int(i) for i in with_special[row]]
            try:
                self._check_fits(request, len(text_ids), max_new_tokens)
            except InvalidRequestError as exc:
                prepared.append(exc)
                continue
            prepared.append(
                PreparedRequest(
                    index,
                    request.task,
                    prompts[row],
                    text_ids,
                    [int(i) for i in plain[row]],
                    pixel_values[row : row + 1],
                    request.stream,
                )
            )
        return prepared

    def _check_fits(self, request: ModelRequest, text_tokens: int, max_new_tokens: int) -> None:
        if self._max_positions is None:
            return
        needed = len(self._query_ids) + text_tokens + max_new_tokens
        if needed > self._max_positions:
            raise InvalidRequestError(
                f"the prompt is {text_tokens} tokens: with the image's {len(self._query_ids)} "
                f"and up to {max_new_tokens} new tokens that exceeds the model's "
                f"{self._max_positions} positions",
                "question" if request.task == "vqa" else "prompt",
            )

    def row_ids(self, item: PreparedRequest) -> list[int]:
        """The language model's input ids of one request: image tokens, then the prompt."""
        return self._query_ids + item.text_ids

    def batch(self, items: list[PreparedRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask of a batch; OPT rows are padded on the left."""
        rows = [self.row_ids(item) for item in items]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if self._family == "opt" else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return ids, mask


def is_rgb_array(image: object) -> bool:
    """Whether ``image`` is a non-empty RGB ``uint8`` array of shape (height, width, 3)."""
    return (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
        and image.shape[0] > 0
        and image.shape[1] > 0
    )


def image_input_of(image_processor: Any) -> ModelImageInput | None:
    """The size ``image_processor`` resizes every image to and Pillow's filter, if resizing
    elsewhere is exact.

    That is so when the image processor is Pillow-based, resizes to a fixed size and does not
    crop: the ingress can then resize with Pillow and the processor's own resize of an image
    already at that size changes nothing. Otherwise None.
    """
    size = getattr(image_processor, "size", None)
    height, width = getattr(size, "height", None), getattr(size, "width", None)
    if (
        getattr(image_processor, "backend", None) != "pil"
        or not getattr(image_processor, "do_resize", False)
        or getattr(image_processor, "do_center_crop", False)
        or not height
        or not width
    ):
        return None
    return ModelImageInput(
        width=int(width), height=int(height), resample=int(image_processor.resample)
    )
