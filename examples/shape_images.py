"""Write example images of the demo model's shapes task, with questions and right answers.

    python examples/shape_images.py examples/images

Writes ``shapes-1.png``, ``shapes-2.png``, ... and ``answers.json``: for each image, its caption
and a question of every other family that applies, each with its one right answer.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from serve_app.demo.task import caption, examples_for, random_scene

SEED = 7
COUNT = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("folder", type=Path, help="where to write the images and answers.json")
    folder = parser.parse_args().folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    answers: dict[str, dict[str, object]] = {}
    while len(answers) < COUNT:
        scene = random_scene(rng)
        if len(scene.objects) < 2:
            continue
        name = f"shapes-{len(answers) + 1}.png"
        scene.render().save(folder / name)
        questions = {e.question: e.answer for e in examples_for(scene, rng) if e.question}
        answers[name] = {"caption": caption(scene), "questions": questions}
    (folder / "answers.json").write_text(json.dumps(answers, indent=2) + "\n")


if __name__ == "__main__":
    main()
