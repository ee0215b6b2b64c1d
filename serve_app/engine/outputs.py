"""What a row's tokens mean to its caller: streamed text, stop strings, the end (no Ray).

After each new token a row may end (end of sequence, a stop string, ``max_new_tokens``);
a streaming row reports the text that more tokens can no longer change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serve_app.engine.sampling import RowSettings
from serve_app.model.inputs import PreparedRequest
from serve_app.model.output_text import OutputText
from serve_app.model.step_tracker import settled_prefix
from serve_app.model.types import ModelResult


@dataclass
class Row:
    """One request in the loop: its inputs, its settings and its tokens so far."""

    key: int
    prepared: PreparedRequest
    settings: RowSettings
    history: list[int]
    """The ids the repetition penalty sees: the prompt's (decoder-only) or the decoder's start
    token (Flan-T5), then every generated one."""
    generated: list[int] = field(default_factory=list)
    emitted: str = ""
    """Text already streamed to the caller."""
    peak_rows: int = 1
    """The most rows a step it ran in held (its result's ``batch_size``)."""

    @property
    def max_new_tokens(self) -> int:
        """The most tokens this row generates."""
        return self.settings.params.max_new_tokens or 0

    def add(self, token: int) -> None:
        """Append a generated token."""
        self.generated.append(token)
        self.history.append(token)


@dataclass(frozen=True)
class RowUpdate:
    """What one token changed for its row's caller."""

    text: str = ""
    """Newly settled text to stream (empty if none)."""
    result: ModelResult | None = None
    """The row's result, once it has ended."""


class RowOutputs:
    """Judges each row after its new token: stream its settled text, end it when it is done."""

    def __init__(self, text: OutputText, eos_id: int) -> None:
        self._text = text
        self._eos_id = eos_id

    def after_token(self, row: Row) -> RowUpdate:
        """The update for ``row``, whose newest token was just added.

        Only a row that streams or stops on a string has its text rendered at every token;
        any row's text is rendered once when it ends.
        """
        params = row.settings.params
        rendered = self._render(row) if row.prepared.stream or params.stop else None
        ended = (
            (rendered is not None and rendered[1])
            or row.generated[-1] == self._eos_id
            or len(row.generated) >= row.max_new_tokens
        )
        if ended:
            result = self._result(row, rendered or self._render(row))
            return RowUpdate(self._delta(row, result.text), result)
        if rendered is not None and row.prepared.stream:
            return RowUpdate(self._delta(row, settled_prefix(rendered[0], params.stop)))
        return RowUpdate()

    def _result(self, row: Row, rendered: tuple[str, bool]) -> ModelResult:
        """The row's result from its tokens and their ``rendered`` text and stop-string hit."""
        text, stop_hit = rendered
        tokens = self._text.content_tokens(row.generated)
        ended = stop_hit or self._eos_id in row.generated
        return ModelResult(
            text=text,
            prompt_tokens=row.prepared.prompt_tokens,
            completion_tokens=len(tokens),
            finish_reason="stop" if ended or len(tokens) < row.max_new_tokens else "length",
            batch_size=row.peak_rows,
        )

    def _render(self, row: Row) -> tuple[str, bool]:
        prepared = row.prepared
        return self._text.render(
            prepared.task,
            prepared.prompt,
            prepared.plain_ids,
            row.generated,
            row.settings.params.stop,
        )

    @staticmethod
    def _delta(row: Row, text: str) -> str:
        """The part of ``text`` not streamed yet, if the row streams and ``text`` extends what
        it streamed."""
        if not row.prepared.stream or not text.startswith(row.emitted):
            return ""
        delta = text[len(row.emitted) :]
        row.emitted = text
        return delta
