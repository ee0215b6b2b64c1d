"""``ForcedLengthEngine``: the real engine with the end-of-sequence token ignored.

The tiny random model can end a row by chance; a benchmark that compares short and long
requests needs each row to run exactly its ``max_new_tokens``.
"""

from __future__ import annotations

from serve_app.engine.blip2_engine import Blip2Engine
from serve_app.engine.outputs import RowOutputs
from serve_app.model.blip2 import Blip2Model


class ForcedLengthEngine(Blip2Engine):
    """``Blip2Engine`` whose rows end only at ``max_new_tokens`` (or a stop string)."""

    def __init__(self, model: Blip2Model, max_rows: int, feature_cache_bytes: int) -> None:
        super().__init__(model, max_rows, feature_cache_bytes)
        self._outputs = RowOutputs(model.output_text, eos_id=-1)
