"""Refusals to start: on an address other hosts can reach, the ingress needs tokens; a model
replica refuses a model its GPU memory cannot hold, before loading it. With tokens on, the
playground page is public and holds none: the browser asks for the token once per tab.

Only loopback traffic is sent; listening on 0.0.0.0 is what is under test.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from ray import serve
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from serve_app.app import build_application
from serve_app.config import DEMO_SHAPES, INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT, AppConfig
from tests.serve.conftest import local_serve
from tests.support.browser import chromium, wait_for
from tests.support.fakes import slow_fake_model
from tests.support.serving import APP_NAME, app_status

TOKEN = "exposure-test-token"


@pytest.fixture(scope="module")
def exposed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Ray and Serve with the HTTP proxy on every interface (reached here over loopback); a
    replica that refuses to start is tried once, not Serve's three times, to fail fast."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT", "1")
        yield from local_serve(tmp_path_factory, host="0.0.0.0", num_gpus=1)


def deploy(
    auth: dict[str, Any], model: dict[str, Any] | None = None, playground: bool = True
) -> None:
    """Run the application with ``auth`` and wait until it runs (raises if it cannot start);
    with ``model`` settings, the real model loading, else a fake model."""
    args = {
        "model": model or {},
        "model_deployment": {"num_gpus": 1, "num_cpus": 0},
        "ingress_deployment": {"num_cpus": 0},
        "auth": auth,
        "playground": playground,
    }
    factory = None if model else slow_fake_model
    serve.run(build_application(AppConfig.model_validate(args), factory), name=APP_NAME)


def test_an_anonymous_ingress_refuses_to_start_on_a_reachable_address(exposed_url: str) -> None:
    with pytest.raises(RuntimeError, match="failed"):
        deploy({})
    assert app_status() == "DEPLOY_FAILED"
    status = serve.status().applications[APP_NAME].deployments[INGRESS_DEPLOYMENT]
    assert "allow_anonymous" in status.message
    serve.delete(APP_NAME)


def test_a_model_that_cannot_fit_its_gpu_memory_fails_the_deploy_with_the_plan(
    exposed_url: str,
) -> None:
    model = {"model_id": DEMO_SHAPES, "device": "cpu", "gpu_memory_gib": 0.5}
    with pytest.raises(RuntimeError, match="failed"):
        deploy({"api_keys": [TOKEN]}, model)
    assert app_status() == "DEPLOY_FAILED"
    message = serve.status().applications[APP_NAME].deployments[MODEL_DEPLOYMENT].message
    assert "does not fit in 0.5 GiB of GPU memory" in message
    assert "the weights do not fit" in message
    serve.delete(APP_NAME)


def test_with_tokens_it_starts_and_asks_for_them_and_the_playground_holds_none(
    exposed_url: str,
) -> None:
    deploy({"api_keys": [TOKEN]})
    assert requests.get(f"{exposed_url}/v1/models", timeout=30).status_code == 401
    authorized = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(f"{exposed_url}/v1/models", headers=authorized, timeout=30).ok
    page = requests.get(f"{exposed_url}/", timeout=30)
    assert page.status_code == 200 and TOKEN not in page.text
    # Everything the page loads comes from the service itself: no CDN.
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert links and all(link.startswith("/") for link in links)
    assert all(requests.get(f"{exposed_url}{link}", timeout=30).ok for link in links)
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    yield from chromium()


def test_the_browser_asks_for_the_token_once_per_tab(exposed_url: str, browser: WebDriver) -> None:
    deploy({"api_keys": [TOKEN]})
    browser.get(f"{exposed_url}/")
    browser.find_element(By.CSS_SELECTOR, ".example").click()
    wait_for(browser, lambda b: b.find_element(By.ID, "preview").is_displayed())
    browser.find_element(By.ID, "send").click()
    wait_for(browser, lambda b: b.find_element(By.ID, "token-dialog").is_displayed())
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait_for(browser, lambda b: b.find_element(By.ID, "answer").text)
    browser.refresh()  # the same tab: the token is kept
    browser.find_element(By.CSS_SELECTOR, ".example").click()
    wait_for(browser, lambda b: b.find_element(By.ID, "preview").is_displayed())
    browser.find_element(By.ID, "send").click()
    wait_for(browser, lambda b: b.find_element(By.ID, "answer").text)
    assert not browser.find_element(By.ID, "token-dialog").is_displayed()
    assert TOKEN not in browser.page_source


def test_the_playground_can_be_switched_off(exposed_url: str) -> None:
    deploy({"api_keys": [TOKEN]}, playground=False)
    assert requests.get(f"{exposed_url}/", timeout=30).status_code == 404
    authorized = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(f"{exposed_url}/v1/models", headers=authorized, timeout=30).ok


def test_anonymous_serving_when_the_config_says_so(exposed_url: str) -> None:
    deploy({"allow_anonymous": True})
    assert requests.get(f"{exposed_url}/v1/models", timeout=30).ok
