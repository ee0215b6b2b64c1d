"""BLIP-2 inference without Ray: loading, prompt building and batched generation.

``Blip2Model`` wraps a ``Blip2ForConditionalGeneration`` and its ``Blip2Processor``. Requests
with the same generation settings run as one batch; a request that fails (bad image, over the
caps, or an error inside the model) gets its own exception without failing the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from serve_app.config import ModelConfig
from serve_app.contract.api import GenerationParams
from serve_app.contract.errors import GenerationFailedError, InvalidImageError, InvalidRequestError
from serve_app.model.inputs import InputBuilder, PreparedRequest
from serve_app.model.loading import load_checkpoint
from serve_app.model.output_text import OutputText
from serve_app.model.step_tracker import StepTracker, TrackedRow
from serve_app.model.types import (
    Family,
    GenerationObserver,
    ModelImageInput,
    ModelInfo,
    ModelRequest,
    ModelResult,
    Task,
)

logger = logging.getLogger(__name__)


class Blip2Model:
    """A loaded BLIP-2 checkpoint that answers batches of ``ModelRequest``."""

    def __init__(
        self,
        config: ModelConfig,
        source: str,
        processor: Any,
        model: Any,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        """Wrap an already loaded processor and model; use :meth:`load` instead."""
        self._config = config
        self._source = source
        self._processor = processor
        self._tokenizer = processor.tokenizer
        self._model = model
        self._device = device
        self._dtype = dtype
        hf_config = model.config
        self._family: Family = "t5" if hf_config.text_config.is_encoder_decoder else "opt"
        self._num_query_tokens = int(hf_config.num_query_tokens)
        if hf_config.image_token_index is None:
            raise ValueError(
                f"{source}: config has no image_token_index; use a newer revision of the model"
            )
        self._inputs = InputBuilder(config, processor, self._family, hf_config)
        self._pad_id = self._inputs.pad_id
        self._eos_id = int(self._tokenizer.eos_token_id)
        special_ids = {int(i) for i in self._tokenizer.all_special_ids}
        special_ids.update({int(hf_config.image_token_index), self._pad_id, self._eos_id})
        self._text = OutputText(self._tokenizer, self._family, special_ids)

    @classmethod
    def load(cls, config: ModelConfig) -> Blip2Model:
        """Load the processor and model that ``config`` names (see :func:`load_checkpoint`).

        Raises:
            ValueError: Unknown builtin name, or ``device='cuda'`` without CUDA.
        """
        loaded = load_checkpoint(
            config,
            "Blip2ForConditionalGeneration",
            "Blip2Processor",
            config.quantization,
            attn_implementation=config.attn_implementation,
        )
        return cls(config, loaded.name, loaded.processor, loaded.model, loaded.device, loaded.dtype)

    @property
    def config(self) -> ModelConfig:
        """The configuration this model was loaded from."""
        return self._config

    @property
    def hf_model(self) -> Any:
        """The loaded ``Blip2ForConditionalGeneration``."""
        return self._model

    @property
    def inputs(self) -> InputBuilder:
        """Turns requests into the model's inputs."""
        return self._inputs

    @property
    def output_text(self) -> OutputText:
        """Turns generated tokens into a caller's text."""
        return self._text

    @property
    def eos_id(self) -> int:
        """The end-of-sequence token."""
        return self._eos_id

    @property
    def torch_device(self) -> torch.device:
        """The device inputs go to."""
        return self._device

    @property
    def family(self) -> Family:
        """``"t5"`` for an encoder-decoder language model, ``"opt"`` for a decoder-only one."""
        return self._family

    @property
    def dtype(self) -> str:
        """The dtype of the weights, e.g. ``"float32"`` (the Q-Former always runs in float32)."""
        return str(self._dtype).removeprefix("torch.")

    @property
    def device(self) -> str:
        """The device the model runs on, e.g. ``"cpu"`` or ``"cuda:0"``."""
        return str(next(self._model.parameters()).device)

    @property
    def num_query_tokens(self) -> int:
        """Number of image query tokens the Q-Former feeds the language model."""
        return self._num_query_tokens

    def info(self) -> ModelInfo:
        """What is loaded: source, family, dtype, device, query tokens and the image input."""
        return ModelInfo(
            source=self._source,
            family=self.family,
            dtype=self.dtype,
            device=self.device,
            num_query_tokens=self.num_query_tokens,
            image_input=self.image_input(),
        )

    def image_input(self) -> ModelImageInput | None:
        """The size every image is resized to, if the ingress can resize exactly as the model."""
        return self._inputs.image_input()

    def build_prompt(self, task: Task, text: str) -> str:
        """The text the language model sees for ``task`` (VQA uses the configured template)."""
        return self._inputs.build_prompt(task, text)

    def generate(
        self,
        requests: Sequence[ModelRequest],
        observer: GenerationObserver | None = None,
    ) -> list[ModelResult | Exception]:
        """Generate for a batch; the result at index ``i`` answers ``requests[i]``.

        Requests are grouped by their effective generation settings, one ``generate`` per
        group; a seeded sample runs alone, from its own seed, so its text is the same whatever
        else is in the batch. A failing request gets an exception in its slot; the others are
        unaffected.
        ``observer`` receives the text of streaming requests as it is generated (the deltas of
        a request add up to its result's text) and can cancel requests mid-generation.
        """
        results: list[ModelResult | Exception | None] = [None] * len(requests)
        settings: dict[int, GenerationParams] = {}
        for index, request in enumerate(requests):
            try:
                settings[index] = self._config.effective_params(request.params)
            except Exception as exc:
                results[index] = as_client_error(exc)
        to_prepare = [
            (index, requests[index], params.max_new_tokens or 0)
            for index, params in settings.items()
        ]
        groups: dict[tuple[GenerationParams, int | None], list[PreparedRequest]] = {}
        for (index, _, _), prepared in zip(
            to_prepare, self._inputs.prepare_all(to_prepare), strict=True
        ):
            if isinstance(prepared, Exception):
                results[index] = as_client_error(prepared)
                continue
            params = settings[index]
            seeded = params.do_sample and params.seed is not None
            groups.setdefault((params, index if seeded else None), []).append(prepared)
        emitted: dict[int, str] = {}
        for (params, _), items in groups.items():
            outcomes = self._run_isolated(items, params, observer, emitted)
            for item, outcome in zip(items, outcomes, strict=True):
                results[item.index] = outcome
        return [r if r is not None else GenerationFailedError("generation failed") for r in results]

    def _run_isolated(
        self,
        items: list[PreparedRequest],
        params: GenerationParams,
        observer: GenerationObserver | None,
        emitted: dict[int, str],
    ) -> list[ModelResult | Exception]:
        """Run a group as one batch; if that fails, run each item alone to find the culprits."""
        if len(items) > 1:
            try:
                return list(self._run(items, params, observer, emitted))
            except Exception as exc:
                logger.warning("a batch of %d failed (%r); retrying one by one", len(items), exc)
        outcomes: list[ModelResult | Exception] = []
        for item in items:
            try:
                outcomes.extend(self._run([item], params, observer, emitted))
            except Exception as exc:
                logger.exception("generation failed for request %d of the batch", item.index)
                error = GenerationFailedError("generation failed")
                error.__cause__ = exc
                outcomes.append(error)
        return outcomes

    @torch.inference_mode()
    def _run(
        self,
        items: list[PreparedRequest],
        params: GenerationParams,
        observer: GenerationObserver | None,
        emitted: dict[int, str],
    ) -> list[ModelResult | Exception]:
        """One ``generate`` call over ``items`` (image tokens first, OPT left-padded).

        ``emitted`` holds the text each row has streamed, across retries of the same rows.
        """
        ids, mask = self._inputs.batch(items)
        width = ids.shape[1]
        by_index = {item.index: item for item in items}
        tracker = StepTracker(
            [
                TrackedRow(item.index, item.stream, params.stop, emitted.get(item.index, ""))
                for item in items
            ],
            offset=width if self._family == "opt" else 1,
            render=lambda index, tokens: self._render(by_index[index], tokens, params.stop),
            observer=observer,
        )
        if params.do_sample and params.seed is not None:
            torch.manual_seed(params.seed)
        pixel_values = torch.cat([item.pixel_values for item in items])
        try:
            output = self._model.generate(
                pixel_values=pixel_values.to(self._device, self._dtype),
                input_ids=ids.to(self._device),
                attention_mask=mask.to(self._device),
                # Beam search reorders rows between steps: only greedy and sampling are watched.
                stopping_criteria=[tracker] if params.num_beams == 1 else None,
                **self._generate_kwargs(params),
            )
        finally:
            # What a row has streamed stays sent: a retry goes on from it, never starts over.
            for tracked in tracker.rows:
                emitted[tracked.index] = tracked.emitted
        output = output.cpu()
        # A decoder-only model returns the prompt too; keep only the new tokens.
        if self._family == "opt" and torch.equal(output[:, :width], ids):
            output = output[:, width:]
        results: list[ModelResult | Exception] = []
        for item, tracked, generated in zip(items, tracker.rows, output, strict=True):
            result = self._result(item, generated.tolist(), params)
            if not result.text.startswith(tracked.emitted):  # a sampled retry went elsewhere
                results.append(GenerationFailedError("the streamed text could not be continued"))
                continue
            tracker.emit(tracked, result.text)
            emitted[item.index] = tracked.emitted
            results.append(result)
        return results

    def _generate_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "num_beams": params.num_beams,
            "do_sample": params.do_sample,
            "repetition_penalty": params.repetition_penalty,
            "pad_token_id": self._pad_id,
            "eos_token_id": self._eos_id,
        }
        if self._config.static_kv_cache:
            kwargs["cache_implementation"] = "static"
        if params.do_sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        return kwargs

    def _render(
        self, item: PreparedRequest, generated: list[int], stop: Sequence[str]
    ) -> tuple[str, bool]:
        return self._text.render(item.task, item.prompt, item.plain_ids, generated, stop)

    def _result(
        self, item: PreparedRequest, generated: list[int], params: GenerationParams
    ) -> ModelResult:
        tokens = self._text.content_tokens(generated)
        text, stop_hit = self._render(item, generated, params.stop)
        ended = stop_hit or self._eos_id in generated
        limit = params.max_new_tokens or self._config.default_max_new_tokens
        return ModelResult(
            text=text,
            prompt_tokens=item.prompt_tokens,
            completion_tokens=len(tokens),
            finish_reason="stop" if ended or len(tokens) < limit else "length",
        )


def as_client_error(exc: Exception) -> Exception:
    """Keep our own typed errors; wrap anything else without leaking internals."""
    if isinstance(exc, (InvalidRequestError, InvalidImageError)):
        return exc
    logger.warning("could not prepare a request", exc_info=exc)
    error = GenerationFailedError("could not process the request")
    error.__cause__ = exc
    return error
