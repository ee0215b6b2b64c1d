"""mypy over the project, started early and niced, so it runs while other tests wait.

A fresh machine has no mypy cache, and a cold run takes most of a minute of one core: started
when the suite's collection finishes, at the lowest priority, it takes CPU only when the
tests leave it idle (waiting on Ray, on deadlines, on replicas starting).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "mypy"]
NICE = ["nice", "-n", "19"] if shutil.which("nice") else []
TIMEOUT_S = 900

_running: subprocess.Popen[str] | None = None


def start() -> None:
    """Start mypy in the background (once)."""
    global _running
    if _running is None:
        _running = subprocess.Popen(
            [*NICE, *COMMAND],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


def result() -> tuple[int, str]:
    """mypy's exit status and output (starting it now if it was not started)."""
    start()
    assert _running is not None
    output, _ = _running.communicate(timeout=TIMEOUT_S)
    return _running.returncode, output
