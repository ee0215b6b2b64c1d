"""The benchmark harness runs end to end on a tiny setting and writes its JSON and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.serving import REPO_ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_baseline_scenario_writes_its_results(tmp_path: Path) -> None:
    """The scenario behind the README's table (quick: the single-process server, the service
    and Serve's floor, at 1 and 16 clients)."""
    command = [sys.executable, "-m", "benchmarks.run", "baseline", "--quick"]
    finished = subprocess.run(
        [*command, "--results", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    result = json.loads((tmp_path / "baseline.json").read_text())
    measured = {(p["server"], p["concurrency"]) for p in result["points"]}
    servers = {server for server, _ in measured}
    assert len(servers) == 3 and measured == {(s, c) for s in servers for c in (1, 16)}
    for point in result["points"]:
        assert point["ok"] > 0 and set(point["statuses"]) == {"200"}
        cpu = point["cpu_ms_per_request"]
        processes = {"baseline"} if "baseline" in cpu else {"proxy", "ingress", "model"}
        assert all(cpu[name] > 0 for name in processes), point
    demo = result["headline"]["demo model"]
    assert demo["16 clients, throughput vs baseline"] > 0
    assert "16 clients, model replica CPU ms per request outside generate" in demo
    assert (tmp_path / "baseline.png").read_bytes().startswith(PNG_MAGIC)
