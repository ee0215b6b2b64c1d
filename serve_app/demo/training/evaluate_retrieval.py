"""Held-out figures of a retrieval model on the shapes task, through the serving wrapper.

Galleries are scenes with pairwise different captions (one-object scenes would otherwise
repeat captions, and a repeat cannot be told apart). Recall@1 is measured both ways with
BLIP-2's contrastive score, with the pooled image vector, and with the contrastive top
``RERANK_TOP`` re-ranked by the matching head; matching accuracy is on each scene's caption
and its hard negative (one colour or count changed), at probability 0.5.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from serve_app.demo import task
from serve_app.model.retrieval import Blip2Retrieval
from serve_app.model.retrieval_types import MatchRequest, MatchResult, pool

RERANK_TOP = 5


@dataclass(frozen=True)
class RetrievalFigures:
    """Recall@1 (text-to-image, image-to-text) by scoring rule, and matching accuracy."""

    gallery_size: int
    galleries: int
    text_to_image: dict[str, float]
    image_to_text: dict[str, float]
    matching_accuracy: float
    matching_pairs: int

    def summary(self) -> str:
        """One line of the headline figures."""
        return (
            f"recall@1 over {self.gallery_size}: text-to-image "
            f"{self.text_to_image['contrastive']:.1%} (re-ranked "
            f"{self.text_to_image['reranked']:.1%}), image-to-text "
            f"{self.image_to_text['contrastive']:.1%} (re-ranked "
            f"{self.image_to_text['reranked']:.1%}); matching on hard negatives "
            f"{self.matching_accuracy:.1%}"
        )


def gallery(rng: random.Random, size: int) -> list[task.Scene]:
    """``size`` random scenes whose captions all differ."""
    scenes: dict[str, task.Scene] = {}
    while len(scenes) < size:
        scene = task.random_scene(rng)
        scenes.setdefault(task.caption(scene), scene)
    return list(scenes.values())


def evaluate_retrieval(
    model: Blip2Retrieval, seed: int, galleries: int, size: int, progress: bool = False
) -> RetrievalFigures:
    """Recall@1 over ``galleries`` galleries of ``size`` scenes, and matching accuracy."""
    rng = random.Random(seed)
    hits: dict[str, list[float]] = {}
    correct = pairs = 0
    for _ in tqdm(range(galleries), disable=not progress, unit="gallery"):
        scenes = gallery(rng, size)
        images = [np.asarray(scene.render()) for scene in scenes]
        captions = [task.caption(scene) for scene in scenes]
        queries = model.embed_images(images)
        texts = model.embed_texts(captions)
        contrastive = np.einsum("iqd,td->itq", queries, texts).max(axis=-1)
        rules = {"contrastive": contrastive, "pooled": pool(queries) @ texts.T}
        truth = np.arange(size)
        for rule, scores in rules.items():
            hits.setdefault(f"t2i {rule}", []).append(float((scores.argmax(0) == truth).mean()))
            hits.setdefault(f"i2t {rule}", []).append(float((scores.argmax(1) == truth).mean()))
        t2i = [
            _rerank(model, [images[i] for i in top], [captions[t]], top)
            for t, top in enumerate(np.argsort(-contrastive, axis=0)[:RERANK_TOP].T)
        ]
        i2t = [
            _rerank(model, [images[i]], [captions[t] for t in top], top)
            for i, top in enumerate(np.argsort(-contrastive, axis=1)[:, :RERANK_TOP])
        ]
        hits.setdefault("t2i reranked", []).append(float((np.array(t2i) == truth).mean()))
        hits.setdefault("i2t reranked", []).append(float((np.array(i2t) == truth).mean()))
        negatives = [task.altered_caption(scene, rng) for scene in scenes]
        for image, caption, negative in zip(images, captions, negatives, strict=True):
            result = _match(model, [image], [caption, negative])
            correct += (result.itm[0] > 0.5) + (result.itm[1] <= 0.5)
            pairs += 2
    mean = {key: float(np.mean(values)) for key, values in hits.items()}
    names = ("contrastive", "pooled", "reranked")
    return RetrievalFigures(
        gallery_size=size,
        galleries=galleries,
        text_to_image={name: mean[f"t2i {name}"] for name in names},
        image_to_text={name: mean[f"i2t {name}"] for name in names},
        matching_accuracy=correct / pairs,
        matching_pairs=pairs,
    )


def _match(model: Blip2Retrieval, images: list[np.ndarray], texts: list[str]) -> MatchResult:
    result = model.run([MatchRequest(images=images, texts=texts)])[0]
    if isinstance(result, Exception):
        raise result
    assert isinstance(result, MatchResult)
    return result


def _rerank(
    model: Blip2Retrieval, images: list[np.ndarray], texts: list[str], candidates: np.ndarray
) -> int:
    """The candidate the matching head ranks first."""
    return int(candidates[int(np.argmax(_match(model, images, texts).itm))])
