"""Pieces shared by every BLIP-2 checkpoint built here from configs (no Hub, no weights).

The untrained tiny models, the demo model's trainer and the GPU benchmark's model all wrap a
``tokenizers`` backend the way their language-model family expects, and assemble a
``Blip2Config`` whose image token is the processor's ``<image>``.
"""

from __future__ import annotations

import importlib
from typing import Any

from serve_app.model.types import Family


def transformers() -> Any:
    """The ``transformers`` module, imported lazily (it is slow to import and loosely typed)."""
    return importlib.import_module("transformers")


def fast_tokenizer(backend: Any, family: Family, bos_token: str | None = None) -> Any:
    """A ``PreTrainedTokenizerFast`` over ``backend`` with the family's conventions.

    Both use ``</s>`` to end, ``<pad>`` and ``<unk>``; OPT pads on the left (it is decoder-only)
    and starts with ``bos_token``, T5 has none and pads on the right.
    """
    specials = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    if family == "opt":
        return transformers().PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token=bos_token, padding_side="left", **specials
        )
    return transformers().PreTrainedTokenizerFast(
        tokenizer_object=backend, padding_side="right", **specials
    )


def blip2_config(
    vision: Any, qformer: Any, text: Any, num_query_tokens: int, tokenizer: Any
) -> Any:
    """A ``Blip2Config`` from its three parts; the image token is the tokenizer's ``<image>``."""
    return transformers().Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=num_query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
