"""Search a folder of images by text through the running service's retrieval model.

Index a folder into a vector file, then query it (both as Ray jobs, or from any Ray driver):

    ray job submit --working-dir . -- python examples/image_search.py index photos/ \
        --output photos.npz
    ray job submit --working-dir . -- python examples/image_search.py search photos.npz \
        "two red circles and a blue square" --top 5 --rerank

``index`` embeds every image through the application's handle (no HTTP), a batch of images
per call and at most ``--concurrency`` calls in flight, with a progress bar; it keeps each
image's query vectors, so a search scores exactly as BLIP-2 does (the best dot product over an
image's query vectors). Images that fail are listed and make the exit status 1. ``search``
embeds the text, scores every image, and with ``--rerank`` re-ranks the best with the
image-text matching head (``rank``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve
from tqdm import tqdm

from serve_app import EmbeddingsRequest, ImageSource, RankRequest, ServeAppError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app-name", default="blip2", help="the Serve application's name")
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", help="embed every image of a folder into a file")
    index.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    index.add_argument("--output", type=Path, default=Path("vectors.npz"))
    index.add_argument("--batch", type=int, default=16, help="images per call")
    index.add_argument("--concurrency", type=int, default=4, help="calls in flight at most")
    search = commands.add_parser("search", help="the images that best match a text")
    search.add_argument("vectors", type=Path, help="a file written by 'index'")
    search.add_argument("text", help="what to look for")
    search.add_argument("--top", type=int, default=5)
    search.add_argument("--rerank", action="store_true", help="re-rank with the matching head")
    return parser.parse_args(argv)


def image_files(folder: Path) -> Iterator[Path]:
    """Image files under ``folder``, in a stable order."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


async def embed_batch(handle: Any, paths: list[Path]) -> list[np.ndarray | str]:
    """Each image's query vectors, or the error code that kept it out."""
    request = EmbeddingsRequest(
        images=[ImageSource.from_file(path) for path in paths], image_embedding="queries"
    )
    try:
        response = await handle.embeddings.remote(request)
        return [np.asarray(item.embedding, dtype=np.float32) for item in response.data]
    except ServeAppError as exc:
        if len(paths) == 1:
            return [exc.code]
    # One bad image fails its whole call: embed that call's images one by one.
    return [(await embed_batch(handle, [path]))[0] for path in paths]


async def index_folder(args: argparse.Namespace) -> int:
    """Embed the folder into ``args.output``; return the number of images that failed."""
    handle = serve.get_app_handle(args.app_name)
    paths = list(image_files(args.folder))
    batches = [paths[i : i + args.batch] for i in range(0, len(paths), args.batch)]
    slots = asyncio.Semaphore(args.concurrency)

    async def bounded(batch: list[Path]) -> tuple[list[Path], list[np.ndarray | str]]:
        async with slots:
            return batch, await embed_batch(handle, batch)

    files: list[str] = []
    vectors: list[np.ndarray] = []
    failures: list[tuple[str, str]] = []
    tasks = [asyncio.ensure_future(bounded(batch)) for batch in batches]
    with tqdm(total=len(paths), unit="image") as progress:
        for finished in asyncio.as_completed(tasks):
            batch, results = await finished
            for path, result in zip(batch, results, strict=True):
                name = str(path.relative_to(args.folder))
                if isinstance(result, str):
                    failures.append((name, result))
                else:
                    files.append(name)
                    vectors.append(result)
            progress.update(len(batch))
    order = np.argsort(files)
    np.savez(
        args.output,
        folder=str(args.folder.resolve()),
        files=np.array(files)[order],
        queries=np.stack(vectors)[order] if vectors else np.zeros((0, 0, 0), np.float32),
    )
    print(f"{len(files)} of {len(paths)} images indexed into {args.output}")
    for name, code in sorted(failures):
        print(f"FAILED {name}: {code}", file=sys.stderr)
    return len(failures)


async def search(args: argparse.Namespace) -> None:
    """Print the best-matching images for ``args.text``, best first."""
    handle = serve.get_app_handle(args.app_name)
    stored = np.load(args.vectors)
    files, queries = list(stored["files"]), stored["queries"]
    response = await handle.embeddings.remote(EmbeddingsRequest(input=args.text))
    text = np.asarray(response.data[0].embedding, dtype=np.float32)
    scores = (queries @ text).max(axis=1)
    best = list(np.argsort(-scores)[: args.top])
    if args.rerank:
        folder = Path(str(stored["folder"]))
        images = [ImageSource.from_file(folder / files[i]) for i in best]
        ranked = await handle.rank.remote(RankRequest(text=args.text, images=images))
        for result in ranked.results:
            i = best[result.index]
            print(f"{files[i]}\tmatch {result.itm:.3f}\tscore {result.score:.3f}")
        return
    for i in best:
        print(f"{files[i]}\tscore {scores[i]:.3f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ray.init()
    if args.command == "index":
        return 1 if asyncio.run(index_folder(args)) else 0
    asyncio.run(search(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
