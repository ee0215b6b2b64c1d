"""Salesforce BLIP-2 checkpoints at their real sizes with random weights, loaded as the service
loads any checkpoint.

The architecture comes from :mod:`serve_app.model.architectures` (the published configs); the
weights are random, drawn on the GPU in float16 and saved with ``save_pretrained`` beside the
processor of the builtin tiny model of the same family (at 224x224 and 32 query tokens), whose
token ids all fall inside the vocabulary. ``Blip2Model.load`` then loads that directory like a
Hub checkpoint, with the config's dtype, quantization and attention. Its generation config
sets ``min_new_tokens``, so every generation runs to exactly ``max_new_tokens`` tokens (end of
sequence is never chosen early): the figures measure compute, not answers. ``smoke`` shrinks
every part to one small layer, to check the code on a CPU.
"""

from __future__ import annotations

import functools
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from serve_app.config import TINY_RANDOM_OPT, TINY_RANDOM_T5, ModelConfig
from serve_app.engine.blip2_engine import Blip2Engine
from serve_app.model.architectures import KNOWN, NUM_QUERY_TOKENS, OPT_2_7B
from serve_app.model.blip2 import Blip2Model
from serve_app.model.builtin import resolve_builtin
from serve_app.model.types import ModelRequest, ModelResult

IMAGE_SIZE = 224
_SMOKE_SIZES = {
    "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1},
    "qformer_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1},
    "text_config": {
        "hidden_size": 64,
        "word_embed_proj_dim": 64,
        "ffn_dim": 128,
        "num_hidden_layers": 1,
        "d_model": 64,
        "d_ff": 128,
        "num_layers": 1,
        "num_decoder_layers": 1,
    },
}


def source(model_id: str) -> str:
    """How results name the model."""
    return f"random weights, {model_id} sizes"


def architecture(model_id: str, tokenizer: Any, smoke: bool = False) -> Any:
    """``model_id``'s ``Blip2Config`` with ``tokenizer``'s special ids and image token."""
    config = KNOWN[model_id]()
    text = config.text_config
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(text, name, getattr(tokenizer, name))
    if text.is_encoder_decoder:
        text.decoder_start_token_id = tokenizer.pad_token_id
    config.image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    if smoke:
        for part, sizes in _SMOKE_SIZES.items():
            for name, value in sizes.items():
                if hasattr(getattr(config, part), name):
                    setattr(getattr(config, part), name, value)
        config.qformer_config.encoder_hidden_size = config.vision_config.hidden_size
        config.vision_config.num_attention_heads = config.qformer_config.num_attention_heads = 4
        for name in ("num_attention_heads", "num_heads"):
            if hasattr(text, name):
                setattr(text, name, 4)
        text.d_kv = 16
    return config


def save_random_checkpoint(
    model_id: str, directory: Path, new_tokens: int, smoke: bool = False
) -> Path:
    """Save a random-weight ``model_id`` (float16 on CUDA, else float32) and its processor;
    its generation config makes every answer exactly ``new_tokens`` long."""
    processor = processor_at_224px(model_id)
    config = architecture(model_id, processor.tokenizer, smoke)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = Blip2ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config.min_new_tokens = new_tokens
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    del model
    return directory


def processor_at_224px(model_id: str) -> Any:
    """The same family's tiny processor, loaded as ``Blip2Model.load`` loads one, at 224x224."""
    family = TINY_RANDOM_T5 if KNOWN[model_id]().text_config.is_encoder_decoder else TINY_RANDOM_OPT
    tiny = resolve_builtin(family)
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


def random_model(config: ModelConfig, model_id: str, smoke: bool) -> Blip2Model:
    """``Blip2Model`` of ``model_id``'s architecture with random weights, as configured."""
    directory = Path(tempfile.mkdtemp(prefix="random-blip2-"))
    try:
        save_random_checkpoint(model_id, directory, config.max_new_tokens_limit, smoke)
        return Blip2Model.load(config.model_copy(update={"model_id": str(directory)}))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _random_engine(config: ModelConfig, model_id: str, smoke: bool) -> Blip2Engine:
    model = random_model(config, model_id, smoke)
    return Blip2Engine(model, config.max_rows, int(config.feature_cache_mib * 2**20))


def factory(model_id: str = OPT_2_7B, smoke: bool = False) -> Callable[[ModelConfig], Blip2Engine]:
    """A model factory for ``build_application``: a random ``model_id`` with the config's
    settings, in the decoding loop's engine."""
    return functools.partial(_random_engine, model_id=model_id, smoke=smoke)


def measure_bare(model: Any, batch_size: int, repeats: int) -> dict[str, Any]:
    """Median latency of ``model.generate`` on ``batch_size`` requests, after one warm-up."""
    rng = np.random.default_rng(batch_size)
    size = IMAGE_SIZE
    requests = [
        ModelRequest(
            task="vqa",
            text="What is in the picture?",
            image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        )
        for _ in range(batch_size)
    ]
    times = []
    for attempt in range(repeats + 1):
        started = time.perf_counter()
        results = model.generate(requests)
        elapsed = time.perf_counter() - started
        failed = [r for r in results if not isinstance(r, ModelResult)]
        if failed:
            raise RuntimeError(f"generation failed: {failed[0]!r}")
        if attempt:
            times.append(elapsed)
    latency = statistics.median(times)
    first = results[0]
    return {
        "batch_size": batch_size,
        "prompt_tokens": first.prompt_tokens if isinstance(first, ModelResult) else 0,
        "latency_ms": round(latency * 1000, 1),
        "images_per_s": round(batch_size / latency, 2),
    }
