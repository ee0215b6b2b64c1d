"""The shipped demo retrieval model, loaded like any checkpoint, retrieves and matches shapes
scenes; its trainer runs."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from serve_app.config import DEMO_SHAPES_ITM, RetrievalModelConfig
from serve_app.demo import task
from serve_app.demo.training import build_retrieval
from serve_app.demo.training.evaluate_retrieval import evaluate_retrieval, gallery
from serve_app.demo.training.train_retrieval import Settings, train
from serve_app.model.builtin import SHIPPED, resolve_builtin
from serve_app.model.retrieval import Blip2Retrieval
from tests.support.demo import retrieval_bars

SEED = 111
DIRECTORY = SHIPPED[DEMO_SHAPES_ITM]


@pytest.fixture(scope="module")
def model() -> Blip2Retrieval:
    return Blip2Retrieval.load(RetrievalModelConfig(model_id=DEMO_SHAPES_ITM, device="cpu"))


def test_the_fresh_sample_is_not_one_the_model_has_seen() -> None:
    settings = Settings()
    assert SEED not in (settings.train_seed, settings.heldout_seed)


def test_checkpoint_ships_in_the_package_and_is_small() -> None:
    assert resolve_builtin(DEMO_SHAPES_ITM) == DIRECTORY
    names = {path.name for path in DIRECTORY.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= names
    assert sum(path.stat().st_size for path in DIRECTORY.iterdir()) < 10 * 1024 * 1024
    config = json.loads((DIRECTORY / "config.json").read_text())
    assert config["architectures"] == ["Blip2ForImageTextRetrieval"]


def test_model_loads_like_a_hub_checkpoint(model: Blip2Retrieval) -> None:
    info = model.info()
    assert (info.source, info.dtype, info.device) == (DEMO_SHAPES_ITM, "float32", "cpu")
    assert info.image_input is not None and info.image_input.width == task.IMAGE_SIZE


def test_tokenizer_knows_every_word_of_the_captions() -> None:
    tokenizer = AutoTokenizer.from_pretrained(DIRECTORY)
    rng = random.Random(SEED)
    for _ in range(100):
        scene = task.random_scene(rng)
        for text in (task.caption(scene), task.altered_caption(scene, rng)):
            assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], text


def test_recall_and_matching_on_fresh_scenes(model: Blip2Retrieval) -> None:
    figures = evaluate_retrieval(model, SEED, galleries=2, size=100)
    bars = retrieval_bars()
    assert figures.text_to_image["contrastive"] >= bars.recall, figures
    assert figures.image_to_text["contrastive"] >= bars.recall, figures
    assert min(figures.text_to_image["pooled"], figures.image_to_text["pooled"]) >= (
        bars.pooled_recall
    ), figures
    assert figures.matching_accuracy >= bars.matching, figures


def test_a_galleries_captions_all_differ() -> None:
    scenes = gallery(random.Random(SEED), 100)
    assert len({task.caption(scene) for scene in scenes}) == 100


def test_the_trainer_runs_and_updates_every_part() -> None:
    arch = build_retrieval.RetrievalArchitecture(vision_layers=1, qformer_layers=1)
    processor = build_retrieval.build_processor(arch)
    torch.manual_seed(0)
    model = build_retrieval.build_model(arch, processor.tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    losses = train(model, processor, Settings(steps=12, scenes_per_batch=8, warmup_steps=2))
    assert all(math.isfinite(value) for value in losses.values())
    moved = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert np.mean(moved) > 0.9
