"""The folder-captioning example, run as a separate Ray driver against the live application."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from tests.support.images import image_bytes
from tests.support.serving import REPO_ROOT, deploy_config, fit_for_tests, load_config


@pytest.fixture(scope="module")
def url(serve_url: str) -> str:
    deploy_config(fit_for_tests(load_config()))
    return serve_url


def run_example(folder: Path, output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    command = [sys.executable, "examples/caption_folder.py", str(folder), "--output", str(output)]
    return subprocess.run(
        [*command, "--concurrency", "3", *extra],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_example_captions_a_folder_and_reports_failures(url: str, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for index in range(5):
        (folder / f"{index}.png").write_bytes(image_bytes(index))
    (folder / "nested" / "5.jpg").write_bytes(image_bytes(5, "JPEG"))
    (folder / "broken.png").write_bytes(b"this is not an image")
    (folder / "notes.txt").write_text("not an image file at all")
    output = tmp_path / "out.jsonl"

    finished = run_example(folder, output)

    assert finished.returncode == 1, finished.stderr
    assert "FAILED broken.png: invalid_image" in finished.stderr
    records = {r["file"]: r for r in map(json.loads, output.read_text().splitlines())}
    assert set(records) == {
        "0.png",
        "1.png",
        "2.png",
        "3.png",
        "4.png",
        "nested/5.jpg",
        "broken.png",
    }
    assert records["broken.png"]["ok"] is False
    good = [r for name, r in records.items() if name != "broken.png"]
    assert all(
        r["ok"] and isinstance(r["text"], str) and r["usage"]["completion_tokens"] > 0 for r in good
    )


def test_example_answers_a_question(url: str, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(image_bytes(1))
    output = tmp_path / "answers.jsonl"

    finished = run_example(folder, output, "--question", "what is in the picture?")

    assert finished.returncode == 0, finished.stderr
    (record,) = map(json.loads, output.read_text().splitlines())
    assert record["ok"] and record["file"] == "a.png"
