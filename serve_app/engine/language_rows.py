"""The running rows' language-model state between decoding steps (no Ray).

Rows share one batch. Every layer's self-attention keys and values are ``[rows, heads,
width, dim]``, left-padded, with a mask ``[rows, width]`` that marks each row's real
positions; a Flan-T5 row also keeps its encoder output, right-padded, with its mask and the
cross-attention keys and values made from it. Rows join by concatenation (the narrower side
padded) and leave by selection; columns no row uses any more are dropped. The layout keeps
every tensor's shape a function of the row count and the widths only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

KeyValues = list[tuple[torch.Tensor, torch.Tensor]]
"""One ``(keys, values)`` pair per layer, each ``[rows, heads, length, dim]``."""


@dataclass
class LanguageRows:
    """The language model's state for a set of rows, in row order."""

    self_kv: KeyValues
    mask: torch.Tensor
    """``[rows, width]``: 1 where a row has a real position (left padding is 0)."""
    positions: torch.Tensor
    """``[rows]``: the position id of each row's next token (its real tokens so far)."""
    encoder_states: torch.Tensor | None = None
    """Flan-T5: ``[rows, source, hidden]``, the encoder's output, right-padded."""
    encoder_mask: torch.Tensor | None = None
    """Flan-T5: ``[rows, source]``, 1 on the encoder output's real positions."""
    cross_kv: KeyValues | None = None
    """Flan-T5: the cross-attention keys and values, right-padded like the encoder output."""

    @property
    def size(self) -> int:
        """How many rows."""
        return int(self.mask.shape[0])

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
        rows = LanguageRows(
            self_kv=[
                (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
                for k, v in self.self_kv
            ],
            mask=mask[:, start:],
            positions=self.positions.index_select(0, index),
        )
        if self.encoder_states is not None and self.encoder_mask is not None:
            encoder_mask = self.encoder_mask.index_select(0, index)
            used = encoder_mask.any(dim=0).nonzero()
            end = int(used[-1]) + 1 if used.numel() else 0
            rows.encoder_states = self.encoder_states.index_select(0, index)[:, :end]
            rows.encoder_mask = encoder_mask[:, :end]
            rows.cross_kv = [
                (k.index_select(0, index)[:, :, :end], v.index_select(0, index)[:, :, :end])
                for k, v in self.cross_kv or []
            ]
        return rows

    @staticmethod
    def concatenate(parts: Sequence[LanguageRows]) -> LanguageRows:
        """One batch of ``parts``' rows, in order: self-attention padded on the left to the
        widest part, encoder outputs on the right to the longest."""
        if len(parts) == 1:
            return parts[0]
        width = max(part.width for part in parts)
        rows = LanguageRows(
            self_kv=[
                (
                    torch.cat([_pad_left(part.self_kv[layer][0], width) for part in parts]),
                    torch.cat([_pad_left(part.self_kv[layer][1], width) for part in parts]),
                )
                for layer in range(len(parts[0].self_kv))
            ],
            mask=torch.cat([F.pad(part.mask, (width - part.width, 0)) for part in parts]),
            positions=torch.cat([part.positions for part in parts]),
        )
        if parts[0].encoder_states is not None:
            source = max(_source_length(part) for part in parts)
            rows.encoder_states = torch.cat(
                [_pad_right(_encoder_states(part), source, dim=1) for part in parts]
            )
            rows.encoder_mask = torch.cat(
                [F.pad(_encoder_mask(part), (0, source - _source_length(part))) for part in parts]
            )
            rows.cross_kv = [
                (
                    torch.cat([_pad_right(_cross(part)[layer][0], source) for part in parts]),
                    torch.cat([_pad_right(_cross(part)[layer][1], source) for part in parts]),
                )
                for layer in range(len(_cross(parts[0])))
            ]
        return rows


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """``[rows, heads, length, dim]`` padded with zeros on the left of ``length``."""
    missing = width - tensor.shape[2]
    return F.pad(tensor, (0, 0, missing, 0)) if missing else tensor


def _pad_right(tensor: torch.Tensor, length: int, dim: int = 2) -> torch.Tensor:
    """``tensor`` padded with zeros after its end along ``dim`` (of 3 or 4 dimensions)."""
    missing = length - tensor.shape[dim]
    if not missing:
        return tensor
    trailing = tensor.dim() - dim - 1
    return F.pad(tensor, (0, 0) * trailing + (0, missing))


def _source_length(rows: LanguageRows) -> int:
    return int(_encoder_mask(rows).shape[1])


def _encoder_states(rows: LanguageRows) -> torch.Tensor:
    if rows.encoder_states is None:
        raise ValueError("rows of an encoder-decoder model carry their encoder output")
    return rows.encoder_states


def _encoder_mask(rows: LanguageRows) -> torch.Tensor:
    if rows.encoder_mask is None:
        raise ValueError("rows of an encoder-decoder model carry their encoder mask")
    return rows.encoder_mask


def _cross(rows: LanguageRows) -> KeyValues:
    if rows.cross_kv is None:
        raise ValueError("rows of an encoder-decoder model carry their cross-attention cache")
    return rows.cross_kv
