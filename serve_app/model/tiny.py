"""Untrained tiny BLIP-2 checkpoints (OPT and Flan-T5 families, and a retrieval model), built
offline and saved like a real Hub checkpoint: ``model.safetensors``, the configs, a
``Blip2Processor`` (image processor and byte-level BPE tokenizer) and a generation config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serve_app.model.checkpoints import blip2_config, fast_tokenizer, transformers
from serve_app.model.types import Family

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


def _build_tokenizer(family: Family) -> Any:
    """A deterministic byte-level BPE tokenizer with the family's special-token conventions."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

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
        return fast_tokenizer(backend, "opt", bos_token="</s>")
    # T5 has no beginning-of-sequence token and appends "</s>".
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)]
    )
    return fast_tokenizer(backend, "t5")


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
        if muted_ids:
            model.get_output_embeddings().weight[muted_ids] *= 0.05


def _vision_config(hf: Any) -> Any:
    return hf.Blip2VisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
    )


def _qformer_config(hf: Any, vocab_size: int, **extra: Any) -> Any:
    return hf.Blip2QFormerConfig(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        encoder_hidden_size=HIDDEN,
        vocab_size=vocab_size,
        **extra,
    )


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

    hf = transformers()
    if family not in ("opt", "t5"):
        raise ValueError(f"unknown family {family!r}; expected 'opt' or 't5'")
    tokenizer = _build_tokenizer(family)
    image_processor = hf.BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = hf.Blip2Processor(
        image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=NUM_QUERY_TOKENS
    )
    tok = processor.tokenizer
    vocab_size = len(tok)  # includes the "<image>" token the processor added
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
    vision_config = _vision_config(hf)
    qformer_config = _qformer_config(hf, vocab_size)
    config = blip2_config(vision_config, qformer_config, text_config, NUM_QUERY_TOKENS, tok)
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


def build_tiny_blip2_itm(directory: Path, seed: int = 0) -> Path:
    """Build an untrained tiny ``Blip2ForImageTextRetrieval`` and save it, with its processor.

    Its tokenizer is the OPT family's; texts carry no image tokens.

    Returns:
        ``directory``, loadable with ``Blip2ForImageTextRetrieval.from_pretrained``.
    """
    import torch

    hf = transformers()
    tokenizer = _build_tokenizer("opt")
    tokenizer.padding_side = "right"
    image_processor = hf.BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = hf.Blip2Processor(image_processor=image_processor, tokenizer=tokenizer)
    vision_config = _vision_config(hf)
    qformer_config = _qformer_config(
        hf,
        len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=64,
        use_qformer_text_input=True,
    )
    config = hf.Blip2Config(
        vision_config=vision_config.to_dict(),
        qformer_config=qformer_config.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_text_hidden_size=HIDDEN,
        image_token_index=None,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        model = hf.Blip2ForImageTextRetrieval(config)
    _init_weights(model, seed, muted_ids=[])
    model.eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
