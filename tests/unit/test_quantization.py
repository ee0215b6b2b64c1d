"""Quantized loading on the CPU (bitsandbytes' CPU backend): the demo model with its language
model in int8 answers as well as in float32, with the image side left in float32."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from serve_app.config import DEMO_SHAPES, ModelConfig
from serve_app.demo.task import sample
from serve_app.demo.training.evaluate import evaluate
from serve_app.model.blip2 import Blip2Model
from serve_app.model.loading import bitsandbytes_config

SEED = 101
EXAMPLES = 100


@pytest.mark.filterwarnings("ignore:MatMul8bitLt")
def test_int8_demo_model_is_within_two_points_of_float32() -> None:
    examples = sample(SEED, EXAMPLES)
    full = Blip2Model.load(ModelConfig(model_id=DEMO_SHAPES, device="cpu"))
    int8 = Blip2Model.load(ModelConfig(model_id=DEMO_SHAPES, device="cpu", quantization="int8"))
    language: torch.nn.Module = int8._model.language_model
    linear_types = {type(m).__name__ for m in language.modules() if "Linear" in type(m).__name__}
    assert "Linear8bitLt" in linear_types
    vision: torch.nn.Module = int8._model.vision_model
    assert {p.dtype for p in vision.parameters()} == {torch.float32}
    assert evaluate(int8, examples).overall >= evaluate(full, examples).overall - 0.02


def test_quantization_without_bitsandbytes_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name)
    )
    with pytest.raises(ValueError, match=r"needs bitsandbytes: pip install 'blip2-serve\[quant"):
        bitsandbytes_config("int8", torch.float16)


def test_nf4_keeps_the_image_side_and_output_layer_and_computes_in_the_dtype() -> None:
    config = bitsandbytes_config("nf4", torch.bfloat16)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert {"vision_model", "qformer", "lm_head"} <= set(config.llm_int8_skip_modules)
    assert bitsandbytes_config("none", torch.float16) is None
