"""The running rows' language-model state between decoding steps (no Ray).

Rows share one batch. Every layer's self-attention keys and values are ``[rows, heads,
width, dim]``, left-padded, with a mask ``[rows, width]`` that marks each row's real
positions; a Flan-T5 row also keeps its encoder output, right-padded, with its mask and the
cross-attention keys and values made from it. Rows join by concatenation (the narrower side
padded) and leave by selection; columns no row uses any more are dropped. The layout keeps
every tensor's shape a function of the row count and the widths only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

KeyValues = list[tuple[torch.Tensor, torch.Tensor]]
"""One ``(keys, values)`` pair per layer, each ``[rows, heads, length, dim]``."""


@dataclass
class EncoderRows:
    """Flan-T5 rows' encoder side, right-padded to the longest source."""

    states: torch.Tensor
    """``[rows, source, hidden]``: the encoder's output."""
    mask: torch.Tensor
    """``[rows, source]``: 1 on the encoder output's real positions."""
    cross_kv: KeyValues
    """The cross-attention keys and values made from ``states``."""

    def select(self, index: torch.Tensor) -> EncoderRows:
        """The rows at ``index``, without the trailing positions none of them uses."""
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        end = int(used[-1]) + 1 if used.numel() else 0
        return EncoderRows(
            self.states.index_select(0, index)[:, :end],
            mask[:, :end],
            _map_kv(self.cross_kv, lambda t: t.index_select(0, index)[:, :, :end]),
        )

    @staticmethod
    def concatenate(parts: Sequence[EncoderRows]) -> EncoderRows:
        """``parts``' rows, in order, padded on the right to the longest source."""
        source = max(int(part.mask.shape[1]) for part in parts)
        return EncoderRows(
            torch.cat([_pad(part.states, source, dim=1) for part in parts]),
            torch.cat([_pad(part.mask, source, dim=1) for part in parts]),
            _cat_kv([part.cross_kv for part in parts], lambda t: _pad(t, source, dim=2)),
        )


@dataclass
class LanguageRows:
    """The language model's state for a set of rows, in row order."""

    self_kv: KeyValues
    mask: torch.Tensor
    """``[rows, width]``: 1 where a row has a real position (left padding is 0)."""
    positions: torch.Tensor
    """``[rows]``: the position id of each row's next token (its real tokens so far)."""
    encoder: EncoderRows | None = None
    """Flan-T5: the rows' encoder side."""

    @property
    def width(self) -> int:
        """Cached positions per row, padding included."""
        return int(self.mask.shape[1])

    def select(self, indices: Sequence[int]) -> LanguageRows:
        """The rows at ``indices``, in that order, without the columns none of them uses."""
        index = torch.tensor(list(indices), dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else mask.shape[1]
        return LanguageRows(
            _map_kv(self.self_kv, lambda t: t.index_select(0, index)[:, :, start:]),
            mask[:, start:],
            self.positions.index_select(0, index),
            None if self.encoder is None else self.encoder.select(index),
        )

    @staticmethod
    def concatenate(parts: Sequence[LanguageRows]) -> LanguageRows:
        """One batch of ``parts``' rows, in order: self-attention padded on the left to the
        widest part, encoder outputs on the right to the longest."""
        if len(parts) == 1:
            return parts[0]
        width = max(part.width for part in parts)
        encoders = [part.encoder for part in parts if part.encoder is not None]
        return LanguageRows(
            _cat_kv([part.self_kv for part in parts], lambda t: _pad(t, width, dim=2, left=True)),
            torch.cat([_pad(part.mask, width, dim=1, left=True) for part in parts]),
            torch.cat([part.positions for part in parts]),
            EncoderRows.concatenate(encoders) if encoders else None,
        )


def _map_kv(kv: KeyValues, change: Callable[[torch.Tensor], torch.Tensor]) -> KeyValues:
    """``change`` applied to every layer's keys and values."""
    return [(change(keys), change(values)) for keys, values in kv]


def _cat_kv(parts: Sequence[KeyValues], pad: Callable[[torch.Tensor], torch.Tensor]) -> KeyValues:
    """Each layer's keys and values of ``parts``, padded with ``pad``, joined along the rows."""
    return [
        (
            torch.cat([pad(part[layer][0]) for part in parts]),
            torch.cat([pad(part[layer][1]) for part in parts]),
        )
        for layer in range(len(parts[0]))
    ]


def _pad(tensor: torch.Tensor, length: int, dim: int, left: bool = False) -> torch.Tensor:
    """``tensor`` padded with zeros along ``dim`` to ``length``, after its end or (``left``)
    before its start."""
    missing = length - tensor.shape[dim]
    if not missing:
        return tensor
    sides = (missing, 0) if left else (0, missing)
    return F.pad(tensor, (0, 0) * (tensor.dim() - dim - 1) + sides)
