"""A synthetic visual task: coloured shapes on a plain background, questions with known answers.

Every scene, question and answer is drawn from a ``random.Random`` seeded by the caller, so a
seed always gives the same examples. Each question has exactly one right answer: colour and
shape questions are only asked about an object that is unique in the asked respect, and counts
and yes/no questions are facts of the scene. Captions list every object in a canonical order
("two red circles and a blue square") and are judged by the objects they describe.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Literal

from PIL import Image, ImageDraw

Family = Literal["count", "color", "shape", "exist", "caption"]

FAMILIES: tuple[Family, ...] = ("count", "color", "shape", "exist", "caption")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (30, 160, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 200, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
BACKGROUND = (255, 255, 255)
IMAGE_SIZE = 64
MAX_OBJECTS = 4
MIN_SIZE, MAX_SIZE = 12, 22
_MARGIN = 2
_GAP = 2

WORDS: tuple[str, ...] = (
    *COLORS,
    *SHAPES,
    *(f"{shape}s" for shape in SHAPES),
    *NUMBERS,
    *[
        "a",
        "an",
        "and",
        "are",
        "color",
        "how",
        "is",
        "many",
        "object",
        "objects",
        "shape",
        "the",
        "there",
        "what",
        "yes",
        "no",
    ],
)
"""Every word the task's questions, answers and captions use."""

Kind = tuple[str, str]
"""An object's (colour, shape)."""


@dataclass(frozen=True)
class Shape:
    """One object: its colour, shape and bounding box (top-left corner and side, pixels)."""

    color: str
    shape: str
    x: int
    y: int
    size: int

    @property
    def kind(self) -> Kind:
        """``(colour, shape)``."""
        return (self.color, self.shape)


@dataclass(frozen=True)
class Scene:
    """Non-overlapping objects on a plain background."""

    objects: tuple[Shape, ...]

    def kinds(self) -> Counter[Kind]:
        """How many objects there are of each ``(colour, shape)``."""
        return Counter(obj.kind for obj in self.objects)

    def render(self) -> Image.Image:
        """The scene as an RGB image of ``IMAGE_SIZE`` pixels a side."""
        image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
        draw = ImageDraw.Draw(image)
        for obj in self.objects:
            right, bottom = obj.x + obj.size - 1, obj.y + obj.size - 1
            fill = COLORS[obj.color]
            if obj.shape == "circle":
                draw.ellipse((obj.x, obj.y, right, bottom), fill=fill)
            elif obj.shape == "square":
                draw.rectangle((obj.x, obj.y, right, bottom), fill=fill)
            else:
                apex = (obj.x + (obj.size - 1) / 2, obj.y)
                draw.polygon([apex, (obj.x, bottom), (right, bottom)], fill=fill)
        return image


@dataclass(frozen=True)
class Example:
    """A question about a scene (an empty question asks for a caption) and its right answer."""

    scene: Scene
    family: Family
    question: str
    answer: str


def random_scene(rng: random.Random) -> Scene:
    """One to ``MAX_OBJECTS`` objects; colours and shapes come from small pools, so repeats
    (and hence counts above one) are common."""
    count = rng.randint(1, MAX_OBJECTS)
    colors = rng.sample(list(COLORS), rng.randint(1, len(COLORS)))
    shapes = rng.sample(SHAPES, rng.randint(1, len(SHAPES)))
    while True:
        boxes: list[tuple[int, int, int]] = []
        for _ in range(100 * count):
            size = rng.randint(MIN_SIZE, MAX_SIZE)
            x = rng.randint(_MARGIN, IMAGE_SIZE - _MARGIN - size)
            y = rng.randint(_MARGIN, IMAGE_SIZE - _MARGIN - size)
            if all(_apart((x, y, size), box) for box in boxes):
                boxes.append((x, y, size))
                if len(boxes) == count:
                    objects = (Shape(rng.choice(colors), rng.choice(shapes), *box) for box in boxes)
                    return Scene(tuple(objects))


def _apart(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Whether two square boxes are at least ``_GAP`` pixels apart on some axis."""
    (ax, ay, asize), (bx, by, bsize) = a, b
    return (
        ax + asize + _GAP <= bx
        or bx + bsize + _GAP <= ax
        or ay + asize + _GAP <= by
        or by + bsize + _GAP <= ay
    )


def caption(scene: Scene) -> str:
    """The canonical caption: groups in colour then shape order, e.g. "a red circle, two green
    squares and a blue triangle"."""
    return describe(scene.kinds())


def describe(kinds: Counter[Kind]) -> str:
    """The canonical caption of a scene holding ``kinds``."""
    order = sorted(kinds, key=lambda kind: (list(COLORS).index(kind[0]), SHAPES.index(kind[1])))
    parts = [_phrase(kinds[kind], *kind) for kind in order]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _phrase(count: int, color: str, shape: str) -> str:
    return f"a {color} {shape}" if count == 1 else f"{NUMBERS[count]} {color} {shape}s"


def altered_caption(scene: Scene, rng: random.Random) -> str:
    """A hard negative: the scene's caption with one group's colour or count changed.

    The colour changes to one no object of that shape has; the count to another from one to
    ``MAX_OBJECTS``. The result always describes a different set of objects.
    """
    kinds = scene.kinds()
    color, shape = rng.choice(sorted(kinds))
    free = [c for c in COLORS if (c, shape) not in kinds]
    altered = Counter(kinds)
    if free and rng.random() < 0.5:
        altered[(rng.choice(free), shape)] = altered.pop((color, shape))
    else:
        count = kinds[(color, shape)]
        altered[(color, shape)] = rng.choice([n for n in range(1, MAX_OBJECTS + 1) if n != count])
    return describe(altered)


def ask(family: Family, scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """A question of ``family`` about ``scene`` and its answer, or ``None`` if none applies.

    Captions have the empty question. Counts are mostly about an object in the scene, and
    half of the yes/no questions are about one.
    """
    kinds = scene.kinds()
    if family == "caption":
        return "", caption(scene)
    if family == "count":
        color, shape = rng.choice(scene.objects).kind if rng.random() < 0.75 else _any_kind(rng)
        template = rng.randrange(4)
        if template == 0:
            return f"How many {shape}s are there?", NUMBERS[_count(kinds, shape=shape)]
        if template == 1:
            return f"How many {color} objects are there?", NUMBERS[_count(kinds, color=color)]
        if template == 2:
            count = kinds[(color, shape)]
            return f"How many {color} {shape}s are there?", NUMBERS[count]
        return "How many objects are there?", NUMBERS[len(scene.objects)]
    if family == "color":
        only_shape = _unique(kinds, SHAPES, rng, "shape")
        obj = next((o for o in scene.objects if o.shape == only_shape), None)
        return None if obj is None else (f"What color is the {only_shape}?", obj.color)
    if family == "shape":
        only_color = _unique(kinds, list(COLORS), rng, "color")
        obj = next((o for o in scene.objects if o.color == only_color), None)
        return None if obj is None else (f"What shape is the {only_color} object?", obj.shape)
    if rng.random() < 0.5:
        color, shape = rng.choice(scene.objects).kind
    else:
        color, shape = rng.choice(sorted(_all_kinds() - set(kinds)))
    return f"Is there a {color} {shape}?", "yes" if kinds[(color, shape)] else "no"


def _any_kind(rng: random.Random) -> Kind:
    return rng.choice(list(COLORS)), rng.choice(SHAPES)


def _all_kinds() -> set[Kind]:
    return {(color, shape) for color in COLORS for shape in SHAPES}


def _unique(
    kinds: Counter[Kind], values: Sequence[str], rng: random.Random, attribute: str
) -> str | None:
    """One of ``values`` that exactly one object has as its ``attribute`` (None if none)."""
    unique = [v for v in values if _count(kinds, **{attribute: v}) == 1]
    return rng.choice(unique) if unique else None


def _count(kinds: Counter[Kind], color: str | None = None, shape: str | None = None) -> int:
    return sum(
        n
        for (c, s), n in kinds.items()
        if (color is None or c == color) and (shape is None or s == shape)
    )


def examples_for(scene: Scene, rng: random.Random) -> list[Example]:
    """One question of every family that applies to ``scene``, with its answer."""
    asked = ((family, ask(family, scene, rng)) for family in FAMILIES)
    return [Example(scene, family, *pair) for family, pair in asked if pair is not None]


def stream(seed: int, families: Sequence[Family] = FAMILIES) -> Iterator[Example]:
    """An endless, deterministic stream of examples, cycling through ``families`` in turn."""
    rng = random.Random(seed)
    index = 0
    while True:
        family = families[index % len(families)]
        asked = None
        while asked is None:
            scene = random_scene(rng)
            asked = ask(family, scene, rng)
        yield Example(scene, family, *asked)
        index += 1


def sample(seed: int, count: int, families: Sequence[Family] = FAMILIES) -> list[Example]:
    """The first ``count`` examples of :func:`stream` for ``seed``: equal shares per family."""
    return list(islice(stream(seed, families), count))


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding whitespace or trailing punctuation."""
    return " ".join(text.lower().split()).rstrip(".!?").strip()


_PART = re.compile(rf"(a|an|{'|'.join(NUMBERS[1:])}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})(s?)")
_SEPARATOR = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+")


def parse_caption(text: str) -> Counter[Kind] | None:
    """The objects a caption describes, as counts per ``(colour, shape)``; ``None`` if it does
    not parse (unknown words, or a count that disagrees with the noun's number)."""
    described: Counter[Kind] = Counter()
    for part in _SEPARATOR.split(normalize(text)):
        match = _PART.fullmatch(part)
        if match is None:
            return None
        word, color, shape, plural = match.groups()
        count = 1 if word in ("a", "an") else NUMBERS.index(word)
        if (count > 1) != bool(plural):
            return None
        described[(color, shape)] += count
    return described


def judge(example: Example, prediction: str) -> bool:
    """Captions are right when they describe exactly the scene's objects (in any order);
    other answers must match exactly after :func:`normalize`."""
    if example.family == "caption":
        return parse_caption(prediction) == example.scene.kinds()
    return normalize(prediction) == normalize(example.answer)
