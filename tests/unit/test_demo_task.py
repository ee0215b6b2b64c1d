"""The synthetic shapes task: determinism, one right answer per question, judging, rendering."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from serve_app.demo.task import (
    COLORS,
    FAMILIES,
    IMAGE_SIZE,
    NUMBERS,
    Example,
    Scene,
    Shape,
    altered_caption,
    caption,
    judge,
    parse_caption,
    random_scene,
    sample,
)
from tests.support.serving import REPO_ROOT

SEED = 11


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return sample(SEED, 500)


def test_a_seed_always_gives_the_same_examples_and_images() -> None:
    first, again, other = sample(SEED, 40), sample(SEED, 40), sample(SEED + 1, 40)
    assert first == again
    assert first != other
    assert all(
        a.scene.render().tobytes() == b.scene.render().tobytes()
        for a, b in zip(first, again, strict=True)
    )


def test_families_come_in_equal_shares(examples: list[Example]) -> None:
    assert Counter(e.family for e in examples) == dict.fromkeys(FAMILIES, 100)
    assert sample(SEED, 6, ["caption"])[-1].family == "caption"


def expected_answer(example: Example) -> str:
    """The answer worked out from the scene's objects alone."""
    objects, question = example.scene.objects, example.question
    if match := re.fullmatch(r"How many (?:(\w+) )?(\w+)s are there\?", question):
        first, noun = match.groups()
        if noun == "object":
            chosen = [o for o in objects if first is None or o.color == first]
        else:
            chosen = [o for o in objects if o.shape == noun and first in (None, o.color)]
        return NUMBERS[len(chosen)]
    if match := re.fullmatch(r"What color is the (\w+)\?", question):
        (only,) = [o for o in objects if o.shape == match[1]]  # asked only when unique
        return only.color
    if match := re.fullmatch(r"What shape is the (\w+) object\?", question):
        (only,) = [o for o in objects if o.color == match[1]]
        return only.shape
    if match := re.fullmatch(r"Is there a (\w+) (\w+)\?", question):
        return "yes" if (match[1], match[2]) in {o.kind for o in objects} else "no"
    raise AssertionError(f"unexpected question {question!r}")


def test_every_question_has_exactly_one_right_answer(examples: list[Example]) -> None:
    for example in examples:
        assert 1 <= len(example.scene.objects) <= 4
        if example.family == "caption":
            assert example.question == ""
            assert parse_caption(example.answer) == example.scene.kinds()
        else:
            assert example.answer == expected_answer(example), example
        assert judge(example, example.answer)
    exist = Counter(e.answer for e in examples if e.family == "exist")
    assert min(exist.values()) > 30  # both answers are common


def test_objects_never_overlap(examples: list[Example]) -> None:
    for example in examples:
        covered = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=int)
        for obj in example.scene.objects:
            assert obj.x >= 0 and obj.x + obj.size <= IMAGE_SIZE
            assert obj.y >= 0 and obj.y + obj.size <= IMAGE_SIZE
            covered[obj.y : obj.y + obj.size, obj.x : obj.x + obj.size] += 1
        assert covered.max() == 1


def colour_pixels(scene: Scene) -> dict[str, int]:
    pixels = np.asarray(scene.render()).reshape(-1, 3)
    return {name: int((pixels == rgb).all(axis=1).sum()) for name, rgb in COLORS.items()}


def test_images_show_exactly_the_described_colours(examples: list[Example]) -> None:
    for example in examples[:100]:
        image = example.scene.render()
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.mode == "RGB"
        present = {obj.color for obj in example.scene.objects}
        counts = colour_pixels(example.scene)
        assert {name for name, n in counts.items() if n > 0} == present
        assert sum(counts.values()) < IMAGE_SIZE * IMAGE_SIZE / 2  # the background dominates


@pytest.mark.parametrize(
    ("shape", "share"), [("square", 1.0), ("circle", np.pi / 4), ("triangle", 0.5)]
)
def test_shapes_cover_their_expected_area(shape: str, share: float) -> None:
    scene = Scene((Shape("blue", shape, 10, 10, 20),))
    assert colour_pixels(scene)["blue"] == pytest.approx(share * 400, rel=0.12)


SCENE = Scene(
    (
        Shape("red", "circle", 2, 2, 12),
        Shape("blue", "square", 30, 2, 12),
        Shape("red", "circle", 2, 30, 12),
    )
)
CAPTION = Example(SCENE, "caption", "", caption(SCENE))


def test_canonical_caption() -> None:
    assert CAPTION.answer == "two red circles and a blue square"
    wider = Scene((*SCENE.objects, Shape("green", "triangle", 30, 30, 14)))
    assert caption(wider) == "two red circles, a green triangle and a blue square"


@pytest.mark.parametrize(
    "text",
    [
        "two red circles and a blue square",
        "a blue square and two red circles",
        "A blue square, and two red circles.",
        "one blue square and two red circles",
        "a red circle, a blue square and a red circle",
        "  Two  red circles and a blue square!  ",
    ],
)
def test_caption_judging_accepts_equivalent_captions(text: str) -> None:
    assert judge(CAPTION, text)


@pytest.mark.parametrize(
    "text",
    [
        "two red circles",
        "three red circles and a blue square",
        "two red circles and a green square",
        "two red circles and a blue square and a blue square",
        "two red circle and a blue square",
        "a red circles and a blue square",
        "two red circles and a blue square with a hat",
        "",
    ],
)
def test_caption_judging_rejects_wrong_captions(text: str) -> None:
    assert not judge(CAPTION, text)


def test_other_answers_must_match_exactly_up_to_case_and_punctuation() -> None:
    question = Example(SCENE, "count", "How many circles are there?", "two")
    assert judge(question, "two") and judge(question, " Two. ") and judge(question, "TWO!")
    assert not judge(question, "three") and not judge(question, "two circles")
    assert not judge(question, "")


def test_shipped_example_images_come_from_the_task(tmp_path: Path) -> None:
    script = REPO_ROOT / "examples" / "shape_images.py"
    subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=REPO_ROOT, check=True)
    shipped = REPO_ROOT / "examples" / "images"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in shipped.iterdir())
    for path in tmp_path.iterdir():
        assert path.read_bytes() == (shipped / path.name).read_bytes(), path.name


def test_a_hard_negative_changes_one_groups_colour_or_count() -> None:
    rng = random.Random(5)
    changes: Counter[str] = Counter()
    for _ in range(300):
        scene = random_scene(rng)
        kinds = scene.kinds()
        altered = parse_caption(altered_caption(scene, rng))
        assert altered is not None and altered != kinds
        gone, new = set(kinds) - set(altered), set(altered) - set(kinds)
        if not gone and not new:
            assert sum(kinds[k] != altered[k] for k in kinds) == 1
            changes["count"] += 1
        else:
            ((old_color, shape),), ((new_color, new_shape),) = gone, new
            assert shape == new_shape and old_color != new_color
            assert kinds[(old_color, shape)] == altered[(new_color, shape)]
            changes["colour"] += 1
    assert min(changes.values()) > 50, changes
