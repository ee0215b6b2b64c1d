"""Where the CPU goes: py-spy samples of the serving processes, sorted into named kinds of work.

``py-spy record --format raw`` writes folded stacks (``frame;frame;... count``; speedscope
opens them too). Each stack is put in the first category whose marker it contains; stacks
without Python frames are Ray's native threads (RPC, object transfer). Idle threads are not
sampled, so shares are shares of the process's busy time.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("image resize + normalise (model processor)", ("InputBuilder.prepare",)),
    ("generate (vision, Q-Former, language model)", ("Blip2Model._run (",)),
    ("image resize to the model input", ("fit_to_model_input",)),
    ("image decode (PNG/JPEG to RGB)", ("decode_image", "_decode_data")),
    ("request body (read, JSON, validation)", ("serve_app/http/body.py",)),
    (
        "HTTP (uvicorn, Starlette, FastAPI)",
        ("uvicorn/", "starlette/", "fastapi/", "serve_app/http/metrics.py"),
    ),
    (
        "serialise / send / receive across Ray",
        ("serialization.py", "pickle", "Pickler", "ActorHandle", "ActorMethod", "ObjectRef"),
    ),
    ("Serve runtime (routing, batching, metrics, logs)", ("ray/serve/", "logging/")),
    ("Ray core worker loop", ("Worker.main_loop",)),
    ("thread pools, event loops (scheduling, waits)", ("threading.py", "asyncio/", "concurrent/")),
)
NATIVE = "Ray native threads (RPC, object transfer)"
OTHER = "other"


def start_recording(pid: int, duration_s: float, output: Path) -> subprocess.Popen[bytes]:
    """Start py-spy on ``pid`` for ``duration_s`` seconds, 100 samples a second, non-blocking."""
    command = [
        "py-spy",
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(duration_s))),
        "--rate",
        "100",
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(output),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def categorise(stack: str) -> str:
    """The category of one folded stack."""
    if not stack.strip():
        return NATIVE
    for name, markers in CATEGORIES:
        if any(marker in stack for marker in markers):
            return name
    return OTHER


def shares(folded: Path) -> dict[str, float]:
    """Each category's share (0-1) of the samples in a folded-stack file."""
    samples: Counter[str] = Counter()
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            samples[categorise(stack)] += int(count)
    total = sum(samples.values())
    return {name: count / total for name, count in samples.most_common()} if total else {}
