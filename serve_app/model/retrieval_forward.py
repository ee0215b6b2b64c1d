"""The three halves of ``Blip2ForImageTextRetrieval.forward``, each runnable alone.

Transformers' ``forward`` computes an image side and a text side together; a server needs them
apart (an image embedded once scores against any text later) and needs the matching head on
pairs whose image was encoded once for all its candidate texts. These functions compose the
model's own modules exactly as its ``forward`` does (with no image tokens in the text), so their
outputs equal ``forward``'s; the trainer of the demo model uses them too. No Ray here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional


def encode_images(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision encoder's output for a batch of images: (images, patches + 1, hidden)."""
    encoded: torch.Tensor = model.vision_model(pixel_values=pixel_values, return_dict=True)[0]
    return encoded


def image_query_embeddings(model: Any, encoded_images: torch.Tensor) -> torch.Tensor:
    """The contrastive image embeddings: one L2-normalised vector per query token.

    Returns:
        (images, num_query_tokens, image_text_hidden_size).
    """
    queries = model.query_tokens.expand(encoded_images.shape[0], -1, -1)
    output = model.qformer(
        query_embeds=queries,
        encoder_hidden_states=encoded_images,
        encoder_attention_mask=_ones(encoded_images),
        return_dict=True,
    ).last_hidden_state
    projected = model.vision_projection(output.to(model.vision_projection.weight.dtype))
    return functional.normalize(projected, dim=-1)


def text_embeddings(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The contrastive text embeddings: the first token's projected, L2-normalised state.

    Returns:
        (texts, image_text_hidden_size).
    """
    output = model.qformer(
        query_embeds=model.embeddings(input_ids=input_ids),
        query_length=0,
        attention_mask=attention_mask,
        return_dict=True,
    ).last_hidden_state
    projected = model.text_projection(output[:, 0, :].to(model.text_projection.weight.dtype))
    return functional.normalize(projected, dim=-1)


def similarity(image_queries: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """BLIP-2's contrastive score: the best cosine similarity over an image's query vectors.

    Args:
        image_queries: (images, queries, dim), normalised.
        texts: (texts, dim), normalised.

    Returns:
        (images, texts).
    """
    return torch.einsum("iqd,td->itq", image_queries, texts).amax(dim=-1)


def matching_logits(
    model: Any, encoded_images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The image-text matching head's logits (no match, match) for aligned pairs.

    Args:
        encoded_images: (pairs, patches + 1, hidden), row ``i`` the image of pair ``i``.
        input_ids: (pairs, tokens), row ``i`` the text of pair ``i``.
        attention_mask: (pairs, tokens).

    Returns:
        (pairs, 2).
    """
    queries = model.query_tokens.expand(encoded_images.shape[0], -1, -1)
    query_mask = torch.ones(queries.shape[:-1], dtype=attention_mask.dtype, device=queries.device)
    output = model.qformer(
        query_embeds=model.embeddings(input_ids=input_ids, query_embeds=queries),
        query_length=queries.shape[1],
        attention_mask=torch.cat([query_mask, attention_mask], dim=1),
        encoder_hidden_states=encoded_images,
        encoder_attention_mask=_ones(encoded_images),
        return_dict=True,
    ).last_hidden_state
    query_states = output[:, : queries.shape[1], :].to(model.itm_head.weight.dtype)
    logits: torch.Tensor = model.itm_head(query_states).mean(dim=1)
    return logits


def _ones(encoded_images: torch.Tensor) -> torch.Tensor:
    return torch.ones(encoded_images.shape[:-1], dtype=torch.long, device=encoded_images.device)
