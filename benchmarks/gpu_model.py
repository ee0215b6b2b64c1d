"""BLIP-2 at ``Salesforce/blip2-opt-2.7b``'s sizes with random weights, as the service runs it.

The architecture (39-layer ViT-g, 12-layer Q-Former, 32-layer OPT-2.7b, 32 query tokens,
224x224 images, a 50,304-row output layer) comes from the checkpoint's published config; the
weights are random and built on the device in float16, so nothing is downloaded. The text side
uses the tokenizer of ``builtin:tiny-random-blip2-opt`` (built offline), whose ids all fall
inside the vocabulary. Every generation runs to exactly ``max_new_tokens`` tokens (end of
sequence is never chosen early), so the figures measure compute, not answers.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    OPTConfig,
)

from serve_app.config import TINY_RANDOM_OPT, ModelConfig
from serve_app.model.blip2 import Blip2Model
from serve_app.model.builtin import resolve_builtin
from serve_app.model.checkpoints import blip2_config
from serve_app.model.devices import resolve_device, resolve_dtype

SOURCE = "random weights, Salesforce/blip2-opt-2.7b sizes"
IMAGE_SIZE = 224
NUM_QUERY_TOKENS = 32


def opt_2_7b_config(tokenizer: Any, smoke: bool = False) -> Blip2Config:
    """The checkpoint's sizes (``smoke``: one small layer each, to check the code on a CPU)."""
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    vision = Blip2VisionConfig(
        hidden_size=64 if smoke else 1408,
        intermediate_size=128 if smoke else 6144,
        num_hidden_layers=1 if smoke else 39,
        num_attention_heads=4 if smoke else 16,
        image_size=IMAGE_SIZE,
        patch_size=14,
    )
    qformer = Blip2QFormerConfig(
        hidden_size=64 if smoke else 768,
        intermediate_size=128 if smoke else 3072,
        num_hidden_layers=1 if smoke else 12,
        num_attention_heads=4 if smoke else 12,
        encoder_hidden_size=vision.hidden_size,
    )
    text = OPTConfig(
        **ids,
        hidden_size=64 if smoke else 2560,
        word_embed_proj_dim=64 if smoke else 2560,
        ffn_dim=128 if smoke else 10240,
        num_hidden_layers=1 if smoke else 32,
        num_attention_heads=4 if smoke else 32,
        vocab_size=50304,
        max_position_embeddings=2048,
    )
    config: Blip2Config = blip2_config(vision, qformer, text, NUM_QUERY_TOKENS, tokenizer)
    return config


def random_opt_2_7b(config: ModelConfig, smoke: bool = False) -> Blip2Model:
    """A ``Blip2Model`` around a random BLIP-2 OPT-2.7b on ``config``'s device and dtype."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    processor = processor_at_224px(resolve_builtin(TINY_RANDOM_OPT))
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = Blip2ForConditionalGeneration(opt_2_7b_config(processor.tokenizer, smoke))
    finally:
        torch.set_default_dtype(default_dtype)
    model.eval()  # type: ignore[no-untyped-call]
    # Never stop early: every request generates exactly its max_new_tokens.
    model.generation_config.min_new_tokens = config.max_new_tokens_limit
    return Blip2Model(config, SOURCE, processor, model, device, dtype)


def processor_at_224px(tiny: Path | None) -> Any:
    """The tiny model's processor, loaded as ``Blip2Model.load`` loads one, at 224x224."""
    if tiny is None:
        raise RuntimeError("the builtin tiny model is missing")
    with tempfile.TemporaryDirectory() as folder:
        for path in tiny.iterdir():
            if path.suffix != ".safetensors":
                shutil.copy(path, folder)
        settings_file = Path(folder) / "processor_config.json"
        settings = json.loads(settings_file.read_text())
        settings["image_processor"]["size"] = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        settings["num_query_tokens"] = NUM_QUERY_TOKENS
        settings_file.write_text(json.dumps(settings))
        return Blip2Processor.from_pretrained(folder, backend="pil")


def factory(smoke: bool = False) -> Callable[[ModelConfig], Blip2Model]:
    """A model factory for ``build_application``."""
    return functools.partial(random_opt_2_7b, smoke=smoke)
