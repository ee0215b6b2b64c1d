"""The GPU benchmark's model at smoke sizes on the CPU: real code path, fixed-length outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import gpu_model
from serve_app.config import ModelConfig
from serve_app.model.types import ModelRequest, ModelResult

TOKENS = 6


def test_random_blip2_generates_exactly_max_new_tokens_at_224px(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVE_APP_CACHE", str(tmp_path))
    torch.manual_seed(0)  # random weights, but the same ones every run
    config = ModelConfig(
        device="cpu", dtype="float32", default_max_new_tokens=TOKENS, max_new_tokens_limit=TOKENS
    )
    model = gpu_model.random_opt_2_7b(config, smoke=True)
    info = model.info()
    assert info.num_query_tokens == gpu_model.NUM_QUERY_TOKENS
    assert info.image_input is not None
    assert info.image_input.width == gpu_model.IMAGE_SIZE
    image = np.zeros((gpu_model.IMAGE_SIZE, gpu_model.IMAGE_SIZE, 3), dtype=np.uint8)
    requests = [
        ModelRequest(task="vqa", text="What is it?", image=image),
        ModelRequest(task="vqa", text="How many are there?", image=image),
    ]
    results = model.generate(requests)
    assert all(isinstance(r, ModelResult) for r in results), results
    assert [r.completion_tokens for r in results if isinstance(r, ModelResult)] == [TOKENS] * 2


def test_full_sizes_match_the_published_checkpoint() -> None:
    from transformers import AutoTokenizer

    from serve_app.model.builtin import resolve_builtin

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_builtin("builtin:tiny-random-blip2-opt")))
    config = gpu_model.opt_2_7b_config(tokenizer)
    assert (config.vision_config.num_hidden_layers, config.vision_config.hidden_size) == (39, 1408)
    assert (config.qformer_config.num_hidden_layers, config.num_query_tokens) == (12, 32)
    text = config.text_config
    assert (text.num_hidden_layers, text.hidden_size, text.ffn_dim) == (32, 2560, 10240)
    assert text.vocab_size == 50304
