"""The demo model's pieces: a word-level tokenizer over the task's words, and a small BLIP-2.

The tokenizer lower-cases its input and splits on whitespace and punctuation; every word of the
shapes task and of the service's VQA prompt is in its vocabulary, anything else is ``<unk>``.
Like OPT's, it starts every text with a beginning-of-sequence token and pads on the left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.config import DEFAULT_VQA_TEMPLATE
from serve_app.demo import task
from serve_app.model.checkpoints import blip2_config, fast_tokenizer, transformers

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
PUNCTUATION = (":", "?", ",", ".", "!", "'")
INIT_STD = 0.02


@dataclass(frozen=True)
class Architecture:
    """Sizes of the vision transformer, the Q-Former and the OPT language model."""

    image_size: int = task.IMAGE_SIZE
    patch_size: int = 8
    vision_hidden: int = 96
    vision_layers: int = 2
    qformer_hidden: int = 96
    qformer_layers: int = 2
    text_hidden: int = 96
    text_layers: int = 2
    heads: int = 4
    mlp_ratio: int = 2
    num_query_tokens: int = 8
    max_positions: int = 2176
    """Room for the longest question the service admits by default, plus generated tokens."""

    def encoder(self, hidden: int, layers: int) -> dict[str, int]:
        """The transformer sizes of the vision encoder or the Q-Former."""
        return encoder_sizes(hidden, layers, self.mlp_ratio, self.heads)


def encoder_sizes(hidden: int, layers: int, mlp_ratio: int, heads: int) -> dict[str, int]:
    """A transformer encoder's sizes, as BLIP-2's vision and Q-Former configs name them."""
    return {
        "hidden_size": hidden,
        "intermediate_size": mlp_ratio * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
    }


def vocabulary() -> list[str]:
    """Special tokens, punctuation, then the task's and the VQA prompt's words, sorted."""
    from tokenizers import pre_tokenizers

    prompt = DEFAULT_VQA_TEMPLATE.format(question="").lower()
    prompt_words = {w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(prompt)}
    words = (set(task.WORDS) | prompt_words) - set(PUNCTUATION)
    return [*SPECIAL_TOKENS, *PUNCTUATION, *sorted(words)]


def build_tokenizer() -> Any:
    """A word-level ``PreTrainedTokenizerFast``: lower case, ``<s>`` first, left padding."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {token: index for index, token in enumerate(vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return fast_tokenizer(backend, "opt", bos_token="<s>")


def build_processor(arch: Architecture) -> Any:
    """A ``Blip2Processor``: the tokenizer (plus its ``<image>`` token) and an image processor."""
    hf = transformers()
    image_processor = hf.BlipImageProcessor(
        size={"height": arch.image_size, "width": arch.image_size}
    )
    return hf.Blip2Processor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        num_query_tokens=arch.num_query_tokens,
    )


def build_model(arch: Architecture, tokenizer: Any) -> Any:
    """An untrained ``Blip2ForConditionalGeneration`` (OPT family), no dropout.

    Every part starts from ``N(0, INIT_STD)`` weights, the query tokens included (the vision
    config's default of 1e-10 and zero query tokens suit loading pretrained weights, not
    training from scratch). The weights come from torch's global generator: seed it first.
    """
    import torch

    hf = transformers()
    vocab_size = len(tokenizer)
    text_config = hf.OPTConfig(
        vocab_size=vocab_size,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        hidden_size=arch.text_hidden,
        word_embed_proj_dim=arch.text_hidden,
        ffn_dim=arch.mlp_ratio * arch.text_hidden,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.heads,
        max_position_embeddings=arch.max_positions,
        dropout=0.0,
        attention_dropout=0.0,
    )
    vision_config = hf.Blip2VisionConfig(
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        **arch.encoder(arch.vision_hidden, arch.vision_layers),
        initializer_range=INIT_STD,
    )
    qformer_config = hf.Blip2QFormerConfig(
        **arch.encoder(arch.qformer_hidden, arch.qformer_layers),
        encoder_hidden_size=arch.vision_hidden,
        cross_attention_frequency=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        vocab_size=vocab_size,
    )
    config = blip2_config(
        vision_config, qformer_config, text_config, arch.num_query_tokens, tokenizer
    )
    model = hf.Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, INIT_STD)
    model.generation_config = hf.GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=20,
    )
    return model
