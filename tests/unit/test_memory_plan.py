"""The memory plan: parameter counts against the published ones, the plan against what an
H200 measured, a batch per GPU size for every listed checkpoint, the command, and a replica's
refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from serve_app.config import DEMO_SHAPES, ModelConfig, RetrievalModelConfig
from serve_app.deployments.memory_check import MemoryCheck
from serve_app.memory_plan import main
from serve_app.model.architectures import (
    FLAN_T5_XL,
    FLAN_T5_XXL,
    ITM_VIT_G,
    KNOWN,
    OPT_2_7B,
    OPT_6_7B,
    RETRIEVAL,
)
from serve_app.model.memory import GIB, GPUS, Workload, count_parameters, plan_for, plan_memory
from tests.support.serving import REPO_ROOT

PUBLISHED_BILLIONS = {
    OPT_2_7B: "3.74",
    OPT_6_7B: "7.75",
    FLAN_T5_XL: "3.94",
    FLAN_T5_XXL: "12.2",
    ITM_VIT_G: "1.17",
}
"""The parameter counts the Hugging Face Hub shows for each checkpoint's files."""


@pytest.mark.parametrize("model_id", list(PUBLISHED_BILLIONS))
def test_parameter_counts_match_the_published_ones(model_id: str) -> None:
    config = KNOWN[model_id]()
    stored = count_parameters(config, retrieval=model_id in RETRIEVAL).total
    if model_id in (FLAN_T5_XL, FLAN_T5_XXL):
        # The T5 checkpoints' files hold the shared token embedding twice (shared and
        # encoder.embed_tokens); the model ties them, and the Hub counts stored tensors.
        stored += config.text_config.vocab_size * config.text_config.d_model
    published = PUBLISHED_BILLIONS[model_id]
    digits = len(published.split(".")[1])
    assert f"{stored / 1e9:.{digits}f}" == published


def test_the_plan_matches_what_an_h200_measured() -> None:
    result = json.loads((REPO_ROOT / "benchmarks/results/gpu-variants.json").read_text())
    assert result["machine"]["gpu"] == "NVIDIA H200"
    for row in result["results"]:
        largest = row["batches"][-1]
        workload = Workload(largest["prompt_tokens"], result["max_new_tokens"], num_beams=1)
        quantization = {"int8": "int8", "nf4": "nf4"}.get(row["variant"], "none")
        config = KNOWN[row["model"]]()
        plan = plan_memory(row["model"], config, torch.float16, quantization, workload)
        assert plan.weights_bytes / GIB == pytest.approx(row["weights_gib"], rel=0.03), row
        planned_peak = plan.weights_bytes + largest["batch_size"] * plan.request_bytes()
        assert planned_peak / GIB >= 0.97 * largest["peak_gib"], row


@pytest.mark.parametrize("model_id", [m for m in KNOWN if m not in RETRIEVAL])
def test_every_checkpoint_gets_a_batch_per_gpu_size(model_id: str) -> None:
    plan = plan_for(ModelConfig(model_id=model_id, dtype="float16"))
    batches = [plan.largest_batch(memory) for memory in GPUS.values()]
    assert batches == sorted(batches)
    assert batches[-1] >= 32
    for memory, batch in zip(GPUS.values(), batches, strict=True):
        if batch:
            assert plan.needed_bytes(batch) <= memory < plan.needed_bytes(batch + 1) or batch == 512


def test_quantization_fits_flan_t5_xxl_on_a_24_gb_card() -> None:
    card = GPUS["A10G / L4 24 GB"]
    settings = ModelConfig(model_id=FLAN_T5_XXL, dtype="float16")
    assert plan_for(settings).largest_batch(card) == 0
    quantized = plan_for(settings.model_copy(update={"quantization": "int8"}))
    assert quantized.largest_batch(card, num_beams=1) >= 8
    assert quantized.weights_bytes < 0.7 * plan_for(settings).weights_bytes


def test_beams_and_longer_answers_cost_memory() -> None:
    plan = plan_for(ModelConfig(model_id=OPT_2_7B, max_new_tokens_limit=128, max_num_beams=4))
    short = plan_for(ModelConfig(model_id=OPT_2_7B, max_new_tokens_limit=32, max_num_beams=4))
    assert plan.request_bytes() > plan.request_bytes(1) * 3
    assert short.request_bytes() < plan.request_bytes()


def test_the_command_plans_the_production_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(REPO_ROOT / "serve_config.yaml"), "--gpu-memory-gib", "24"]) == 0
    out = capsys.readouterr().out
    assert "Salesforce/blip2-flan-t5-xl: float16" in out
    assert "max_rows 32 fits" in out


def test_the_command_warns_when_the_batch_does_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model-id", OPT_6_7B, "--gpu-memory-gib", "16", "--batch", "32"]
    assert main(argv) == 1
    assert "does not fit" in capsys.readouterr().err
    assert main([*argv[:-1], "4", "--quantization", "int8"]) == 0


def test_a_replica_refuses_a_model_that_cannot_fit_before_loading_it() -> None:
    with pytest.raises(ValueError, match=r"does not fit in 0\.5 GiB[\s\S]*weights") as error:
        MemoryCheck(ModelConfig(model_id=DEMO_SHAPES, gpu_memory_gib=0.5), gpu_share=None)
    assert "the weights do not fit" in str(error.value)


def test_a_replica_refuses_a_batch_that_cannot_fit() -> None:
    check = MemoryCheck(ModelConfig(model_id=OPT_2_7B, gpu_memory_gib=22.5), gpu_share=0.5)
    check.check_batch(32)
    with pytest.raises(ValueError, match=r"max_rows 64 does not fit in 22\.5 GiB"):
        check.check_batch(64)


def test_on_a_cpu_nothing_is_checked(tmp_path: Path) -> None:
    settings = RetrievalModelConfig(model_id=str(tmp_path), device="cpu")
    MemoryCheck(settings, gpu_share=None).check_batch(10**6)
