"""The architectures of the Salesforce BLIP-2 checkpoints, encoded from their published configs.

The memory plan and the GPU benchmark build these on the meta device or with random weights,
so they work where the Hugging Face Hub cannot be reached. Every checkpoint pairs the ViT-g
image encoder (39 layers, 1408 wide, 224x224 images in 14-pixel patches) with a 12-layer
Q-Former and 32 query tokens; transformers' ``Blip2VisionConfig`` and ``Blip2QFormerConfig``
defaults are exactly these. The token ids are the checkpoints' own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serve_app.model.checkpoints import transformers

NUM_QUERY_TOKENS = 32

OPT_2_7B = "Salesforce/blip2-opt-2.7b"
OPT_6_7B = "Salesforce/blip2-opt-6.7b"
FLAN_T5_XL = "Salesforce/blip2-flan-t5-xl"
FLAN_T5_XXL = "Salesforce/blip2-flan-t5-xxl"
ITM_VIT_G = "Salesforce/blip2-itm-vit-g"

_OPT_VOCAB = 50304  # 50,272 rows plus the image token, padded to a multiple of 64
_OPT_IMAGE_TOKEN = 50265
_T5_VOCAB = 32128
_T5_IMAGE_TOKEN = 32100


def _opt(hidden: int, ffn: int) -> Any:
    return transformers().OPTConfig(
        vocab_size=_OPT_VOCAB,
        hidden_size=hidden,
        word_embed_proj_dim=hidden,
        ffn_dim=ffn,
        num_hidden_layers=32,
        num_attention_heads=32,
        max_position_embeddings=2048,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
    )


def _flan_t5(d_model: int, d_ff: int, heads: int) -> Any:
    return transformers().T5Config(
        vocab_size=_T5_VOCAB,
        d_model=d_model,
        d_kv=64,
        d_ff=d_ff,
        num_layers=24,
        num_decoder_layers=24,
        num_heads=heads,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def _generation(text: Any, image_token: int) -> Any:
    hf = transformers()
    return hf.Blip2Config(
        vision_config=hf.Blip2VisionConfig().to_dict(),
        qformer_config=hf.Blip2QFormerConfig().to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=image_token,
    )


def _retrieval() -> Any:
    hf = transformers()
    return hf.Blip2Config(
        vision_config=hf.Blip2VisionConfig().to_dict(),
        qformer_config=hf.Blip2QFormerConfig(use_qformer_text_input=True).to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_text_hidden_size=256,
        image_token_index=None,
    )


KNOWN: dict[str, Callable[[], Any]] = {
    OPT_2_7B: lambda: _generation(_opt(2560, 10240), _OPT_IMAGE_TOKEN),
    OPT_6_7B: lambda: _generation(_opt(4096, 16384), _OPT_IMAGE_TOKEN),
    FLAN_T5_XL: lambda: _generation(_flan_t5(2048, 5120, 32), _T5_IMAGE_TOKEN),
    FLAN_T5_XXL: lambda: _generation(_flan_t5(4096, 10240, 64), _T5_IMAGE_TOKEN),
    ITM_VIT_G: _retrieval,
}
"""Model id to a function building its ``Blip2Config``."""
RETRIEVAL = frozenset({ITM_VIT_G})
"""The known checkpoints of ``Blip2ForImageTextRetrieval`` (the others generate text)."""


def architecture_config(model_id: str, revision: str | None = None) -> Any:
    """The ``Blip2Config`` of ``model_id``: encoded here, a builtin's, or read with AutoConfig.

    Only the config is read (a few kilobytes), never the weights.
    """
    from serve_app.model.builtin import resolve_builtin

    if model_id in KNOWN:
        return KNOWN[model_id]()
    builtin = resolve_builtin(model_id)
    source = str(builtin) if builtin is not None else model_id
    return transformers().AutoConfig.from_pretrained(source, revision=revision)
