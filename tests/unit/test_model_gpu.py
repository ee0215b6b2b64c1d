"""The model wrapper on CUDA: float16 by default, and batched greedy equal to one-at-a-time."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.config import TINY_RANDOM_OPT, TINY_RANDOM_T5, ModelConfig
from serve_app.model.blip2 import Blip2Model
from tests.unit.test_model import ok, request

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("model_id", [TINY_RANDOM_OPT, TINY_RANDOM_T5])
def test_auto_dtype_on_cuda_is_float16_and_generates(
    model_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVE_APP_CACHE", str(tmp_path))
    model = Blip2Model.load(ModelConfig(model_id=model_id))
    assert model.device.startswith("cuda")
    assert model.dtype == "float16"
    results = [ok(r) for r in model.generate([request("What?", 0), request("Why not?", 1)])]
    assert all(r.completion_tokens > 0 for r in results)


@pytest.mark.parametrize("model_id", [TINY_RANDOM_OPT, TINY_RANDOM_T5])
def test_float32_on_cuda_batched_equals_alone(
    model_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVE_APP_CACHE", str(tmp_path))
    model = Blip2Model.load(ModelConfig(model_id=model_id, device="cuda", dtype="float32"))
    requests = [request("What?", 0), request("How many red cars are in the photo?", 1, size=64)]
    batched = [ok(r) for r in model.generate(requests)]
    assert batched == [ok(model.generate([r])[0]) for r in requests]
