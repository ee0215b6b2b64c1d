"""ruff (lint and format) and mypy over the project, as part of the test suite (mypy runs in
the background from the start: ``tests/support/type_check.py``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import type_check
from tests.support.serving import REPO_ROOT

CHECKS = {
    "ruff lint": [
        sys.executable,
        "-m",
        "ruff",
        "check",
        "serve_app",
        "tests",
        "examples",
        "benchmarks",
        "proto",
    ],
    "ruff format": [
        sys.executable,
        "-m",
        "ruff",
        "format",
        "--check",
        "serve_app",
        "tests",
        "examples",
        "benchmarks",
        "proto",
    ],
    "mypy": type_check.COMMAND,
}


@pytest.mark.parametrize("command", CHECKS.values(), ids=CHECKS.keys())
def test_code_quality(command: list[str]) -> None:
    if command is type_check.COMMAND:  # started in the background when collection finished
        returncode, output = type_check.result()
        assert returncode == 0, output
        return
    finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr
