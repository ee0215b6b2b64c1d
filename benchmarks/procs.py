"""Processes of this benchmark's own Ray (found by ancestry, never by name alone) and CPU time.

Linux only: reads ``/proc``.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` fields from the state on (the command name may hold spaces)."""
    text = (PROC / str(pid) / "stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _parent(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def _title(pid: int) -> str:
    return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def descendants(title_prefix: str, root: int | None = None) -> list[int]:
    """Processes below ``root`` (this process by default) whose title starts with the prefix.

    Ray names its workers ``ray::<actor>``, e.g. ``ray::ServeReplica:blip2:Blip2Server``.
    """
    root = os.getpid() if root is None else root
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            title = _title(pid)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        if title.startswith(title_prefix) and in_tree(pid, root):
            found.append(pid)
    return sorted(found)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far, all threads."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """Every readable process: its name and the CPU seconds it has used."""
    found = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                name = (entry / "comm").read_text().strip()
                found[int(entry.name)] = (name, cpu_seconds(int(entry.name)))
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
    return found


def in_tree(pid: int, root: int | None = None) -> bool:
    """Whether ``pid`` is ``root`` (this process by default) or runs below it."""
    root = os.getpid() if root is None else root
    try:
        while pid > 1 and pid != root:
            pid = _parent(pid)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False
    return pid == root
