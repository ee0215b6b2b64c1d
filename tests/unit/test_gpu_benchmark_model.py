"""The GPU benchmark's model at smoke sizes on the CPU: real code path, fixed-length outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import gpu_model
from serve_app.config import ModelConfig
from serve_app.model.architectures import NUM_QUERY_TOKENS, OPT_2_7B
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
    model = gpu_model.random_model(config, OPT_2_7B, smoke=True)
    info = model.info()
    assert info.num_query_tokens == NUM_QUERY_TOKENS
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
