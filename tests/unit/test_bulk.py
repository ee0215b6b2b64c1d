"""The bulk job's pure parts: listing image files, turning table rows into work, reading what an
output already holds (removing a file a crash cut short), and which errors are retried."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs
from ray.exceptions import ActorDiedError

from serve_app.bulk.caller import _code, _retryable
from serve_app.bulk.results import SCHEMA, read_output, result_row
from serve_app.bulk.sources import Source, _table_to_rows, image_files
from serve_app.contract.errors import ImageFetchError, InvalidImageError, ModelOverloadedError


def test_a_folder_is_searched_recursively_and_a_glob_filters_it(tmp_path: Path) -> None:
    for name in ("a.png", "b.JPG", "nested/c.png", "nested/deep/d.webp", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    local = fs.LocalFileSystem()
    base, files = image_files(local, str(tmp_path))
    assert base == str(tmp_path)
    relative = [Path(f).relative_to(tmp_path).as_posix() for f in files]
    assert relative == ["a.png", "b.JPG", "nested/c.png", "nested/deep/d.webp"]
    base, files = image_files(local, f"{tmp_path}/nested/*.png")
    assert base == f"{tmp_path}/nested"
    assert [Path(f).name for f in files] == ["c.png"]


def test_table_rows_skip_done_ids_and_resolve_paths_from_the_tables_folder() -> None:
    batch = pa.table(
        {
            "key": [1, 2, 3],
            "picture": ["one.png", "/abs/two.png", "https://example.com/three.png"],
            "ask": ["a?", "b?", "c?"],
        }
    )
    source = Source(
        "data/table.csv", id_column="key", image_column="picture", question_column="ask"
    )
    rows = _table_to_rows(batch, source, "data", done=["2"]).to_pylist()
    assert [row["id"] for row in rows] == ["1", "3"]
    assert [row["input"] for row in rows] == ["data/one.png", "https://example.com/three.png"]
    assert [row["question"] for row in rows] == ["a?", "c?"]
    assert all(row["image"] is None for row in rows)


def test_table_rows_of_bytes_carry_the_bytes() -> None:
    batch = pa.table({"id": ["x"], "image": pa.array([b"\x89PNG"], pa.binary())})
    (row,) = _table_to_rows(batch, Source("t.parquet"), ".", done=[]).to_pylist()
    assert (row["id"], row["input"], row["image"], row["question"]) == (
        "x",
        "t.parquet",
        b"\x89PNG",
        None,
    )


def test_the_output_state_counts_ids_and_failures_and_drops_unfinished_files(
    tmp_path: Path,
) -> None:
    rows = [
        result_row("a", "a.png", "caption", text="a red square", completion_tokens=3),
        result_row("b", "b.png", "caption", error=("invalid_image", "not an image")),
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp_path / "done.parquet")
    whole = (tmp_path / "done.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(whole[: len(whole) // 2])
    state = read_output(fs.LocalFileSystem(), str(tmp_path))
    assert (state.ids, state.rows, dict(state.failures)) == ({"a", "b"}, 2, {"invalid_image": 1})
    assert state.removed_files == [str(tmp_path / "cut.parquet")]
    assert not (tmp_path / "cut.parquet").exists()
    assert read_output(fs.LocalFileSystem(), str(tmp_path / "absent")).rows == 0


def test_busy_or_lost_service_is_retried_and_bad_images_are_not() -> None:
    assert _retryable(ModelOverloadedError("busy"))
    assert _retryable(ActorDiedError())
    assert not _retryable(InvalidImageError("corrupt"))
    assert not _retryable(ImageFetchError("refused"))
    assert not _retryable(FileNotFoundError("missing.png"))
    assert _code(InvalidImageError("corrupt")) == "invalid_image"
    assert _code(ActorDiedError()) == "service_unavailable"
    assert _code(FileNotFoundError("missing.png")) == "input_unreadable"
    assert _code(ValueError("no question")) == "invalid_request"
