"""The server a user writes first: FastAPI + uvicorn, one process, one generation at a time.

It loads the same model with ``Blip2Model.load`` and answers the same ``POST /v1/vqa`` JSON
bodies, decoding each image in FastAPI's thread pool and generating for one request at a
time behind a lock (no batching, no Ray). torch uses one thread, as in a Ray worker (Ray sets
``OMP_NUM_THREADS=1``), so the two differ in how they serve, not in how torch computes. Run it
alone with

    python -m benchmarks.baseline_server --port 8001 --model builtin:tiny-random-blip2-opt
"""

from __future__ import annotations

import argparse
import base64
import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from PIL import Image
from pydantic import BaseModel

from serve_app.config import ModelConfig
from serve_app.contract.api import GenerationParams
from serve_app.model.blip2 import Blip2Model
from serve_app.model.types import ModelRequest, ModelResult

STARTUP_TIMEOUT_S = 120


class ImageData(BaseModel):
    """A base64-encoded image."""

    data: str


class Question(BaseModel):
    """A question about an image."""

    image: ImageData
    question: str
    params: GenerationParams = GenerationParams()


def create_app(config: ModelConfig) -> FastAPI:
    """The baseline application around one loaded model."""
    model = Blip2Model.load(config)
    one_at_a_time = threading.Lock()
    app = FastAPI()

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/vqa")
    def vqa(body: Question) -> dict[str, Any]:
        pixels = Image.open(io.BytesIO(base64.b64decode(body.image.data))).convert("RGB")
        request = ModelRequest(
            task="vqa", text=body.question, image=np.asarray(pixels), params=body.params
        )
        with one_at_a_time:
            result = model.generate([request])[0]
        if not isinstance(result, ModelResult):
            raise HTTPException(500, "generation failed")
        return {"answer": result.text, "model": config.name}

    return app


@contextmanager
def baseline_server(model: dict[str, Any]) -> Iterator[tuple[str, int]]:
    """Run this server in a subprocess for ``model`` (the app args' ``model`` section); yield
    its URL and process id once it answers."""
    from benchmarks.local_serve import REPO_ROOT, free_port  # the server itself needs no Ray

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "benchmarks.baseline_server",
        "--port",
        str(port),
        "--model",
        model["model_id"],
        "--default-max-new-tokens",
        str(model["default_max_new_tokens"]),
    ]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(command, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not answers(f"{url}/healthz"):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the baseline server did not start")
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def answers(url: str) -> bool:
    """Whether ``GET url`` is answered with 200."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--model", default="builtin:tiny-random-blip2-opt")
    parser.add_argument("--default-max-new-tokens", type=int, default=20)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    config = ModelConfig(
        model_id=args.model,
        device="cpu",
        dtype="float32",
        default_max_new_tokens=args.default_max_new_tokens,
    )
    uvicorn.run(create_app(config), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
