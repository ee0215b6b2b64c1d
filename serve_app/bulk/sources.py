"""Where a bulk job's images come from: a folder or glob of image files, or a Parquet or CSV
table with an id column and an image column (bytes, a path or a URL), on any filesystem pyarrow
reads (local, ``s3://``, ``gs://``, ...).

Every source becomes a Ray Dataset of ``id``, ``input`` (where the image came from), ``image``
(its bytes, or null when ``input`` is a path or URL to read later) and ``question`` (null unless
the table has a question column), without the ids an earlier run already wrote.
"""

from __future__ import annotations

import fnmatch
import functools
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pa_dataset
import ray.data
from pyarrow import fs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")
TABLE_FORMATS = {".parquet": "parquet", ".csv": "csv"}
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Source:
    """A bulk job's input.

    Args:
        location: A folder, a glob (``photos/**/*.jpg``) or a table file, local or a URI.
        table_format: ``parquet`` or ``csv`` for a table; guessed from the suffix if unset.
        id_column / image_column / question_column: The table's columns.
    """

    location: str
    table_format: str | None = None
    id_column: str = "id"
    image_column: str = "image"
    question_column: str | None = None

    @property
    def format(self) -> str | None:
        """``parquet``, ``csv``, or None for image files."""
        if self.table_format is not None:
            return self.table_format
        suffix = posixpath.splitext(self.location.rstrip("/"))[1].lower()
        return TABLE_FORMATS.get(suffix)


def filesystem_of(location: str) -> tuple[fs.FileSystem, str]:
    """The pyarrow filesystem of ``location`` and the path on it."""
    if "://" in location:
        filesystem, path = fs.FileSystem.from_uri(location)
        return filesystem, path
    local = fs.LocalFileSystem()
    return local, posixpath.abspath(location)


def image_files(filesystem: fs.FileSystem, location: str) -> tuple[str, list[str]]:
    """The folder ids are relative to, and every image file of a folder or glob, sorted
    (a glob's ``*`` matches across folders too)."""
    parts = location.split("/")
    wild = [i for i, part in enumerate(parts) if any(char in part for char in _GLOB_CHARS)]
    glob = bool(wild)
    base = ("/".join(parts[: wild[0]]) or "/") if glob else location
    selector = fs.FileSelector(base, recursive=True)
    files = [
        entry.path
        for entry in filesystem.get_file_info(selector)
        if entry.type == fs.FileType.File and entry.path.lower().endswith(IMAGE_SUFFIXES)
    ]
    if glob:
        files = [path for path in files if fnmatch.fnmatch(path, location)]
    return base, sorted(files)


def read_source(
    source: Source, done: set[str], cpus: float, rows_per_block: int
) -> ray.data.Dataset | None:
    """The rows still to do, as a Dataset (None: nothing left), read by tasks of ``cpus``.

    Blocks hold ``rows_per_block`` rows (a Parquet table's row groups and a CSV file are not
    split further), so each output file is written as soon as its rows are answered.
    """
    filesystem, path = filesystem_of(source.location)
    if source.format is None:
        return _image_files(filesystem, path, source.location, done, cpus, rows_per_block)
    return _table(filesystem, path, source, done, cpus, rows_per_block)


def _image_files(
    filesystem: fs.FileSystem,
    path: str,
    location: str,
    done: set[str],
    cpus: float,
    rows_per_block: int,
) -> ray.data.Dataset | None:
    base, files = image_files(filesystem, path)
    if not files:
        raise FileNotFoundError(f"no image files in {location}")
    todo = [file for file in files if posixpath.relpath(file, base) not in done]
    if not todo:
        return None
    scheme = location.split("://")[0] + "://" if "://" in location else ""
    dataset = ray.data.read_binary_files(
        todo,
        include_paths=True,
        filesystem=filesystem,
        num_cpus=cpus,
        override_num_blocks=max(1, len(todo) // rows_per_block),
    )
    to_rows = functools.partial(_files_to_rows, base=base, scheme=scheme)
    return dataset.map_batches(to_rows, batch_format="pyarrow", num_cpus=cpus)


def _files_to_rows(batch: pa.Table, base: str, scheme: str) -> pa.Table:
    paths = batch.column("path").to_pylist()
    return pa.table(
        {
            "id": [posixpath.relpath(p, base) for p in paths],
            "input": [scheme + p for p in paths],
            "image": batch.column("bytes").cast(pa.binary()),
            "question": pa.nulls(len(paths), pa.string()),
        }
    )


def _table(
    filesystem: fs.FileSystem,
    path: str,
    source: Source,
    done: set[str],
    cpus: float,
    rows_per_block: int,
) -> ray.data.Dataset:
    columns = [source.id_column, source.image_column]
    if source.question_column:
        columns.append(source.question_column)
    dataset: ray.data.Dataset
    if source.format == "parquet":
        rows = pa_dataset.dataset(path, filesystem=filesystem, format="parquet").count_rows()
        dataset = ray.data.read_parquet(
            path,
            filesystem=filesystem,
            columns=columns,
            num_cpus=cpus,
            override_num_blocks=max(1, rows // rows_per_block),
        )
    else:
        dataset = ray.data.read_csv(path, filesystem=filesystem, num_cpus=cpus)
    folder = source.location.rsplit("/", 1)[0] if "/" in source.location else "."
    to_rows = functools.partial(_table_to_rows, source=source, folder=folder, done=list(done))
    return dataset.map_batches(to_rows, batch_format="pyarrow", num_cpus=cpus)


def _table_to_rows(batch: pa.Table, source: Source, folder: str, done: list[str]) -> pa.Table:
    ids = pc.cast(batch.column(source.id_column), pa.string())
    keep = pc.invert(pc.is_in(ids, value_set=pa.array(done, pa.string())))
    batch, ids = batch.filter(keep), ids.filter(keep)
    images = batch.column(source.image_column)
    rows = len(ids)
    if pa.types.is_binary(images.type) or pa.types.is_large_binary(images.type):
        inputs = pa.array([source.location] * rows, pa.string())
        data = pc.cast(images, pa.binary())
    else:
        references = [_resolve(str(ref), folder) for ref in images.to_pylist()]
        inputs, data = pa.array(references, pa.string()), pa.nulls(rows, pa.binary())
    question = (
        pc.cast(batch.column(source.question_column), pa.string())
        if source.question_column
        else pa.nulls(rows, pa.string())
    )
    return pa.table({"id": ids, "input": inputs, "image": data, "question": question})


def _resolve(reference: str, folder: str) -> str:
    """A URL or absolute path as it is; a relative path from the table's folder."""
    if "://" in reference or reference.startswith("/"):
        return reference
    return posixpath.join(folder, reference)
