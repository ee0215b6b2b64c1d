"""Untrained tiny BLIP-2 checkpoints, built offline and saved like a real Hub checkpoint.

``build_tiny_blip2`` writes ``model.safetensors``, the configs, a ``Blip2Processor`` (image
processor + byte-level BPE tokenizer) and a generation config into a directory, so the tiny
models go through exactly the same ``from_pretrained`` code path as a real checkpoint.
``resolve_builtin`` maps the ``builtin:`` names of :mod:`serve_app.config` to such a directory,
building it once into a cache, and ``builtin:shapes-blip2`` to the trained demo checkpoint
shipped inside the package (see :mod:`serve_app.demo`).
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from serve_app.config import TINY_RANDOM_OPT, TINY_RANDOM_T5

Family = Literal["opt", "t5"]

BUILTIN_PREFIX = "builtin:"
BUILTINS: dict[str, Family] = {TINY_RANDOM_OPT: "opt", TINY_RANDOM_T5: "t5"}
DEMO_SHAPES = "builtin:shapes-blip2"
"""A tiny BLIP-2 trained on the synthetic shapes task of :mod:`serve_app.demo.task`."""
SHIPPED: dict[str, Path] = {DEMO_SHAPES: Path(__file__).parent / "demo" / "shapes-blip2"}
"""Builtin names of checkpoints that ship as package data, and their directories."""
RECIPE_VERSION = 1
"""Bump whenever the build recipe changes, so stale cached builds are not reused."""

IMAGE_SIZE = 32
PATCH_SIZE = 8
HIDDEN = 32
NUM_QUERY_TOKENS = 4
MAX_POSITIONS = 2048
VOCAB_SIZE = 768

_CORPUS = """\
Question: What is in the picture? Answer: A cat sitting on a red sofa.
Question: What color is the car? Answer: The car is blue.
Question: How many people are in the photo? Answer: There are two people.
Question: Where is the dog? Answer: The dog is running in the park.
Question: What is the man holding? Answer: He is holding an umbrella.
Question: Is it raining? Answer: Yes, it is raining outside.
Question: What time of day is it? Answer: It is night and the sky is dark.
Question: Which animal is this? Answer: This is a brown horse in a green field.
a photo of a small white dog lying on the grass next to a ball
a picture of a city street with tall buildings, cars and a yellow bus
an image of a woman riding a bicycle along the beach at sunset
a close up of a plate of food with rice, vegetables and chicken
two children playing football on a sunny afternoon in the garden
a bowl of fresh fruit on a wooden table by the kitchen window
a train stopped at the station while people wait on the platform
a black and white photograph of an old house near the river
the mountains are covered with snow and the lake is very calm
there is a laptop, a cup of coffee and a book on the desk
Who, what, when, where, why and how? Describe the scene in one sentence.
The quick brown fox jumps over the lazy dog. It was 10 o'clock, 2024.
"""


def _transformers() -> Any:
    """The ``transformers`` module, imported lazily (it is slow to import and loosely typed)."""
    return importlib.import_module("transformers")


def _build_tokenizer(family: Family) -> Any:
    """A deterministic byte-level BPE tokenizer with the family's special-token conventions."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    hf = _transformers()

    specials = ["<s>", "<pad>", "</s>", "<unk>"] if family == "opt" else ["<pad>", "</s>", "<unk>"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS.splitlines(), trainer)
    eos_id = specials.index("</s>")
    if family == "opt":
        # OPT prepends "</s>" as its beginning-of-sequence token and pads on the left.
        backend.post_processor = processors.TemplateProcessing(
            single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", eos_id)]
        )
        return hf.PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token="</s>",
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            padding_side="left",
        )
    # T5 has no beginning-of-sequence token and appends "</s>".
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)]
    )
    return hf.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
    )


def _init_weights(model: Any, seed: int, muted_ids: list[int]) -> None:
    """Re-initialise every parameter deterministically so greedy outputs are robust and varied.

    Vision and Q-Former matrices get ``N(0, 1/fan_in)`` and text-model matrices twice that
    standard deviation (so attention and MLPs, not the residual token embedding, drive the next
    token); norms are identity and biases zero. Embeddings, query tokens and the output head get
    ``N(0, 1)``, which spreads the logits widely, so greedy decoding does not flip on tiny float
    differences between batched and unbatched runs. Output rows of ``muted_ids`` (unprintable
    byte tokens and special tokens other than end-of-sequence) are scaled down so the model
    rarely emits them.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            normal = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            lowered = name.lower()
            if "norm" in lowered and leaf == "weight":
                param.fill_(1.0)
            elif leaf == "bias":
                param.zero_()
            elif "embed_positions" in name:
                param.copy_(normal * 0.5)
            elif param.dim() >= 2 and not any(k in lowered for k in ("embed", "shared", "lm_head")):
                text = name.startswith(("language_model.", "language_projection."))
                param.copy_(normal * (2.0 if text else 1.0) / param[0].numel() ** 0.5)
            else:
                param.copy_(normal)
        model.get_output_embeddings().weight[muted_ids] *= 0.05


def _muted_ids(tokenizer: Any) -> list[int]:
    """Ids of tokens that do not decode to printable ASCII, and specials other than eos."""
    muted = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if token_id == tokenizer.eos_token_id:
            continue
        if token_id in tokenizer.all_special_ids or not (text.isascii() and text.isprintable()):
            muted.append(token_id)
    return muted


def build_tiny_blip2(family: Family, directory: Path, seed: int = 0) -> Path:
    """Build an untrained tiny BLIP-2 and save it, with its processor, into ``directory``.

    Args:
        family: ``"opt"`` (decoder-only language model) or ``"t5"`` (encoder-decoder).
        directory: Where to save; created if missing.
        seed: Seed of the weight initialisation; the same seed gives identical weights.

    Returns:
        ``directory``, loadable with ``Blip2ForConditionalGeneration.from_pretrained``.
    """
    import torch

    hf = _transformers()
    if family not in ("opt", "t5"):
        raise ValueError(f"unknown family {family!r}; expected 'opt' or 't5'")
    tokenizer = _build_tokenizer(family)
    image_processor = hf.BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = hf.Blip2Processor(
        image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=NUM_QUERY_TOKENS
    )
    tok = processor.tokenizer
    vocab_size = len(tok)  # includes the "<image>" token the processor added
    image_token_id = tok.convert_tokens_to_ids("<image>")
    common = {
        "vocab_size": vocab_size,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    if family == "opt":
        text_config = hf.OPTConfig(
            **common,
            bos_token_id=tok.bos_token_id,
            hidden_size=HIDDEN,
            word_embed_proj_dim=HIDDEN,
            ffn_dim=2 * HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_POSITIONS,
        )
    else:
        text_config = hf.T5Config(
            **common,
            decoder_start_token_id=tok.pad_token_id,
            d_model=HIDDEN,
            d_kv=HIDDEN // 4,
            d_ff=2 * HIDDEN,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
        )
    vision_config = hf.Blip2VisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    qformer_config = hf.Blip2QFormerConfig(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        encoder_hidden_size=HIDDEN,
        vocab_size=vocab_size,
    )
    config = hf.Blip2Config(
        vision_config=vision_config.to_dict(),
        qformer_config=qformer_config.to_dict(),
        text_config=text_config.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=image_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        model = hf.Blip2ForConditionalGeneration(config)
    _init_weights(model, seed, _muted_ids(tok))
    model.eval()
    generation = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    if family == "opt":
        generation["bos_token_id"] = tok.bos_token_id
    else:
        generation["decoder_start_token_id"] = tok.pad_token_id
    model.generation_config = hf.GenerationConfig(**generation)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def default_cache_dir() -> Path:
    """``$SERVE_APP_CACHE`` if set, else ``~/.cache/serve_app``."""
    env = os.environ.get("SERVE_APP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "serve_app"


def resolve_builtin(model_id: str, cache_dir: Path | None = None) -> Path | None:
    """Return the directory of a builtin model, building an untrained one on first use.

    The build is written to a temporary directory and renamed into place, so concurrent
    replicas never see a partial checkpoint.

    Args:
        model_id: A model id; only ``builtin:`` names are handled.
        cache_dir: Root of the cache; :func:`default_cache_dir` if ``None``.

    Returns:
        The checkpoint directory, or ``None`` if ``model_id`` is not a ``builtin:`` name.

    Raises:
        ValueError: ``model_id`` is a ``builtin:`` name that does not exist.
    """
    if not model_id.startswith(BUILTIN_PREFIX):
        return None
    if model_id in SHIPPED:
        return SHIPPED[model_id]
    family = BUILTINS.get(model_id)
    if family is None:
        known = ", ".join(sorted([*BUILTINS, *SHIPPED]))
        raise ValueError(f"unknown builtin model {model_id!r}; known builtin models: {known}")
    root = (cache_dir if cache_dir is not None else default_cache_dir()) / "builtin"
    name = model_id[len(BUILTIN_PREFIX) :]
    target = root / f"{name}-v{RECIPE_VERSION}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        build_tiny_blip2(family, staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise  # not a concurrent build that won the race
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
