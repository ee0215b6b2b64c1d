"""BLIP-2's forward passes as the decoding loop needs them (no Ray).

Image features (vision encoder, Q-Former and projection: the language model's inputs for an
image's query tokens), the prefill of new rows (their prompt, image features in place of the
image tokens) and one decoding step for all running rows. Each mirrors what
``Blip2ForConditionalGeneration.generate`` does for the same rows, so greedy tokens are the
same.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from serve_app.engine.language_rows import EncoderRows, KeyValues, LanguageRows
from serve_app.model.types import Family


class Blip2Runner:
    """Runs a loaded ``Blip2ForConditionalGeneration`` one loop step at a time."""

    def __init__(self, hf_model: Any, family: Family, device: torch.device) -> None:
        self._model = hf_model
        self._lm = hf_model.language_model
        self._family = family
        self._device = device
        config = hf_model.config
        self._image_token_id = int(config.image_token_index)
        self._embed = hf_model.get_input_embeddings()
        start = getattr(config.text_config, "decoder_start_token_id", None)
        self.decoder_start_id = int(start) if start is not None else 0
        """Flan-T5's first decoder token."""

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the language model's inputs."""
        return self._embed.weight.dtype  # type: ignore[no-any-return]

    @torch.inference_mode()
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[images, query tokens, hidden]``: what the language model sees of each image."""
        model = self._model
        vision_dtype = model.vision_model.embeddings.patch_embedding.weight.dtype
        image_embeds = model.vision_model(
            pixel_values.to(self._device, vision_dtype), return_dict=True
        ).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self._device)
        query_tokens = model.query_tokens.expand(image_embeds.shape[0], -1, -1)
        query_output = model.qformer(
            query_embeds=query_tokens,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
            return_dict=True,
        ).last_hidden_state
        if query_output.dtype != image_embeds.dtype:  # the Q-Former runs in float32
            query_output = query_output.to(image_embeds.dtype)
        return model.language_projection(query_output).to(self.dtype)  # type: ignore[no-any-return]

    @torch.inference_mode()
    def prefill(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        features: torch.Tensor,
        decoder_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, LanguageRows]:
        """Run new rows' prompts; their next-token logits and their state.

        Args:
            ids: ``[rows, length]`` image tokens and prompt (decoder-only: left-padded, and may
                end with tokens generated before; Flan-T5: right-padded).
            mask: ``[rows, length]``: 1 on real tokens.
            features: ``[rows, query tokens, hidden]`` from :meth:`image_features`.
            decoder_ids: Flan-T5 only: ``[rows, length]`` decoder tokens to start from (the
                start token, then any generated before); the start token alone if None.
        """
        ids, mask = ids.to(self._device), mask.to(self._device)
        embeds = self._embed(ids)
        image_positions = (ids == self._image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(image_positions, features.to(embeds.device, embeds.dtype))
        if self._family == "opt":
            output = self._lm(
                inputs_embeds=embeds, attention_mask=mask, use_cache=True, logits_to_keep=1
            )
            rows = LanguageRows(_key_values(output.cache), mask, mask.sum(dim=1))
            return output.logits[:, -1, :], rows
        encoder_states = self._lm.get_encoder()(
            inputs_embeds=embeds, attention_mask=mask, return_dict=True
        ).last_hidden_state
        if decoder_ids is None:
            decoder_ids = torch.full((ids.shape[0], 1), self.decoder_start_id, dtype=torch.long)
        decoder_ids = decoder_ids.to(self._device)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        output = self._lm(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states),
            attention_mask=mask,
            decoder_input_ids=decoder_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        decoder_mask = torch.ones_like(decoder_ids)
        encoder = EncoderRows(encoder_states, mask, _key_values(output.cache.cross_attention_cache))
        rows = LanguageRows(
            _key_values(output.cache.self_attention_cache),
            decoder_mask,
            decoder_mask.sum(dim=1),
            encoder,
        )
        return output.logits[:, -1, :], rows

    @torch.inference_mode()
    def decode(self, rows: LanguageRows, tokens: torch.Tensor) -> tuple[torch.Tensor, LanguageRows]:
        """Feed each row its pending token; the next logits and the rows' new state."""
        tokens = tokens.to(self._device).unsqueeze(1)
        mask = torch.cat([rows.mask, torch.ones_like(tokens)], dim=1)
        if self._family == "opt":
            output = self._lm(
                input_ids=tokens,
                attention_mask=mask,
                position_ids=rows.positions.unsqueeze(1),
                cache=DynamicCache(rows.self_kv),
                use_cache=True,
            )
            state = LanguageRows(_key_values(output.cache), mask, rows.positions + 1)
            return output.logits[:, -1, :], state
        encoder = rows.encoder
        if encoder is None:
            raise ValueError("rows of an encoder-decoder model carry their encoder side")
        cache = EncoderDecoderCache(DynamicCache(rows.self_kv), DynamicCache(encoder.cross_kv))
        output = self._lm(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder.states),
            attention_mask=encoder.mask,
            decoder_input_ids=tokens,
            decoder_attention_mask=mask,
            cache=cache,
            use_cache=True,
        )
        state = LanguageRows(
            _key_values(output.cache.self_attention_cache), mask, rows.positions + 1, encoder
        )
        return output.logits[:, -1, :], state


def _key_values(cache: Any) -> KeyValues:
    return [(layer.keys, layer.values) for layer in cache.layers]
