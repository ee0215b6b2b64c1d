"""The rows a bulk job writes, and what an output folder already holds.

One row per input image: its id, the input it came from, the task, the answer (text or vector),
token usage, and an error code and message when it failed. Parquet files are written as blocks
finish; a file cut short by a crash has no footer, cannot be read, and is removed, so its rows
are done again.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs

logger = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("input", pa.string()),
        ("task", pa.string()),
        ("text", pa.string()),
        ("embedding", pa.list_(pa.float32())),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
    ]
)
"""Every output file's columns (``text`` for captions and answers, ``embedding`` for vectors;
``error_code`` set means the row failed)."""


def result_row(
    row_id: str,
    source: str,
    task: str,
    *,
    text: str | None = None,
    embedding: list[float] | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    error: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """One output row (``error``: its code and message)."""
    code, message = error if error is not None else (None, None)
    return {
        "id": row_id,
        "input": source,
        "task": task,
        "text": text,
        "embedding": embedding,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "error_code": code,
        "error_message": message,
    }


@dataclass
class OutputState:
    """What an output folder holds: the ids written and the failures among them."""

    ids: set[str] = field(default_factory=set)
    failures: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    removed_files: list[str] = field(default_factory=list)


def read_output(filesystem: fs.FileSystem, folder: str) -> OutputState:
    """The ids and error codes of every readable Parquet file under ``folder``.

    A file that cannot be read (cut short by a crash) is removed: its rows are not done.
    """
    state = OutputState()
    info = filesystem.get_file_info(folder)
    if info.type == fs.FileType.NotFound:
        return state
    selector = fs.FileSelector(folder, recursive=True)
    for entry in filesystem.get_file_info(selector):
        if entry.type != fs.FileType.File or not entry.path.endswith(".parquet"):
            continue
        try:
            table = pq.read_table(entry.path, columns=["id", "error_code"], filesystem=filesystem)
        except (OSError, pa.ArrowInvalid) as exc:
            logger.warning("removing %s, an unfinished file (%s)", entry.path, exc)
            filesystem.delete_file(entry.path)
            state.removed_files.append(entry.path)
            continue
        state.rows += table.num_rows
        state.ids.update(table.column("id").to_pylist())
        state.failures.update(code for code in table.column("error_code").to_pylist() if code)
    return state
