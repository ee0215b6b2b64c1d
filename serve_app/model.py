"""BLIP-2 inference without Ray: loading, prompt building and batched generation.

``Blip2Model`` wraps a ``Blip2ForConditionalGeneration`` and its ``Blip2Processor``. Requests
with the same generation settings run as one batch; a request that fails (bad image, over the
caps, or an error inside the model) gets its own exception without failing the others.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from serve_app.batch_events import GenerationObserver
from serve_app.config import ModelConfig
from serve_app.devices import resolve_device, resolve_dtype
from serve_app.errors import GenerationFailedError, InvalidImageError, InvalidRequestError
from serve_app.output_text import OutputText
from serve_app.schemas import GenerationParams, GenerationRequest, GenerationResult, Task
from serve_app.step_tracker import StepTracker, TrackedRow
from serve_app.tiny_models import resolve_builtin

logger = logging.getLogger(__name__)


@dataclass
class _Prepared:
    """One request turned into model inputs."""

    index: int
    task: Task
    prompt: str
    text_ids: list[int]
    plain_ids: list[int]
    pixel_values: torch.Tensor
    prompt_tokens: int
    stream: bool


class Blip2Model:
    """A loaded BLIP-2 checkpoint that answers batches of ``GenerationRequest``."""

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
        model_config = model.config
        self._family: Literal["opt", "t5"] = (
            "t5" if model_config.text_config.is_encoder_decoder else "opt"
        )
        self._num_query_tokens = int(model_config.num_query_tokens)
        if model_config.image_token_index is None:
            raise ValueError(
                f"{source}: config has no image_token_index; use a newer revision of the model"
            )
        self._image_token_id = int(model_config.image_token_index)
        self._pad_id = int(self._tokenizer.pad_token_id)
        self._eos_id = int(self._tokenizer.eos_token_id)
        self._special_ids = {int(i) for i in self._tokenizer.all_special_ids}
        self._special_ids.update({self._image_token_id, self._pad_id, self._eos_id})
        self._text = OutputText(self._tokenizer, self._family, self._special_ids)

    @classmethod
    def load(cls, config: ModelConfig) -> Blip2Model:
        """Load the processor and model that ``config`` names.

        A ``builtin:`` name is built (once, cached) by :func:`resolve_builtin`; anything else is
        a Hugging Face id or a local directory handed to ``from_pretrained``. ``cpu_threads``,
        if set, caps torch's CPU threads in this process.

        Raises:
            ValueError: Unknown builtin name, or ``device='cuda'`` without CUDA.
        """
        hf: Any = importlib.import_module("transformers")
        if config.cpu_threads is not None:
            torch.set_num_threads(config.cpu_threads)
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        builtin = resolve_builtin(config.model_id)
        source = str(builtin) if builtin is not None else config.model_id
        revision = None if builtin is not None else config.revision
        # Pillow preprocessing on every machine, torchvision installed or not: the same pixels
        # everywhere, and the ingress can resize exactly as the processor would.
        processor = hf.Blip2Processor.from_pretrained(source, revision=revision, backend="pil")
        model = hf.Blip2ForConditionalGeneration.from_pretrained(
            source, revision=revision, dtype=dtype
        )
        model.to(device)
        model.eval()
        logger.info("loaded %s on %s as %s", config.model_id, device, dtype)
        return cls(config, config.model_id, processor, model, device, dtype)

    @property
    def config(self) -> ModelConfig:
        """The configuration this model was loaded from."""
        return self._config

    @property
    def family(self) -> Literal["opt", "t5"]:
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

    def describe(self) -> dict[str, Any]:
        """What is loaded: source, family, dtype, device, query tokens and the image input."""
        return {
            "source": self._source,
            "family": self.family,
            "dtype": self.dtype,
            "device": self.device,
            "num_query_tokens": self.num_query_tokens,
            "image_input": self.image_input(),
        }

    def image_input(self) -> dict[str, int] | None:
        """The size every image is resized to and Pillow's filter, if resizing elsewhere is exact.

        That is so when the image processor is Pillow-based, resizes to a fixed size and does
        not crop: the ingress can then resize with Pillow and the processor's own resize of an
        image already at that size changes nothing. Otherwise None.
        """
        processor = self._processor.image_processor
        size = getattr(processor, "size", None)
        height, width = getattr(size, "height", None), getattr(size, "width", None)
        if (
            getattr(processor, "backend", None) != "pil"
            or not getattr(processor, "do_resize", False)
            or getattr(processor, "do_center_crop", False)
            or not height
            or not width
        ):
            return None
        return {"width": int(width), "height": int(height), "resample": int(processor.resample)}

    def build_prompt(self, task: Task, text: str) -> str:
        """The text the language model sees for ``task`` (VQA uses the configured template)."""
        if task == "vqa":
            return self._config.vqa_prompt_template.format(question=text)
        if task == "caption":
            return text.rstrip()
        return text

    def warmup(self) -> GenerationResult:
        """Run one tiny generation; raises if the model cannot generate."""
        image = np.full((32, 32, 3), 127, dtype=np.uint8)
        params = GenerationParams.model_validate({"max_new_tokens": 2})
        request = GenerationRequest(task="caption", image=image, params=params)
        result = self.generate([request])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        observer: GenerationObserver | None = None,
    ) -> list[GenerationResult | Exception]:
        """Generate for a batch; the result at index ``i`` answers ``requests[i]``.

        Requests are grouped by their effective generation settings, one ``generate`` per
        group. A failing request gets an exception in its slot; the others are unaffected.
        ``observer`` receives the text of streaming requests as it is generated (the deltas of
        a request add up to its result's text) and can cancel requests mid-generation.
        """
        results: list[GenerationResult | Exception | None] = [None] * len(requests)
        groups: dict[GenerationParams, list[_Prepared]] = {}
        for index, request in enumerate(requests):
            try:
                params = self._effective_params(request.params)
                prepared = self._prepare(index, request)
            except Exception as exc:
                results[index] = _as_client_error(exc)
                continue
            groups.setdefault(params, []).append(prepared)
        emitted: dict[int, str] = {}
        for params, items in groups.items():
            outcomes = self._run_isolated(items, params, observer, emitted)
            for item, outcome in zip(items, outcomes, strict=True):
                results[item.index] = outcome
        return [r if r is not None else GenerationFailedError("generation failed") for r in results]

    def _effective_params(self, params: GenerationParams) -> GenerationParams:
        """Apply defaults and caps; settings that cannot matter are normalised for grouping."""
        max_new = params.max_new_tokens or self._config.default_max_new_tokens
        if max_new > self._config.max_new_tokens_limit:
            raise InvalidRequestError(
                f"max_new_tokens must be at most {self._config.max_new_tokens_limit}",
                "params.max_new_tokens",
            )
        if params.num_beams > self._config.max_num_beams:
            raise InvalidRequestError(
                f"num_beams must be at most {self._config.max_num_beams}", "params.num_beams"
            )
        update: dict[str, Any] = {"max_new_tokens": max_new}
        if not params.do_sample:
            update.update(temperature=1.0, top_p=1.0, seed=None)
        return params.model_copy(update=update)

    def _prepare(self, index: int, request: GenerationRequest) -> _Prepared:
        image = request.image
        if not (
            isinstance(image, np.ndarray)
            and image.dtype == np.uint8
            and image.ndim == 3
            and image.shape[2] == 3
            and image.shape[0] > 0
            and image.shape[1] > 0
        ):
            raise InvalidImageError(
                "image must be an RGB uint8 array of shape (height, width, 3)", "image"
            )
        prompt = self.build_prompt(request.task, request.text)
        text_ids = [int(i) for i in self._tokenizer(prompt)["input_ids"]]
        plain = [int(i) for i in self._tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        rgb = Image.fromarray(np.ascontiguousarray(image))
        pixels = self._processor.image_processor(images=[rgb], return_tensors="pt")
        pixel_values = pixels["pixel_values"]
        return _Prepared(
            index, request.task, prompt, text_ids, plain, pixel_values, len(plain), request.stream
        )

    def _run_isolated(
        self,
        items: list[_Prepared],
        params: GenerationParams,
        observer: GenerationObserver | None,
        emitted: dict[int, str],
    ) -> list[GenerationResult | Exception]:
        """Run a group as one batch; if that fails, run each item alone to find the culprits."""
        if len(items) > 1:
            try:
                return list(self._run(items, params, observer, emitted))
            except Exception as exc:
                logger.warning("a batch of %d failed (%r); retrying one by one", len(items), exc)
        outcomes: list[GenerationResult | Exception] = []
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
        items: list[_Prepared],
        params: GenerationParams,
        observer: GenerationObserver | None,
        emitted: dict[int, str],
    ) -> list[GenerationResult]:
        """One ``generate`` call over ``items`` (image tokens first, OPT left-padded)."""
        image_ids = [self._image_token_id] * self._num_query_tokens
        rows = [image_ids + item.text_ids for item in items]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if self._family == "opt" else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
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
        output = self._model.generate(
            pixel_values=pixel_values.to(self._device, self._dtype),
            input_ids=ids.to(self._device),
            attention_mask=mask.to(self._device),
            # Beam search reorders rows between steps, so only greedy and sampling are watched.
            stopping_criteria=[tracker] if params.num_beams == 1 else None,
            **self._generate_kwargs(params),
        )
        output = output.cpu()
        # A decoder-only model returns the prompt too; keep only the new tokens.
        if self._family == "opt" and torch.equal(output[:, :width], ids):
            output = output[:, width:]
        results = []
        for item, tracked, generated in zip(items, tracker.rows, output, strict=True):
            result = self._result(item, generated.tolist(), params)
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
        if params.do_sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        return kwargs

    def _render(
        self, item: _Prepared, generated: list[int], stop: Sequence[str]
    ) -> tuple[str, bool]:
        return self._text.render(item.task, item.prompt, item.plain_ids, generated, stop)

    def _result(
        self, item: _Prepared, generated: list[int], params: GenerationParams
    ) -> GenerationResult:
        tokens = self._text.content_tokens(generated)
        text, stop_hit = self._render(item, generated, params.stop)
        ended = stop_hit or self._eos_id in generated
        limit = params.max_new_tokens or self._config.default_max_new_tokens
        return GenerationResult(
            text=text,
            prompt_tokens=item.prompt_tokens,
            completion_tokens=len(tokens),
            finish_reason="stop" if ended or len(tokens) < limit else "length",
        )


def _as_client_error(exc: Exception) -> Exception:
    """Keep our own typed errors; wrap anything else without leaking internals."""
    if isinstance(exc, (InvalidRequestError, InvalidImageError)):
        return exc
    logger.warning("could not prepare a request", exc_info=exc)
    error = GenerationFailedError("could not process the request")
    error.__cause__ = exc
    return error
