"""The demo retrieval model's pieces: the demo tokenizer (padding on the right, its first token
standing for the text) and a small ``Blip2ForImageTextRetrieval``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.demo import task
from serve_app.demo.training import build
from serve_app.model.checkpoints import transformers


@dataclass(frozen=True)
class RetrievalArchitecture:
    """Sizes of the vision transformer, the Q-Former and the shared embedding space."""

    image_size: int = task.IMAGE_SIZE
    patch_size: int = 8
    vision_hidden: int = 96
    vision_layers: int = 2
    qformer_hidden: int = 96
    qformer_layers: int = 3
    heads: int = 4
    mlp_ratio: int = 2
    num_query_tokens: int = 8
    embedding_size: int = 64
    max_text_positions: int = 64

    def encoder(self, hidden: int, layers: int) -> dict[str, int]:
        """The transformer sizes of the vision encoder or the Q-Former."""
        return build.encoder_sizes(hidden, layers, self.mlp_ratio, self.heads)


def build_processor(arch: RetrievalArchitecture) -> Any:
    """A ``Blip2Processor`` with no image tokens: the demo tokenizer, padding on the right."""
    hf = transformers()
    tokenizer = build.build_tokenizer()
    tokenizer.padding_side = "right"
    image_processor = hf.BlipImageProcessor(
        size={"height": arch.image_size, "width": arch.image_size}
    )
    return hf.Blip2Processor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(arch: RetrievalArchitecture, tokenizer: Any) -> Any:
    """An untrained ``Blip2ForImageTextRetrieval``, no dropout, ``N(0, INIT_STD)`` weights
    (the query tokens included). Seed torch's global generator first."""
    import torch

    hf = transformers()
    vision_config = hf.Blip2VisionConfig(
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        **arch.encoder(arch.vision_hidden, arch.vision_layers),
        initializer_range=build.INIT_STD,
    )
    qformer_config = hf.Blip2QFormerConfig(
        **arch.encoder(arch.qformer_hidden, arch.qformer_layers),
        encoder_hidden_size=arch.vision_hidden,
        cross_attention_frequency=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=arch.max_text_positions,
        use_qformer_text_input=True,
    )
    config = hf.Blip2Config(
        vision_config=vision_config.to_dict(),
        qformer_config=qformer_config.to_dict(),
        num_query_tokens=arch.num_query_tokens,
        image_text_hidden_size=arch.embedding_size,
        image_token_index=None,
    )
    model = hf.Blip2ForImageTextRetrieval(config)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, build.INIT_STD)
    return model
