"""Image features kept by a hash of the image's pixel values, least recently used out first
(no Ray).

A hit skips the vision encoder and the Q-Former: a follow-up question about an image, or a
chat that sends its image again with every turn, pays only for its prompt.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch


def pixel_key(pixel_values: torch.Tensor) -> bytes:
    """A digest of one image's preprocessed pixel values (its shape included)."""
    pixels = pixel_values.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(str(tuple(pixels.shape)).encode(), digest_size=16)
    digest.update(pixels.numpy().tobytes())
    return digest.digest()


class FeatureCache:
    """At most ``max_bytes`` of feature tensors, by key; 0 keeps nothing."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> torch.Tensor | None:
        """The features stored under ``key`` (now the most recently used), or None."""
        features = self._entries.get(key)
        if features is not None:
            self._entries.move_to_end(key)
        return features

    def put(self, key: bytes, features: torch.Tensor) -> None:
        """Keep ``features`` under ``key``, evicting the least recently used to make room."""
        size = features.numel() * features.element_size()
        if size > self.max_bytes or key in self._entries:
            return
        while self._bytes + size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.numel() * evicted.element_size()
        self._entries[key] = features
        self._bytes += size
