"""Slow image URLs cannot starve a replica: ordinary requests are answered meanwhile."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.http_server import trickling_server
from tests.support.images import image_bytes
from tests.support.serving import deploy_config, fit_for_tests, load_config, wait_until

FETCH_TIMEOUT_S = 6.0
SLOW_URLS = 40


@pytest.fixture(scope="module")
def url(serve_url: str) -> str:
    config = fit_for_tests(load_config())
    config["applications"][0]["args"]["limits"].update(
        allow_private_urls=True, url_fetch_timeout_s=FETCH_TIMEOUT_S
    )
    deploy_config(config)
    return serve_url


def test_trickling_urls_do_not_starve_ordinary_requests(url: str) -> None:
    upload = {"files": {"image": ("a.png", image_bytes(0), "image/png")}, "data": {"question": "q"}}
    with trickling_server() as slow, ThreadPoolExecutor(SLOW_URLS) as pool:
        pending = [
            pool.submit(
                requests.post,
                f"{url}/v1/vqa",
                json={"image": {"url": f"{slow.base_url}/{i}.png"}, "question": "q"},
                timeout=60,
            )
            for i in range(SLOW_URLS)
        ]
        wait_until(lambda: slow.connections >= 4, 30, "the slow fetches to be in flight")
        for _ in range(5):
            started = time.monotonic()
            answer = requests.post(f"{url}/v1/vqa", timeout=30, **upload)  # type: ignore[arg-type]
            assert answer.status_code == 200, answer.text
            assert time.monotonic() - started < 2.0
        assert not any(future.done() for future in pending), "the slow fetches ended early"
        slow_answers = [future.result() for future in pending]
    for answer in slow_answers:
        assert answer.status_code == 400
        assert answer.json()["error"] == {
            "code": "image_fetch_failed",
            "message": "could not fetch the image: timed out",
            "param": "image.url",
        }
