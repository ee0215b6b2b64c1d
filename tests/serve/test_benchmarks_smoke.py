"""The benchmark harness runs end to end on a tiny setting and writes its JSON and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.serving import REPO_ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_batching_scenario_writes_its_results(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "benchmarks.run", "batching", "--quick"]
    finished = subprocess.run(
        [*command, "--results", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    result = json.loads((tmp_path / "batching.json").read_text())
    assert [point["max_batch_size"] for point in result["points"]] == [1, 4]
    for point in result["points"]:
        assert point["ok"] > 0
        assert set(point["statuses"]) == {"200"}
        assert point["batch_sizes"]
    assert (tmp_path / "batching.png").read_bytes().startswith(PNG_MAGIC)
