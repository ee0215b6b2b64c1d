"""The playground page as served: what it says is served, its files, and its examples (the same
bytes as the repository's example images)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from serve_app.http.playground import STATIC, install_playground
from tests.support.serving import REPO_ROOT


@pytest.mark.parametrize(
    ("generation", "retrieval", "features"),
    [(True, True, "generation retrieval"), (True, False, "generation"), (False, True, "retrieval")],
)
def test_the_page_says_which_models_are_served(
    generation: bool, retrieval: bool, features: str
) -> None:
    app = FastAPI()
    install_playground(app, generation, retrieval)
    page = TestClient(app).get("/")
    assert page.status_code == 200
    assert f'<meta name="blip2-features" content="{features}">' in page.text
    assert page.headers["X-Content-Type-Options"] == "nosniff"


def test_the_script_style_and_examples_are_served() -> None:
    app = FastAPI()
    install_playground(app, True, True)
    client = TestClient(app)
    for name in ("playground.js", "playground.css", "examples/shapes-1.png"):
        assert client.get(f"/playground/{name}").status_code == 200, name
    assert client.get("/playground/missing.js").status_code == 404


def test_the_bundled_examples_are_the_repositorys_example_images() -> None:
    bundled = sorted((STATIC / "examples").iterdir())
    assert [path.name for path in bundled] == ["shapes-1.png", "shapes-2.png", "shapes-3.png"]
    for path in bundled:
        assert path.read_bytes() == (REPO_ROOT / "examples" / "images" / path.name).read_bytes()
