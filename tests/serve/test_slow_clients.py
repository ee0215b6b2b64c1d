"""Slow image URLs cannot starve a replica, nor one token the others: ordinary requests and
another token's URLs are answered meanwhile."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.http_server import static_server, trickling_server
from tests.support.images import image_bytes
from tests.support.serving import deploy_config, fit_for_tests, load_config, wait_until

FETCH_TIMEOUT_S = 6.0
SLOW_URLS = 40
PER_TOKEN = 4
GREEDY = {"Authorization": "Bearer greedy-token-0123456789"}
OTHER = {"Authorization": "Bearer other-token-9876543210"}


@pytest.fixture(scope="module")
def url(serve_url: str) -> str:
    config = fit_for_tests(load_config())
    args = config["applications"][0]["args"]
    args["limits"].update(
        allow_private_urls=True,
        url_fetch_timeout_s=FETCH_TIMEOUT_S,
        max_concurrent_url_fetches_per_token=PER_TOKEN,
    )
    tokens = [header["Authorization"].removeprefix("Bearer ") for header in (GREEDY, OTHER)]
    args["auth"] = {"api_keys": tokens}
    deploy_config(config)
    return serve_url


def test_trickling_urls_starve_neither_uploads_nor_other_tokens(url: str) -> None:
    upload = {"files": {"image": ("a.png", image_bytes(0), "image/png")}, "data": {"question": "q"}}
    with (
        trickling_server() as slow,
        static_server({"/fine.png": ("image/png", image_bytes(1))}) as fine,
        ThreadPoolExecutor(SLOW_URLS) as pool,
    ):
        pending = [
            pool.submit(
                requests.post,
                f"{url}/v1/vqa",
                json={"image": {"url": f"{slow.base_url}/{i}.png"}, "question": "q"},
                headers=GREEDY,
                timeout=60,
            )
            for i in range(SLOW_URLS)
        ]
        wait_until(lambda: slow.connections >= PER_TOKEN, 30, "the slow fetches to be in flight")
        for _ in range(5):
            started = time.monotonic()
            answer = requests.post(f"{url}/v1/vqa", timeout=30, headers=OTHER, **upload)  # type: ignore[arg-type]
            assert answer.status_code == 200, answer.text
            assert time.monotonic() - started < 2.0
        by_url = requests.post(
            f"{url}/v1/vqa",
            json={"image": {"url": f"{fine.base_url}/fine.png"}, "question": "q"},
            headers=OTHER,
            timeout=30,
        )
        assert by_url.status_code == 200, by_url.text
        # One token's fetches hold its own slots only: the other 36 wait without connecting.
        assert slow.connections == PER_TOKEN
        assert not any(future.done() for future in pending), "the slow fetches ended early"
        slow_answers = [future.result() for future in pending]
    for answer in slow_answers:
        assert answer.status_code == 400
        assert answer.json()["error"] == {
            "code": "image_fetch_failed",
            "message": "could not fetch the image: timed out",
            "param": "image.url",
        }
