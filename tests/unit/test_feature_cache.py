"""``FeatureCache``: features by pixel hash, bounded in bytes, least recently used out first."""

from __future__ import annotations

import torch

from serve_app.engine.feature_cache import FeatureCache, pixel_key


def features(value: float, count: int = 4) -> torch.Tensor:
    return torch.full((count, 8), value)  # 4 x 8 float32: 128 bytes


def test_the_key_is_the_pixels_and_their_shape() -> None:
    pixels = torch.rand(1, 3, 4, 4)
    assert pixel_key(pixels) == pixel_key(pixels.clone())
    changed = pixels.clone()
    changed[0, 0, 0, 0] += 1e-3
    assert pixel_key(changed) != pixel_key(pixels)
    assert pixel_key(pixels.reshape(1, 3, 2, 8)) != pixel_key(pixels)


def test_the_least_recently_used_leave_first_and_bytes_stay_bounded() -> None:
    cache = FeatureCache(max_bytes=3 * 128)
    for name in (b"a", b"b", b"c"):
        cache.put(name, features(1.0))
    assert cache.get(b"a") is not None  # a is now the most recently used
    cache.put(b"d", features(2.0))
    assert cache.get(b"b") is None
    assert [cache.get(k) is not None for k in (b"a", b"c", b"d")] == [True, True, True]
    assert cache.size_bytes == 3 * 128 and len(cache) == 3
    cache.put(b"big", features(3.0, count=16))  # larger than the whole cache: not kept
    assert cache.get(b"big") is None and cache.size_bytes == 3 * 128


def test_a_cache_of_zero_bytes_keeps_nothing() -> None:
    cache = FeatureCache(max_bytes=0)
    cache.put(b"a", features(1.0))
    assert cache.get(b"a") is None and cache.size_bytes == 0
