"""``Blip2Engine``: one step of the decoding loop on a loaded BLIP-2 (no Ray).

A step drops cancelled rows, generates one token for every running row in one forward pass,
then prefills the admitted requests (image features from the cache or the vision encoder and
Q-Former, then their prompts) and concatenates them to the running rows. Every row picks its
token with its own settings; a row leaves the moment it ends. If a decoding step fails, each
row is recomputed alone from its tokens so far, so one bad row fails alone and a streamed
text goes on from what it sent. Beam search keeps ``generate``'s own path: such a request runs
whole, within one step.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

import torch

from serve_app.config import ModelConfig
from serve_app.contract.errors import GenerationFailedError
from serve_app.engine.feature_cache import FeatureCache, pixel_key
from serve_app.engine.language_rows import LanguageRows
from serve_app.engine.outputs import Row, RowOutputs
from serve_app.engine.runner import Blip2Runner
from serve_app.engine.sampling import RowSampler, RowSettings
from serve_app.engine.types import Admission, EngineStats, RowEvent
from serve_app.model.blip2 import Blip2Model, as_client_error
from serve_app.model.inputs import PreparedRequest
from serve_app.model.types import ModelInfo

logger = logging.getLogger(__name__)


class Blip2Engine:
    """Runs loop steps on a ``Blip2Model``, holding at most ``max_rows`` rows."""

    def __init__(self, model: Blip2Model, max_rows: int, feature_cache_bytes: int) -> None:
        self._model = model
        self._max_rows = max_rows
        self._device = model.torch_device
        self._runner = Blip2Runner(model.hf_model, model.family, self._device)
        self._sampler = RowSampler(model.hf_model.generation_config.top_k)
        self._outputs = RowOutputs(model.output_text, model.eos_id)
        self._features = FeatureCache(feature_cache_bytes)
        self._images_encoded = 0
        self._feature_hits = 0
        self._rows: list[Row] = []
        self._state: LanguageRows | None = None

    @classmethod
    def load(cls, config: ModelConfig) -> Blip2Engine:
        """Load the model ``config`` names, with the loop's bounds from ``config``."""
        return cls(Blip2Model.load(config), config.max_rows, int(config.feature_cache_mib * 2**20))

    @property
    def max_rows(self) -> int:
        """The most rows a step holds."""
        return self._max_rows

    @property
    def running(self) -> int:
        """Rows running now."""
        return len(self._rows)

    def info(self) -> ModelInfo:
        """What is loaded."""
        return self._model.info()

    def stats(self) -> EngineStats:
        """Images encoded, requests that found their image's features, bytes cached."""
        return EngineStats(self._images_encoded, self._feature_hits, self._features.size_bytes)

    def clear(self) -> None:
        """Drop every row."""
        self._rows, self._state = [], None

    def step(self, admitted: Sequence[Admission], cancelled: Collection[int]) -> list[RowEvent]:
        """Drop ``cancelled`` rows, one token for every running row, then start ``admitted``."""
        if len(self._rows) + len(admitted) > self._max_rows:
            raise ValueError(f"a step holds at most {self._max_rows} rows")
        events: list[RowEvent] = []
        if cancelled:
            self._keep([row for row in self._rows if row.key not in cancelled])
        if self._rows:
            self._decode(events)
        if admitted:
            self._admit(admitted, events)
        return events

    def _decode(self, events: list[RowEvent]) -> None:
        rows, state = self._rows, self._state
        assert state is not None
        try:
            pending = torch.tensor([row.generated[-1] for row in rows], dtype=torch.long)
            logits, self._state = self._runner.decode(state, pending)
            tokens = self._sampler.next_tokens(
                logits, [row.settings for row in rows], [row.history for row in rows]
            )
        except Exception:
            logger.warning("a step of %d rows failed; recomputing each alone", len(rows))
            self._rows, self._state = [], None
            self._start(rows, events, resume=True)
            return
        self._take(rows, tokens.tolist(), events)

    def _admit(self, admitted: Sequence[Admission], events: list[RowEvent]) -> None:
        config = self._model.config
        to_prepare = []
        settings: dict[int, RowSettings] = {}
        for admission in admitted:
            try:
                params = config.effective_params(admission.request.params)
            except Exception as exc:
                events.append(RowEvent(admission.key, outcome=as_client_error(exc)))
                continue
            if params.num_beams > 1:
                events.append(self._beam_search(admission))
                continue
            settings[admission.key] = RowSettings.of(params, self._device)
            to_prepare.append((admission.key, admission.request, params.max_new_tokens or 0))
        new_rows = []
        for (key, _, _), prepared in zip(
            to_prepare, self._model.inputs.prepare_all(to_prepare), strict=True
        ):
            if isinstance(prepared, Exception):
                events.append(RowEvent(key, outcome=as_client_error(prepared)))
            else:
                new_rows.append(Row(key, prepared, settings[key], self._start_history(prepared)))
        if new_rows:
            self._start(new_rows, events, resume=False)

    def _beam_search(self, admission: Admission) -> RowEvent:
        """A beam-search request, run whole by ``generate``."""
        outcome = self._model.generate([admission.request])[0]
        text = (
            outcome.text if admission.request.stream and not isinstance(outcome, Exception) else ""
        )
        return RowEvent(admission.key, text, outcome)

    def _start(self, rows: list[Row], events: list[RowEvent], resume: bool) -> None:
        """Prefill ``rows`` together; if that fails, each alone, so only a culprit fails.

        A resumed row is recomputed from its tokens so far and keeps its pending token.
        """
        if len(rows) > 1 and not resume:
            try:
                self._join(rows, *self._prefill(rows, resume=False), events)
                return
            except Exception as exc:
                logger.warning(
                    "a prefill of %d rows failed (%r); retrying one by one", len(rows), exc
                )
        for row in rows:
            try:
                logits, state = self._prefill([row], resume)
                self._join([row], None if resume else logits, state, events)
            except Exception as exc:
                logger.exception("generation failed for one row")
                error = GenerationFailedError("generation failed")
                error.__cause__ = exc
                events.append(RowEvent(row.key, outcome=error))

    def _prefill(self, rows: list[Row], resume: bool) -> tuple[torch.Tensor, LanguageRows]:
        features = self._image_features([row.prepared for row in rows])
        if not resume:
            ids, mask = self._model.inputs.batch([row.prepared for row in rows])
            return self._runner.prefill(ids, mask, features)
        (row,) = rows
        earlier = row.generated[:-1]
        prompt = self._model.inputs.row_ids(row.prepared)
        if self._model.family == "opt":
            ids = torch.tensor([prompt + earlier])
            return self._runner.prefill(ids, torch.ones_like(ids), features)
        ids = torch.tensor([prompt])
        decoder_ids = torch.tensor([row.history[:-1]])
        return self._runner.prefill(ids, torch.ones_like(ids), features, decoder_ids)

    def _join(
        self,
        rows: list[Row],
        logits: torch.Tensor | None,
        state: LanguageRows,
        events: list[RowEvent],
    ) -> None:
        """Add prefilled rows to the running ones; with ``logits``, pick their first token."""
        if self._state is None:
            self._rows, self._state = list(rows), state
        else:
            self._rows = [*self._rows, *rows]
            self._state = LanguageRows.concatenate([self._state, state])
        if logits is not None:
            tokens = self._sampler.next_tokens(
                logits, [row.settings for row in rows], [row.history for row in rows]
            )
            self._take(rows, tokens.tolist(), events)

    def _take(self, rows: list[Row], tokens: list[int], events: list[RowEvent]) -> None:
        """Give each of ``rows`` its new token; rows that end leave the batch."""
        ended = set()
        for row, token in zip(rows, tokens, strict=True):
            row.add(token)
            row.peak_rows = max(row.peak_rows, len(self._rows))
            update = self._outputs.after_token(row)
            if update.result is not None:
                ended.add(row.key)
                events.append(RowEvent(row.key, update.text, update.result))
            elif update.text:
                events.append(RowEvent(row.key, update.text))
        if ended:
            self._keep([row for row in self._rows if row.key not in ended])

    def _keep(self, rows: list[Row]) -> None:
        """Keep only ``rows`` (a subsequence of the running rows)."""
        if len(rows) == len(self._rows):
            return
        positions = {row.key: i for i, row in enumerate(self._rows)}
        if rows and self._state is not None:
            self._state = self._state.select([positions[row.key] for row in rows])
        else:
            self._state = None
        self._rows = rows

    def _start_history(self, prepared: PreparedRequest) -> list[int]:
        if self._model.family == "opt":
            return self._model.inputs.row_ids(prepared)
        return [self._runner.decoder_start_id]

    def _image_features(self, items: list[PreparedRequest]) -> torch.Tensor:
        """``[items, query tokens, hidden]``: cached features, the rest encoded together."""
        keys = [pixel_key(item.pixel_values) for item in items]
        found: dict[bytes, torch.Tensor] = {}
        missing: dict[bytes, torch.Tensor] = {}  # key: pixel values, each image once
        for key, item in zip(keys, items, strict=True):
            cached = self._features.get(key)
            if cached is not None:
                found[key] = cached
            elif key not in missing:
                missing[key] = item.pixel_values
        if missing:
            encoded = self._runner.image_features(torch.cat(list(missing.values())))
            for key, features in zip(missing, encoded, strict=True):
                found[key] = features.clone()  # not a view that keeps the whole batch alive
                self._features.put(key, found[key])
        self._images_encoded += len(missing)
        self._feature_hits += len(keys) - len(missing)
        return torch.stack([found[key] for key in keys])
