"""Resizing in the ingress to the model's image input changes nothing the model sees."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from serve_app.config import TINY_RANDOM_OPT, TINY_RANDOM_T5, LimitsConfig, ModelConfig
from serve_app.contract.api import GenerationParams
from serve_app.images.decode import decode_image
from serve_app.images.resize import fit_to_model_input
from serve_app.model.blip2 import Blip2Model
from serve_app.model.builtin import resolve_builtin
from serve_app.model.types import ModelImageInput, ModelRequest

BUILTINS = {"opt": TINY_RANDOM_OPT, "t5": TINY_RANDOM_T5}
SHAPES = [(768, 1024), (1024, 768), (33, 31), (32, 32), (20, 50), (2, 300), (1400, 7)]
"""(height, width): larger and smaller than the 32x32 input, odd and elongated."""

Pixels = np.ndarray[Any, np.dtype[np.uint8]]


def noise(shape: tuple[int, int], seed: int) -> Pixels:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def photo(shape: tuple[int, int]) -> Pixels:
    """A smooth image, JPEG-encoded and decoded the way the ingress does it."""
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) % 256], axis=2)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return decode_image(buffer.getvalue(), LimitsConfig())


def target(model: Blip2Model) -> ModelImageInput:
    image_input = model.image_input()
    assert image_input is not None
    return image_input


def pixel_values(processor: Any, image: Pixels) -> torch.Tensor:
    values: torch.Tensor = processor.image_processor(
        images=[Image.fromarray(image)], return_tensors="pt"
    )["pixel_values"]
    return values


@pytest.mark.parametrize("shape", SHAPES)
def test_the_processor_makes_the_same_pixels_from_the_resized_image(
    model: Blip2Model, shape: tuple[int, int]
) -> None:
    processor = Blip2Processor.from_pretrained(resolve_builtin(model.config.model_id))
    for image in (noise(shape, seed=sum(shape)), photo(shape)):
        resized = fit_to_model_input(image, target(model))
        assert resized.shape == (32, 32, 3)
        assert torch.equal(pixel_values(processor, resized), pixel_values(processor, image))


def test_answers_are_identical_from_full_and_resized_images(model: Blip2Model) -> None:
    images = [photo((768, 1024)), noise((600, 800), seed=1), noise((33, 31), seed=2)]
    params = GenerationParams(max_new_tokens=8)

    def answers(batch: list[Pixels]) -> list[Any]:
        requests = [
            ModelRequest(task="vqa", text="what is it?", image=image, params=params)
            for image in batch
        ]
        return model.generate(requests)

    resized = [fit_to_model_input(image, target(model)) for image in images]
    assert answers(resized) == answers(images)


def test_an_image_already_at_the_input_size_is_passed_through(model: Blip2Model) -> None:
    image = noise((32, 32), seed=3)
    assert fit_to_model_input(image, target(model)) is image


def test_no_image_input_is_reported_when_the_processor_crops(cache_dir: Path) -> None:
    directory = resolve_builtin(TINY_RANDOM_OPT)
    processor = Blip2Processor.from_pretrained(directory)
    processor.image_processor.do_center_crop = True
    loaded = Blip2ForConditionalGeneration.from_pretrained(directory)
    config = ModelConfig(model_id=TINY_RANDOM_OPT)
    model = Blip2Model(
        config, TINY_RANDOM_OPT, processor, loaded, torch.device("cpu"), torch.float32
    )
    assert model.image_input() is None
    assert model.info().image_input is None
