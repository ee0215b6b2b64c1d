"""The shipped demo model, loaded like any checkpoint, answers the shapes task correctly."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

from serve_app.config import ModelConfig
from serve_app.demo.task import FAMILIES, parse_caption, sample
from serve_app.demo.training.evaluate import answers, evaluate
from serve_app.demo.training.train import Settings
from serve_app.model.blip2 import Blip2Model
from serve_app.model.builtin import DEMO_SHAPES, resolve_builtin
from serve_app.model.types import ModelRequest
from tests.support.demo import DEMO_DIR, accuracy_bar
from tests.support.results import ok
from tests.support.serving import REPO_ROOT

SEED = 101


@pytest.fixture(scope="module")
def model() -> Blip2Model:
    return Blip2Model.load(ModelConfig(model_id=DEMO_SHAPES, device="cpu"))


def test_the_fresh_sample_is_not_one_the_model_has_seen() -> None:
    settings = Settings()
    assert SEED not in (settings.train_seed, settings.heldout_seed)


def test_checkpoint_ships_in_the_package_and_is_small() -> None:
    assert resolve_builtin(DEMO_SHAPES) == DEMO_DIR
    names = {path.name for path in DEMO_DIR.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    } <= names
    assert sum(path.stat().st_size for path in DEMO_DIR.iterdir()) < 10 * 1024 * 1024
    config = json.loads((DEMO_DIR / "config.json").read_text())
    assert config["architectures"] == ["Blip2ForConditionalGeneration"]


def test_model_loads_like_a_hub_checkpoint(model: Blip2Model) -> None:
    assert model.info().source == DEMO_SHAPES
    assert (model.family, model.dtype, model.device) == ("opt", "float32", "cpu")


def test_tokenizer_knows_every_word_of_the_task(model: Blip2Model) -> None:
    tokenizer = AutoTokenizer.from_pretrained(DEMO_DIR)
    for example in sample(SEED, 200):
        prompt = model.build_prompt("vqa", example.question)
        for text in (prompt, example.answer):
            ids = tokenizer(text)["input_ids"]
            assert tokenizer.unk_token_id not in ids, text
            decoded = tokenizer.decode(ids, skip_special_tokens=True)
            assert re.sub(r" ([:?])", r"\1", decoded) == " ".join(text.lower().split())


def test_accuracy_on_a_fresh_sample(model: Blip2Model) -> None:
    accuracy = evaluate(model, sample(SEED, 150))
    assert sum(accuracy.asked.values()) == 150
    assert accuracy.overall >= accuracy_bar(), {f: accuracy.family(f) for f in FAMILIES}


def test_batched_and_one_at_a_time_answers_agree(model: Blip2Model) -> None:
    examples = sample(SEED + 1, 20)  # every family, captions of different lengths
    batched = answers(model, examples, batch_size=len(examples))
    assert batched == answers(model, examples, batch_size=1)
    assert all(batched)


def test_the_example_images_get_the_answers_the_readme_shows(model: Blip2Model) -> None:
    folder = REPO_ROOT / "examples" / "images"
    for name, expected in json.loads((folder / "answers.json").read_text()).items():
        image = np.asarray(Image.open(folder / name).convert("RGB"))
        questions = list(expected["questions"])
        requests = [ModelRequest(task="caption", image=image)] + [
            ModelRequest(task="vqa", text=question, image=image) for question in questions
        ]
        caption, *replies = [ok(result).text for result in model.generate(requests)]
        assert parse_caption(caption) == parse_caption(expected["caption"]), name
        assert replies == [expected["questions"][q] for q in questions], name


@pytest.mark.parametrize("setting", [{"static_kv_cache": True}, {"attn_implementation": "eager"}])
def test_decoding_settings_answer_as_the_defaults(
    model: Blip2Model, setting: dict[str, object]
) -> None:
    examples = sample(SEED + 2, 12)
    config = ModelConfig.model_validate({"model_id": DEMO_SHAPES, "device": "cpu", **setting})
    assert answers(Blip2Model.load(config), examples, 6) == answers(model, examples, 6)
