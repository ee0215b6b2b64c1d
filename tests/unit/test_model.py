"""``Blip2Model`` and the builtin tiny checkpoints, end to end on CPU (no Ray, no network)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import AutoTokenizer

from serve_app.config import TINY_RANDOM_OPT, TINY_RANDOM_T5, ModelConfig
from serve_app.contract.api import GenerationParams
from serve_app.contract.errors import GenerationFailedError, InvalidImageError, InvalidRequestError
from serve_app.model.blip2 import Blip2Model
from serve_app.model.builtin import RECIPE_VERSION, resolve_builtin
from serve_app.model.tiny import build_tiny_blip2
from serve_app.model.types import ModelImageInput, ModelInfo, ModelRequest
from tests.support.results import image, ok, request
from tests.support.serving import REPO_ROOT

BUILTINS = {"opt": TINY_RANDOM_OPT, "t5": TINY_RANDOM_T5}


def record_batch_sizes(model: Blip2Model, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch ``model`` hands to the Hugging Face ``generate`` from now on."""
    batch_sizes: list[int] = []
    hf_model = model._model
    original = hf_model.generate

    def spy(**kwargs: Any) -> Any:
        batch_sizes.append(int(kwargs["input_ids"].shape[0]))
        return original(**kwargs)

    monkeypatch.setattr(hf_model, "generate", spy)
    return batch_sizes


def alone(model: Blip2Model, requests: list[ModelRequest]) -> list[Any]:
    """Each request's outcome when it is the only one in its batch."""
    return [model.generate([r])[0] for r in requests]


def test_resolve_builtin_names(tmp_path: Path) -> None:
    assert resolve_builtin("Salesforce/blip2-opt-2.7b", tmp_path) is None
    assert resolve_builtin(str(tmp_path), tmp_path) is None
    with pytest.raises(ValueError, match=r"tiny-random-blip2-opt.*tiny-random-blip2-t5"):
        resolve_builtin("builtin:no-such-model", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_builtin_is_built_once_atomically_even_when_raced(tmp_path: Path) -> None:
    paths: list[Path | None] = []
    threads = [
        threading.Thread(target=lambda: paths.append(resolve_builtin(TINY_RANDOM_T5, tmp_path)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = tmp_path / "builtin" / f"tiny-random-blip2-t5-v{RECIPE_VERSION}"
    assert paths == [expected] * 3
    assert [p.name for p in (tmp_path / "builtin").iterdir()] == [expected.name]  # no temp dirs
    weights = expected / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert resolve_builtin(TINY_RANDOM_T5, tmp_path) == expected
    assert weights.stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_build_is_deterministic_across_processes(tmp_path: Path) -> None:
    here = build_tiny_blip2("opt", tmp_path / "here")
    code = (
        "import sys; from pathlib import Path; from serve_app.model.tiny import build_tiny_blip2;"
        "build_tiny_blip2('opt', Path(sys.argv[1]))"
    )
    there = tmp_path / "there"
    subprocess.run([sys.executable, "-c", code, str(there)], cwd=REPO_ROOT, check=True)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (here / name).read_bytes() == (there / name).read_bytes(), name
    other_seed = build_tiny_blip2("opt", tmp_path / "seed1", seed=1)
    assert (other_seed / "model.safetensors").read_bytes() != (
        here / "model.safetensors"
    ).read_bytes()


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_checkpoint_is_small_and_consistent(tmp_path: Path, family: Any) -> None:
    from transformers import Blip2Config

    directory = build_tiny_blip2(family, tmp_path)
    assert sum(f.stat().st_size for f in directory.iterdir()) < 2_000_000
    config = Blip2Config.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert config.image_token_index == tokenizer.convert_tokens_to_ids("<image>")
    assert config.text_config.vocab_size == len(tokenizer)
    assert config.text_config.is_encoder_decoder == (family == "t5")
    unknown = tokenizer("What colour is the big dog? Answer: it's brown!")["input_ids"]
    assert tokenizer.unk_token_id not in unknown
    if family == "opt":
        assert tokenizer.padding_side == "left"
        assert tokenizer.bos_token_id is not None
        assert unknown[0] == tokenizer.bos_token_id
    else:
        assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (
            0,
            1,
            None,
        )
        assert config.text_config.decoder_start_token_id == tokenizer.pad_token_id
        assert unknown[-1] == tokenizer.eos_token_id


def test_load_by_builtin_name_uses_the_cache(model: Blip2Model, cache_dir: Path) -> None:
    assert (cache_dir / "builtin" / f"tiny-random-{model_name(model)}-v{RECIPE_VERSION}").is_dir()
    assert model.info() == ModelInfo(
        source=BUILTINS[model.family],
        family=model.family,
        dtype="float32",
        device="cpu",
        num_query_tokens=4,
        image_input=ModelImageInput(width=32, height=32, resample=3),
    )
    assert model.config.model_id == BUILTINS[model.family]


def model_name(model: Blip2Model) -> str:
    return BUILTINS[model.family].removeprefix("builtin:tiny-random-")


def test_load_from_a_local_directory(tmp_path: Path) -> None:
    directory = build_tiny_blip2("t5", tmp_path / "ckpt")
    loaded = Blip2Model.load(ModelConfig(model_id=str(directory), device="cpu", dtype="float32"))
    assert (loaded.family, loaded.dtype, loaded.device) == ("t5", "float32", "cpu")
    assert loaded.info().source == directory.name == "ckpt"  # never the server's path
    assert ok(loaded.generate([request("", task="caption")])[0]).text


def test_cpu_threads_caps_torch_threads(cache_dir: Path) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        Blip2Model.load(ModelConfig(model_id=TINY_RANDOM_OPT, device="cpu", cpu_threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_explicit_cuda_without_cuda_is_a_clear_error(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        Blip2Model.load(ModelConfig(model_id=TINY_RANDOM_OPT, device="cuda"))


def test_empty_batch(model: Blip2Model) -> None:
    assert model.generate([]) == []


def test_greedy_is_the_same_alone_and_in_a_mixed_batch(model: Blip2Model) -> None:
    requests = [
        request("What?", 0),
        request("How many people are standing next to the old red car in this photo?", 1, size=64),
        request("", 2, task="caption", size=30),
        request("a photo of", 3, task="caption"),
        request("Describe the picture in detail:", 4, task="prompt", size=100),
    ]
    batched = [ok(r) for r in model.generate(requests)]
    assert batched == alone(model, requests)
    assert all(r.completion_tokens == 6 for r in batched)  # random weights rarely stop early
    assert len({r.text for r in batched}) > 1


def test_different_params_are_grouped_and_match_alone(
    model: Blip2Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [
        request("What?", 0, max_new_tokens=3),
        request("Where is it?", 1, num_beams=2),
        request("Who?", 2, max_new_tokens=3),
        request("Why?", 3, repetition_penalty=1.5),
        request("When?", 4, num_beams=2),
        request("Huh?", 5, max_new_tokens=4, do_sample=True, temperature=0.7, top_p=0.9),
    ]
    expected = alone(model, requests[:5])
    batch_sizes = record_batch_sizes(model, monkeypatch)
    results = [ok(r) for r in model.generate(requests)]
    assert sorted(batch_sizes) == [1, 1, 2, 2]
    assert results[:5] == expected
    limits = [3, 6, 3, 6, 6, 4]
    assert all(0 < r.completion_tokens <= n for r, n in zip(results, limits, strict=True))


def test_default_max_new_tokens_and_explicit_limit(model: Blip2Model) -> None:
    default = ModelRequest(task="vqa", text="What?", image=image(0))
    result = ok(model.generate([default])[0])
    assert 0 < result.completion_tokens <= model.config.default_max_new_tokens
    assert ok(model.generate([request(max_new_tokens=1)])[0]).completion_tokens <= 1


def test_caps_fail_only_their_own_request(model: Blip2Model) -> None:
    limit = model.config.max_new_tokens_limit
    beams = model.config.max_num_beams
    requests = [
        request("What?", 0),
        request("What?", 1, max_new_tokens=limit + 1),
        request("What?", 2, num_beams=beams + 1),
        request("What?", 3),
    ]
    results = model.generate(requests)
    assert isinstance(results[1], InvalidRequestError)
    assert results[1].param == "params.max_new_tokens"
    assert isinstance(results[2], InvalidRequestError)
    assert results[2].param == "params.num_beams"
    assert [results[0], results[3]] == alone(model, [requests[0], requests[3]])


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((32, 32), dtype=np.uint8),
        np.zeros((32, 32, 4), dtype=np.uint8),
        np.zeros((32, 32, 3), dtype=np.float32),
        np.zeros((0, 32, 3), dtype=np.uint8),
    ],
    ids=["grey", "rgba", "float", "empty"],
)
def test_a_bad_image_fails_alone(opt_model: Blip2Model, bad: np.ndarray[Any, Any]) -> None:
    good = [request("What?", 0), request("Where is the cat?", 1)]
    poisoned = ModelRequest(task="vqa", text="What?", image=bad)
    results = opt_model.generate([good[0], poisoned, good[1]])
    assert isinstance(results[1], InvalidImageError)
    assert results[1].param == "image"
    assert [results[0], results[2]] == alone(opt_model, good)


def test_a_request_that_breaks_the_model_fails_alone(
    opt_model: Blip2Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fault inside the model (as a kernel would fail) whenever the long prompt is in the
    # batch: the batched generate raises, so every request is retried alone and only this one
    # fails.
    good = [request("What?", 0), request("a photo of", 1, task="caption")]
    poisoned = request("x" * 600, 2, task="prompt")
    hf_model = opt_model._model
    original = hf_model.generate

    def breaks_on_long_rows(**kwargs: Any) -> Any:
        if kwargs["input_ids"].shape[1] > 100:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(**kwargs)

    expected = alone(opt_model, good)
    monkeypatch.setattr(hf_model, "generate", breaks_on_long_rows)
    results = opt_model.generate([good[0], poisoned, good[1]])
    failure = results[1]
    assert isinstance(failure, GenerationFailedError)
    assert str(failure) == "generation failed"
    assert failure.__cause__ is not None
    assert [results[0], results[2]] == expected


def test_prompt_tokens_count_the_prompt_text_only(model: Blip2Model, cache_dir: Path) -> None:
    directory = resolve_builtin(BUILTINS[model.family], cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    question = "How many dogs are on the grass?"
    prompt = model.build_prompt("vqa", question)
    assert prompt == f"Question: {question} Answer:"
    expected = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    vqa, raw, empty = model.generate(
        [request(question), request(prompt, task="prompt"), request("", task="caption")]
    )
    assert ok(vqa).prompt_tokens == ok(raw).prompt_tokens == expected > 0
    assert ok(empty).prompt_tokens == 0
    assert ok(vqa).completion_tokens == 6


def test_vqa_uses_the_configured_template(model: Blip2Model) -> None:
    custom = Blip2Model(
        model.config.model_copy(update={"vqa_prompt_template": "Q: {question} A:"}),
        model.info().source,
        model._processor,
        model._model,
        torch.device("cpu"),
        torch.float32,
    )
    assert custom.build_prompt("vqa", "why?") == "Q: why? A:"
    same = ok(custom.generate([request("Q: why? A:", task="prompt")])[0])
    assert ok(custom.generate([request("why?")])[0]).text == same.text


def test_caption_includes_the_prefix(model: Blip2Model) -> None:
    result = ok(model.generate([request("a photo of", 5, task="caption")])[0])
    assert result.text.startswith("a photo of")
    assert len(result.text) > len("a photo of")
    plain = ok(model.generate([request("", 5, task="caption")])[0])
    assert plain.text and plain.completion_tokens == 6


def test_outputs_depend_on_image_and_prompt(model: Blip2Model) -> None:
    by_image = model.generate([request("What is this?", i) for i in range(4)])
    assert len({ok(r).text for r in by_image}) > 1
    by_prompt = model.generate([request(q, 0) for q in ("What is this?", "How many?", "Why?")])
    assert len({ok(r).text for r in by_prompt}) > 1


def test_importing_the_model_module_does_not_import_ray() -> None:
    code = "import serve_app.model.blip2, sys; assert 'ray' not in sys.modules, 'ray was imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def test_a_seeded_sample_is_the_same_alone_and_in_a_batch(model: Blip2Model) -> None:
    sampled = {"do_sample": True, "temperature": 1.5, "max_new_tokens": 8}
    mine = request("What is it?", 0, seed=7, **sampled)
    others = [
        request("What is it?", 1, seed=7, **sampled),
        request("Why?", 2, seed=8, **sampled),
        request("How many?", 3, **sampled),
    ]
    alone_text = ok(model.generate([mine])[0]).text
    first = model.generate([mine, *others])[0]
    last = model.generate([*others, mine])[-1]
    assert ok(first).text == ok(last).text == alone_text


@pytest.mark.parametrize("seed", [-1, 2**63])
def test_a_seed_out_of_range_is_refused(seed: int) -> None:
    with pytest.raises(ValidationError):
        GenerationParams(seed=seed)


def test_a_prompt_past_the_model_positions_fails_alone_before_any_batch_runs(
    opt_model: Blip2Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2000 emoji are ~8000 byte-level tokens; the tiny OPT has 2048 positions."""
    batch_sizes = record_batch_sizes(opt_model, monkeypatch)
    requests = [request("What?", 0), request("\U0001f600" * 2000, 1), request("Why?", 2)]
    first, overlong, last = opt_model.generate(requests)
    assert isinstance(overlong, InvalidRequestError), overlong
    assert overlong.param == "question" and "2048 positions" in overlong.message
    assert ok(first).text and ok(last).text
    assert batch_sizes == [2]
    fits = request("word " * 300, 3, task="prompt", max_new_tokens=6)
    assert ok(opt_model.generate([fits])[0]).completion_tokens > 0
