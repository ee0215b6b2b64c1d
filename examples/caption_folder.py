"""Caption (or ask a question about) every image in a folder through the running service.

Submit it to the cluster that runs the application:

    ray job submit --working-dir . -- python examples/caption_folder.py photos/ \
        --output captions.jsonl --concurrency 16
    ray job submit --working-dir . -- python examples/caption_folder.py photos/ \
        --question "How many people are there?" --output answers.jsonl

Requests go through the application's Python handle (no HTTP), at most ``--concurrency`` at a
time, with a progress bar. Each image gets one JSON line: ``{"file", "ok", "text", "usage"}``
or, when it failed, ``{"file", "ok": false, "error": {"code", "message"}}``; failures are
listed at the end and make the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray import serve
from tqdm import tqdm

from serve_app import CaptionRequest, ImageSource, ServeAppError, VQARequest

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--question", help="ask this question instead of captioning")
    parser.add_argument("--prompt", help="caption prefix to continue")
    parser.add_argument("--output", type=Path, default=Path("results.jsonl"))
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at most")
    parser.add_argument("--app-name", default="blip2", help="the Serve application's name")
    return parser.parse_args(argv)


def image_files(folder: Path) -> Iterator[Path]:
    """Image files under ``folder``, in a stable order."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


async def process_one(handle: Any, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Send one image; return its result line (errors are reported, not raised)."""
    record: dict[str, Any] = {"file": str(path.relative_to(args.folder))}
    try:
        image = ImageSource.from_file(path)
        if args.question:
            vqa = await handle.vqa.remote(VQARequest(image=image, question=args.question))
            text, usage = vqa.answer, vqa.usage
        else:
            caption = await handle.caption.remote(CaptionRequest(image=image, prompt=args.prompt))
            text, usage = caption.caption, caption.usage
    except ServeAppError as exc:
        return {**record, "ok": False, "error": {"code": exc.code, "message": str(exc)}}
    except Exception as exc:  # a dead replica, an unreadable file: report it, keep going
        message = type(exc).__name__
        return {**record, "ok": False, "error": {"code": "failed", "message": message}}
    return {**record, "ok": True, "text": text, "usage": usage.model_dump()}


async def process_folder(args: argparse.Namespace) -> int:
    """Process every image with bounded concurrency; return the number of failures."""
    handle = serve.get_app_handle(args.app_name)
    paths = list(image_files(args.folder))
    slots = asyncio.Semaphore(args.concurrency)

    async def bounded(path: Path) -> dict[str, Any]:
        async with slots:
            return await process_one(handle, path, args)

    failures = []
    tasks = [asyncio.ensure_future(bounded(path)) for path in paths]
    with args.output.open("w") as output:
        for finished in tqdm(asyncio.as_completed(tasks), total=len(tasks), unit="image"):
            record = await finished
            output.write(json.dumps(record) + "\n")
            if not record["ok"]:
                failures.append(record)
    print(f"{len(paths) - len(failures)} of {len(paths)} images done; results in {args.output}")
    for failure in failures:
        print(f"FAILED {failure['file']}: {failure['error']['code']}", file=sys.stderr)
    return len(failures)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ray.init()
    failures = asyncio.run(process_folder(args))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
