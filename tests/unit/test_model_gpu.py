"""The model wrapper on CUDA: float16 by default, batched greedy equal to one-at-a-time, and
the demo model's accuracy with its language model quantized."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.config import DEMO_SHAPES, TINY_RANDOM_OPT, TINY_RANDOM_T5, ModelConfig
from serve_app.demo.task import sample
from serve_app.demo.training.evaluate import answers, evaluate
from serve_app.model.blip2 import Blip2Model
from tests.support.results import ok, request

pytestmark = pytest.mark.gpu
SEED = 101


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


@pytest.fixture(scope="module")
def float32_accuracy() -> float:
    model = Blip2Model.load(ModelConfig(model_id=DEMO_SHAPES, device="cuda", dtype="float32"))
    return evaluate(model, sample(SEED, 150)).overall


@pytest.mark.parametrize(("quantization", "tolerance"), [("int8", 0.02), ("nf4", 0.10)])
def test_quantized_demo_model_keeps_its_accuracy_on_cuda(
    quantization: str, tolerance: float, float32_accuracy: float
) -> None:
    settings = {"model_id": DEMO_SHAPES, "device": "cuda", "quantization": quantization}
    config = ModelConfig.model_validate(settings)
    accuracy = evaluate(Blip2Model.load(config), sample(SEED, 150)).overall
    print(f"demo accuracy on CUDA: float32 {float32_accuracy:.3f}, {quantization} {accuracy:.3f}")
    assert accuracy >= float32_accuracy - tolerance


def test_static_kv_cache_answers_as_the_dynamic_one_on_cuda() -> None:
    examples = sample(SEED, 16)
    replies = []
    for static in (False, True):
        config = ModelConfig(
            model_id=DEMO_SHAPES, device="cuda", dtype="float32", static_kv_cache=static
        )
        replies.append(answers(Blip2Model.load(config), examples, batch_size=8))
    assert replies[1] == replies[0]
    assert all(replies[0])


def test_a_replica_plans_against_the_cards_memory() -> None:
    import torch

    from serve_app.deployments.memory_check import MemoryCheck, replica_memory_bytes

    settings = ModelConfig(model_id=DEMO_SHAPES, device="cuda")
    card = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    assert replica_memory_bytes(settings, gpu_share=None) == card
    assert replica_memory_bytes(settings, gpu_share=0.5) == card // 2
    check = MemoryCheck(settings, gpu_share=None)
    check.check_batch(64)
    with pytest.raises(ValueError, match="does not fit"):
        check.check_batch(10**6)
