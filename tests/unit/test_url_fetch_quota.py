"""With authentication on, one token's slow image URLs hold at most its share of a replica's
fetches: another token's fetch starts at once."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.config import LimitsConfig
from serve_app.contract.errors import ImageFetchError
from serve_app.images.url_fetch import FETCH_OWNER, fetch_image_url
from tests.support.http_server import trickling_server

LIMITS = LimitsConfig(
    allow_private_urls=True,
    url_fetch_timeout_s=2.0,
    max_concurrent_url_fetches=16,
    max_concurrent_url_fetches_per_token=2,
)


def test_one_tokens_fetches_wait_for_its_own_slots_not_the_replicas() -> None:
    with trickling_server() as slow:

        async def fetch_as(owner: str, index: int) -> None:
            FETCH_OWNER.set(owner)
            with pytest.raises(ImageFetchError, match="timed out"):
                await fetch_image_url(f"{slow.base_url}/{index}.png", LIMITS)

        async def scenario() -> tuple[int, int]:
            greedy = [asyncio.create_task(fetch_as("token-a", i)) for i in range(6)]
            await asyncio.sleep(0.5)
            held_by_a = slow.connections
            other = asyncio.create_task(fetch_as("token-b", 99))
            await asyncio.sleep(0.5)
            both = slow.connections
            await asyncio.gather(*greedy, other)
            return held_by_a, both

        held_by_a, both = asyncio.run(scenario())
    assert held_by_a == 2
    assert both == 3
