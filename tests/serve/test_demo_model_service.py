"""The CPU config serves the demo model: right answers over HTTP, over gRPC and through the
handle API; bulk jobs on Ray Data against the same application (the folder example and the
command as separate Ray drivers, the function in process): folders, Parquet and CSV tables,
captions, answers and embeddings, error rows, and an interrupted run resumed; and batching:
batches form under load with answers equal to the sequential ones, and a change of
``user_config`` retunes the running replica (these run last: they retune it)."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import requests
from ray import serve
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from serve_app.bulk import BulkJob, Calls, Source, run_bulk
from serve_app.contract.api import CaptionRequest, ImageSource, VQARequest, VQAResponse
from serve_app.contract.retrieval import EmbeddingsRequest
from serve_app.demo.task import Example, judge, sample
from serve_app.grpc.client import Blip2GrpcClient
from serve_app.model.builtin import DEMO_SHAPES
from tests.support.browser import chromium, wait_for
from tests.support.demo import accuracy_bar, card_family_accuracy
from tests.support.images import image_bytes
from tests.support.serving import (
    APP_NAME,
    REPO_ROOT,
    deploy_config,
    fit_for_tests,
    load_config,
    wait_until,
)

HTTP_SEED = 201
HANDLE_SEED = 202
GRPC_SEED = 203
BULK_SEED = 204


@pytest.fixture(scope="module")
def url(serve_url: str) -> str:
    config = fit_for_tests(load_config())
    assert config["applications"][0]["args"]["model"]["model_id"] == DEMO_SHAPES
    deploy_config(config)
    return serve_url


def png(example: Example) -> bytes:
    buffer = io.BytesIO()
    example.scene.render().save(buffer, format="PNG")
    return buffer.getvalue()


def ask_over_http(url: str, index: int, example: Example) -> str:
    """Even indices send JSON with base64 data, odd ones a multipart upload."""
    route, key = ("caption", "caption") if example.family == "caption" else ("vqa", "answer")
    fields = {"question": example.question} if example.question else {}
    if index % 2 == 0:
        body: dict[str, Any] = {"image": {"data": base64.b64encode(png(example)).decode()}}
        response = requests.post(f"{url}/v1/{route}", json={**body, **fields}, timeout=120)
    else:
        files = {"image": ("scene.png", png(example), "image/png")}
        response = requests.post(f"{url}/v1/{route}", files=files, data=fields, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == DEMO_SHAPES
    text: str = response.json()[key]
    return text


def test_answers_over_http_are_right(url: str) -> None:
    examples = sample(HTTP_SEED, 40)
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda pair: ask_over_http(url, *pair), enumerate(examples)))
    right = sum(judge(example, text) for example, text in zip(examples, texts, strict=True))
    assert right / len(examples) >= accuracy_bar(), list(zip(examples, texts, strict=True))


def test_answers_over_grpc_are_right(url: str, grpc_target: str) -> None:
    examples = sample(GRPC_SEED, 20)
    with Blip2GrpcClient(grpc_target) as client:

        def ask(example: Example) -> str:
            if example.family == "caption":
                return client.caption(png(example)).caption
            return client.vqa(png(example), example.question).answer

        with ThreadPoolExecutor(4) as pool:
            texts = list(pool.map(ask, examples))
        readme_example = REPO_ROOT / "examples" / "images" / "shapes-1.png"
        answer = client.vqa(readme_example, "How many circles are there?")
    right = sum(judge(example, text) for example, text in zip(examples, texts, strict=True))
    assert right / len(examples) >= accuracy_bar(), list(zip(examples, texts, strict=True))
    assert (answer.answer, answer.model) == ("three", DEMO_SHAPES)


@ray.remote(num_cpus=0)
def ask_through_handle(items: list[tuple[bytes, str]]) -> list[str]:
    """A Ray task asking the running app (an empty question asks for a caption)."""
    handle = serve.get_app_handle("blip2")
    pending = [
        handle.vqa.remote(VQARequest(image=ImageSource.from_bytes(raw), question=question))
        if question
        else handle.caption.remote(CaptionRequest(image=ImageSource.from_bytes(raw)))
        for raw, question in items
    ]
    results = [response.result() for response in pending]
    return [r.answer if isinstance(r, VQAResponse) else r.caption for r in results]


def test_answers_through_the_handle_are_right(url: str) -> None:
    examples = sample(HANDLE_SEED, 20)
    items = [(png(example), example.question) for example in examples]
    texts = ray.get(ask_through_handle.remote(items), timeout=120)
    right = sum(judge(example, text) for example, text in zip(examples, texts, strict=True))
    assert right / len(examples) >= accuracy_bar(), list(zip(examples, texts, strict=True))


def save_scenes(folder: Path, examples: list[Example]) -> dict[str, Example]:
    """Each example's scene as a PNG under ``folder`` (every third in a subfolder), by id."""
    saved = {}
    for index, example in enumerate(examples):
        name = f"part-{index % 3}/{index}.png" if index % 3 == 0 else f"{index}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png(example))
        saved[name] = example
    return saved


def bulk_env() -> dict[str, str]:
    """A separate Ray driver's environment: it joins the test cluster."""
    return {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def read_rows(folder: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(folder).to_pylist()
    return rows


def finished_rows(folder: Path) -> int:
    """Rows in the files a killed job finished (a file cut short has no footer)."""
    rows = 0
    for path in folder.glob("*.parquet"):
        try:
            rows += pq.read_metadata(path).num_rows
        except (OSError, pa.ArrowInvalid):
            continue
    return rows


def test_example_captions_a_folder_into_parquet_and_reports_failures(
    url: str, tmp_path: Path
) -> None:
    scenes = save_scenes(tmp_path / "photos", sample(BULK_SEED, 12, families=("caption",)))
    (tmp_path / "photos" / "broken.png").write_bytes(b"this is not an image")
    (tmp_path / "photos" / "notes.txt").write_text("not an image file at all")
    output = tmp_path / "captions"
    command = [sys.executable, "examples/caption_folder.py", str(tmp_path / "photos")]
    finished = subprocess.run(
        [*command, "--output", str(output)],
        cwd=REPO_ROOT,
        env=bulk_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert finished.returncode == 1, finished.stderr
    assert "invalid_image: 1" in finished.stdout
    rows = {row["id"]: row for row in read_rows(output)}
    assert set(rows) == {*scenes, "broken.png"}
    assert rows["broken.png"]["error_code"] == "invalid_image"
    right = sum(judge(example, rows[name]["text"]) for name, example in scenes.items())
    assert right / len(scenes) >= card_family_accuracy("caption") - 0.10, rows


def test_bulk_asks_a_parquet_tables_questions_about_its_image_bytes(
    url: str, tmp_path: Path
) -> None:
    examples = [e for e in sample(BULK_SEED + 1, 40) if e.family != "caption"][:24]
    table = pa.table(
        {
            "key": list(range(len(examples))),
            "picture": [png(example) for example in examples],
            "ask": [example.question for example in examples],
        }
    )
    pq.write_table(table, tmp_path / "questions.parquet")
    source = Source(
        str(tmp_path / "questions.parquet"),
        id_column="key",
        image_column="picture",
        question_column="ask",
    )

    summary = run_bulk(BulkJob(source, str(tmp_path / "answers"), Calls(task="vqa"), workers=1))

    assert (summary.written, summary.rows, summary.ok) == (len(examples), len(examples), True)
    rows = {row["id"]: row for row in read_rows(tmp_path / "answers")}
    assert set(rows) == {str(index) for index in range(len(examples))}
    right = sum(judge(e, rows[str(i)]["text"]) for i, e in enumerate(examples))
    assert right / len(examples) >= accuracy_bar()
    assert all(row["completion_tokens"] > 0 and row["error_code"] is None for row in rows.values())


def test_bulk_embeds_images_a_csv_names_and_refused_urls_become_error_rows(
    url: str, tmp_path: Path
) -> None:
    examples = sample(BULK_SEED + 2, 3, families=("caption",))
    for index, example in enumerate(examples):
        (tmp_path / f"{index}.png").write_bytes(png(example))
    references = ["0.png", "1.png", "2.png", "missing.png", "http://127.0.0.1:9/private.png"]
    lines = ["id,image", *(f"{i},{ref}" for i, ref in enumerate(references))]
    (tmp_path / "images.csv").write_text("\n".join(lines) + "\n")

    summary = run_bulk(
        BulkJob(Source(str(tmp_path / "images.csv")), str(tmp_path / "vectors"), Calls("embed"))
    )

    assert summary.rows == 5 and not summary.ok
    rows = {row["id"]: row for row in read_rows(tmp_path / "vectors")}
    assert rows["3"]["error_code"] == "input_unreadable"
    assert rows["4"]["error_code"] == "image_fetch_failed"
    handle = serve.get_app_handle(APP_NAME)
    for index, example in enumerate(examples):
        request = EmbeddingsRequest(images=[ImageSource.from_upload(png(example))])
        expected = handle.embeddings.remote(request).result().data[0].embedding
        assert rows[str(index)]["error_code"] is None
        assert rows[str(index)]["embedding"] == pytest.approx(expected, abs=1e-5)


def test_an_interrupted_bulk_command_resumes_without_duplicates_or_gaps(
    url: str, tmp_path: Path
) -> None:
    scenes = save_scenes(tmp_path / "photos", sample(BULK_SEED + 3, 48, families=("caption",)))
    output = tmp_path / "captions"
    command = [
        sys.executable,
        "-m",
        "serve_app.bulk",
        "caption",
        str(tmp_path / "photos"),
        "--output",
        str(output),
        "--rows-per-file",
        "8",
        "--workers",
        "1",
        "--in-flight",
        "1",
    ]
    first = subprocess.Popen(command, cwd=REPO_ROOT, env=bulk_env(), start_new_session=True)
    wait_until(lambda: len(list(output.glob("*.parquet"))) >= 2, 180, "two files written")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    interrupted = finished_rows(output)
    assert 0 < interrupted < len(scenes)

    finished = subprocess.run(
        command, cwd=REPO_ROOT, env=bulk_env(), capture_output=True, text=True, timeout=240
    )

    assert finished.returncode == 0, finished.stderr
    ids = [row["id"] for row in read_rows(output)]
    assert sorted(ids) == sorted(scenes)
    summary = json.loads(finished.stdout.strip().splitlines()[-1])
    assert (summary["rows"], summary["written"]) == (len(scenes), len(scenes) - interrupted)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    yield from chromium()


def open_playground(browser: WebDriver, url: str) -> None:
    browser.get(f"{url}/")
    wait_for(browser, lambda b: b.find_element(By.ID, "send").is_displayed())


def choose_mode(browser: WebDriver, mode: str) -> None:
    browser.find_element(By.CSS_SELECTOR, f'.modes button[data-mode="{mode}"]').click()


def ask(browser: WebDriver, text: str | None = None) -> None:
    if text is not None:
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys(text)
    browser.find_element(By.ID, "send").click()


def test_the_playground_answers_a_question_about_an_uploaded_image(
    url: str, browser: WebDriver
) -> None:
    open_playground(browser, url)
    upload = browser.find_element(By.ID, "file")
    upload.send_keys(str(REPO_ROOT / "examples" / "images" / "shapes-1.png"))
    wait_for(browser, lambda b: b.find_element(By.ID, "preview").is_displayed())
    ask(browser, "How many circles are there?")
    wait_for(browser, lambda b: b.find_element(By.ID, "answer").text)
    assert browser.find_element(By.ID, "answer").text == "three"
    stats = browser.find_element(By.ID, "stats").text
    assert "tokens" in stats and stats.endswith("· batch of 1")


def test_the_playground_streams_a_chat_answer_token_by_token(url: str, browser: WebDriver) -> None:
    open_playground(browser, url)
    browser.find_element(By.CSS_SELECTOR, '.example[data-src$="shapes-2.png"]').click()
    wait_for(browser, lambda b: b.find_element(By.ID, "preview").is_displayed())
    choose_mode(browser, "chat")
    ask(browser, "")  # the image alone: a caption, several tokens long
    wait_for(browser, lambda b: "streamed in" in b.find_element(By.ID, "stats").text)
    answer = browser.find_element(By.ID, "answer")
    assert int(answer.get_attribute("data-updates") or 0) > 1
    assert answer.text.strip()
    if os.environ.get("PLAYGROUND_SCREENSHOT"):
        browser.save_screenshot(os.environ["PLAYGROUND_SCREENSHOT"])


def test_the_playground_ranks_texts_when_retrieval_is_served(url: str, browser: WebDriver) -> None:
    open_playground(browser, url)
    browser.find_element(By.CSS_SELECTOR, '.example[data-src$="shapes-3.png"]').click()
    wait_for(browser, lambda b: b.find_element(By.ID, "preview").is_displayed())
    choose_mode(browser, "rank")
    right = "a green circle and three green triangles"
    ask(browser, f"a red square and a blue circle\n{right}\ntwo yellow squares")
    wait_for(browser, lambda b: b.find_element(By.ID, "ranking").is_displayed())
    ranked = [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#ranking li")]
    assert len(ranked) == 3 and ranked[0].startswith(right)


def test_the_playground_shows_the_apis_error_for_a_bad_file(
    url: str, browser: WebDriver, tmp_path: Path
) -> None:
    open_playground(browser, url)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    browser.find_element(By.ID, "file").send_keys(str(broken))
    wait_for(browser, lambda b: b.find_element(By.ID, "preview").get_attribute("src"))
    ask(browser, "How many circles are there?")
    wait_for(browser, lambda b: b.find_element(By.ID, "error").is_displayed())
    error = browser.find_element(By.ID, "error").text
    assert error.endswith("(invalid_image)") and "Traceback" not in error


BATCHING_CLIENTS = 16


def with_batching(
    max_batch_size: int, batch_wait_timeout_s: float, max_rows: int | None = None
) -> dict[str, Any]:
    """The CPU config with another ``user_config``: applied live, the replica is not restarted."""
    config = fit_for_tests(load_config())
    deployment = config["applications"][0]["deployments"][0]
    deployment["user_config"] = {
        "max_batch_size": max_batch_size,
        "batch_wait_timeout_s": batch_wait_timeout_s,
        **({"max_rows": max_rows} if max_rows else {}),
    }
    return config


def ask_count(url: str, index: int) -> str:
    body = {
        "image": {"data": base64.b64encode(image_bytes(index % 5)).decode()},
        "question": f"how many things are there {'really ' * (index % 4)}?",
    }
    response = requests.post(f"{url}/v1/vqa", json=body, timeout=120)
    assert response.status_code == 200, response.text
    answer: str = response.json()["answer"]
    return answer


def batch_sizes() -> dict[int, int]:
    server = serve.get_deployment_handle("Blip2Server", APP_NAME)
    counts: dict[int, int] = server.batch_size_counts.remote().result()
    return counts


def model_card(url: str) -> dict[str, Any]:
    card: dict[str, Any] = requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]
    return card


def test_concurrent_requests_are_batched_and_match_sequential_answers(url: str) -> None:
    deploy_config(with_batching(max_batch_size=16, batch_wait_timeout_s=0.5))
    wait_until(lambda: model_card(url)["batch_wait_timeout_s"] == 0.5, 60, "the batch wait")
    sequential = [ask_count(url, i) for i in range(BATCHING_CLIENTS)]
    before = batch_sizes()
    with ThreadPoolExecutor(BATCHING_CLIENTS) as pool:
        concurrent = list(pool.map(lambda i: ask_count(url, i), range(BATCHING_CLIENTS)))
    assert concurrent == sequential
    after = batch_sizes()
    new_batches = {size: after[size] - before.get(size, 0) for size in after}
    assert max(size for size, count in new_batches.items() if count > 0) > 1, new_batches


def test_user_config_change_retunes_the_running_replica(url: str) -> None:
    history_before = batch_sizes()
    assert model_card(url)["max_batch_size"] == 16

    deploy_config(with_batching(max_batch_size=2, batch_wait_timeout_s=0.5, max_rows=2))
    wait_until(lambda: model_card(url)["max_batch_size"] == 2, 60, "max_batch_size to become 2")
    assert model_card(url)["batch_wait_timeout_s"] == 0.5
    assert model_card(url)["max_rows"] == 2

    history = batch_sizes()
    assert all(history.get(size, 0) >= count for size, count in history_before.items()), (
        "the replica restarted: its batch history is gone"
    )
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: ask_count(url, i), range(8)))
    after = batch_sizes()
    grown = [size for size in after if after[size] > history.get(size, 0)]
    assert grown and max(grown) <= 2, after
