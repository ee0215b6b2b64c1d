"""The CPU config serves the demo retrieval model: ``/v1/rank`` puts the example image's
caption first, recall and matching hold on fresh scenes over HTTP and through the handle, the
official OpenAI client gets text embeddings, bad input is typed, the image-search example runs
as a separate Ray driver, and an application may serve retrieval alone."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import ray
import requests
from ray import serve

from serve_app import AppConfig, EmbeddingsRequest, ImageSource, RankRequest
from serve_app.app import build_application
from serve_app.config import DEMO_SHAPES_ITM
from serve_app.demo import task
from serve_app.demo.training.evaluate_retrieval import gallery
from tests.support.demo import retrieval_bars
from tests.support.serving import (
    APP_NAME,
    REPO_ROOT,
    deploy_config,
    fit_for_tests,
    load_config,
    wait_until,
)

HTTP_SEED = 301
HANDLE_SEED = 302
MATCH_SEED = 303
GALLERY = 100
EXAMPLE = REPO_ROOT / "examples" / "images" / "shapes-2.png"


@pytest.fixture(scope="module")
def url(serve_url: str) -> str:
    config = fit_for_tests(load_config())
    assert config["applications"][0]["args"]["retrieval"]["model_id"] == DEMO_SHAPES_ITM
    deploy_config(config)
    return serve_url


def data_uri(scene: task.Scene) -> str:
    buffer = io.BytesIO()
    scene.render().save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def post(url: str, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{url}{path}", json=body, timeout=120)


def recall(queries: np.ndarray, texts: np.ndarray) -> tuple[float, float]:
    """Text-to-image and image-to-text recall@1 by BLIP-2's contrastive score."""
    scores = np.einsum("iqd,td->itq", queries, texts).max(axis=-1)
    truth = np.arange(len(texts))
    return float((scores.argmax(0) == truth).mean()), float((scores.argmax(1) == truth).mean())


def test_rank_puts_the_example_images_caption_first_among_nine_wrong_ones(url: str) -> None:
    answers = json.loads((EXAMPLE.parent / "answers.json").read_text())
    right = answers[EXAMPLE.name]["caption"]
    rng = random.Random(7)
    wrong: list[str] = []
    while len(wrong) < 9:
        candidate = task.caption(task.random_scene(rng))
        if candidate != right and candidate not in wrong:
            wrong.append(candidate)
    texts = [*wrong[:4], right, *wrong[4:]]
    image = {"data": ImageSource.from_file(EXAMPLE).data}
    response = post(url, "/v1/rank", {"image": image, "texts": texts})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert (results[0]["index"], results[0]["text"]) == (4, right), results
    assert results[0]["itm"] > 0.5 > results[1]["itm"]
    by_score = post(url, "/v1/rank", {"image": image, "texts": texts, "sort_by": "score"})
    assert by_score.json()["results"][0]["index"] == 4


def test_recall_over_http_on_fresh_scenes_with_query_and_pooled_vectors(url: str) -> None:
    scenes = gallery(random.Random(HTTP_SEED), GALLERY)
    texts: list[list[float]] = []
    for start in range(0, GALLERY, 50):
        chunk = [task.caption(scene) for scene in scenes[start : start + 50]]
        response = post(url, "/v1/embeddings", {"input": chunk})
        assert response.status_code == 200, response.text
        texts += [item["embedding"] for item in response.json()["data"]]
    queries: list[list[list[float]]] = []
    for start in range(0, GALLERY, 25):
        images = [{"data": data_uri(scene)} for scene in scenes[start : start + 25]]
        body = {"images": images, "image_embedding": "queries"}
        response = post(url, "/v1/embeddings", body)
        assert response.status_code == 200, response.text
        queries += [item["embedding"] for item in response.json()["data"]]
    text_to_image, image_to_text = recall(np.array(queries), np.array(texts))
    bars = retrieval_bars()
    assert text_to_image >= bars.recall and image_to_text >= bars.recall
    pooled: list[list[float]] = []  # the default: one vector per image
    for start in range(0, GALLERY, 25):
        images = [{"data": data_uri(scene)} for scene in scenes[start : start + 25]]
        response = post(url, "/v1/embeddings", {"images": images})
        pooled += [item["embedding"] for item in response.json()["data"]]
    text_to_image, image_to_text = recall(np.array(pooled)[:, None, :], np.array(texts))
    assert min(text_to_image, image_to_text) >= bars.pooled_recall


def test_recall_and_matching_through_the_handle_on_fresh_scenes(url: str) -> None:
    handle = serve.get_app_handle(APP_NAME)
    scenes = gallery(random.Random(HANDLE_SEED), GALLERY)
    captions = [task.caption(scene) for scene in scenes]
    images = [ImageSource(data=data_uri(scene)) for scene in scenes]
    texts = [
        handle.embeddings.remote(EmbeddingsRequest(input=captions[i : i + 50]))
        for i in range(0, GALLERY, 50)
    ]
    queries = [
        handle.embeddings.remote(
            EmbeddingsRequest(images=images[i : i + 25], image_embedding="queries")
        )
        for i in range(0, GALLERY, 25)
    ]
    text_vectors = np.array([d.embedding for call in texts for d in call.result().data])
    query_vectors = np.array([d.embedding for call in queries for d in call.result().data])
    text_to_image, image_to_text = recall(query_vectors, text_vectors)
    bars = retrieval_bars()
    assert text_to_image >= bars.recall and image_to_text >= bars.recall

    rng = random.Random(MATCH_SEED)
    pairs = [(scene, task.altered_caption(scene, rng)) for scene in scenes[:50]]
    ranked = [
        handle.rank.remote(
            RankRequest(image=ImageSource(data=data_uri(scene)), texts=[task.caption(scene), wrong])
        )
        for scene, wrong in pairs
    ]
    right = 0
    for call in ranked:
        by_index = {r.index: r.itm for r in call.result().results}
        right += (by_index[0] > 0.5) + (by_index[1] <= 0.5)
    assert right / (2 * len(pairs)) >= bars.matching


def test_the_openai_client_gets_text_embeddings(url: str) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    texts = ["a red circle", "two blue squares and a yellow triangle"]
    response = client.embeddings.create(model=DEMO_SHAPES_ITM, input=texts)
    vectors = np.array([item.embedding for item in response.data])
    assert [item.index for item in response.data] == [0, 1]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    direct = post(url, "/v1/embeddings", {"input": texts}).json()
    np.testing.assert_allclose(vectors, [d["embedding"] for d in direct["data"]], atol=1e-6)
    assert response.usage.prompt_tokens == direct["usage"]["prompt_tokens"] > 0
    single = client.embeddings.create(model=DEMO_SHAPES_ITM, input="a red circle")
    np.testing.assert_allclose(single.data[0].embedding, vectors[0], atol=1e-6)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=DEMO_SHAPES_ITM, input=["a red circle", ""])
    assert caught.value.body["param"] == "input[1]"  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    [
        ("/v1/embeddings", {"input": []}, 400, "invalid_request", "input"),
        ("/v1/embeddings", {"input": ["red " * 80]}, 400, "invalid_request", "input[0]"),
        ("/v1/embeddings", {"input": ["a"] * 65}, 400, "invalid_request", "input"),
        ("/v1/embeddings", {"images": [{"data": "aGVsbG8="}]}, 400, "invalid_image", None),
        ("/v1/rank", {"image": {"data": "aGVsbG8="}, "texts": ["a"] * 65}, 422, None, "texts"),
        ("/v1/rank", {"text": "a", "texts": ["b"]}, 422, "invalid_request", None),
        ("/v1/rank", {"image": {"data": "aGVsbG8="}, "images": []}, 422, "invalid_request", None),
        ("/v1/rank", {"text": "a", "images": [{"url": "http://127.0.0.1/x.png"}]}, 400, None, None),
    ],
)
def test_bad_input_is_a_typed_client_error_in_each_routes_shape(
    url: str,
    path: str,
    body: dict[str, Any],
    status: int,
    code: str | None,
    param: str | None,
) -> None:
    response = post(url, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def test_models_lists_both_models(url: str) -> None:
    cards = requests.get(f"{url}/v1/models", timeout=30).json()["data"]
    retrieval = cards[1]
    assert retrieval["id"] == DEMO_SHAPES_ITM and retrieval["task"] == "retrieval"
    assert retrieval["dimensions"] == len(
        post(url, "/v1/embeddings", {"input": "a red circle"}).json()["data"][0]["embedding"]
    )


def test_the_image_search_example_indexes_a_folder_and_finds_by_text(
    url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    scenes = gallery(random.Random(304), 12)
    for index, scene in enumerate(scenes):
        scene.render().save(folder / f"{index:02d}.png")
    (folder / "broken.png").write_bytes(b"this is not an image")
    vectors = tmp_path / "photos.npz"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}

    def run(*arguments: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "examples/image_search.py", *arguments]
        return subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180
        )

    indexed = run("index", str(folder), "--output", str(vectors), "--batch", "5")
    assert indexed.returncode == 1, indexed.stderr
    assert "FAILED broken.png: invalid_image" in indexed.stderr
    assert "12 of 13 images indexed" in indexed.stdout
    target = 5
    found = run("search", str(vectors), task.caption(scenes[target]), "--top", "3", "--rerank")
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[0].startswith(f"{target:02d}.png"), found.stdout


def test_an_application_may_serve_retrieval_alone(url: str) -> None:
    config = AppConfig.model_validate(
        {
            "model": None,
            "retrieval": {"model_id": DEMO_SHAPES_ITM, "device": "cpu"},
            "retrieval_deployment": {"num_gpus": 0, "num_cpus": 0},
            "ingress_deployment": {"num_cpus": 0},
            "auth": {"allow_anonymous": True},
        }
    )
    serve.run(build_application(config), name="retrieval-only", route_prefix="/retrieval-only")
    base = f"{url}/retrieval-only"
    wait_until(
        lambda: requests.get(f"{base}/readyz", timeout=10).status_code == 200, 60, "readiness"
    )
    embedded = post(base, "/v1/embeddings", {"input": "a red circle"})
    assert embedded.status_code == 200, embedded.text
    assert post(base, "/v1/vqa", {"question": "q", "image": {"data": "x"}}).status_code == 404
    cards = requests.get(f"{base}/v1/models", timeout=30).json()["data"]
    assert [card["id"] for card in cards] == [DEMO_SHAPES_ITM]
    serve.delete("retrieval-only")
