"""Read and validate a user's uploaded data file (CSV, NPZ or Parquet).

The API calls `inspect()` on upload: it streams the file once in bounded memory (CSV blocks,
Parquet batches, NPZ chunks), refuses anything training would choke on with a one-line `DataError`,
and returns a `DataSummary` that is stored with the dataset. The worker later calls `load()` with
that summary; both go through the same readers and per-column conversions, so a column the
summary calls categorical is read as strings even where part of the file looks numeric.

This module dispatches through the registry of `datafiles.formats` (one module a format:
`datafiles.csvfile`, `datafiles.parquetfile`, `datafiles.npzfile`); CSV and Parquet share the
streaming of `datafiles.tabular`, and every format the helpers of `datafiles.datacheck` (limits,
`DataError`, `Table`) and `datafiles.columns` (per-column conversions and statistics).
"""

from __future__ import annotations

from typing import BinaryIO, cast

from droptune.core.schemas import DataSummary
from droptune.datafiles.datacheck import TASKS, DataError, Kind, Limits, Table, Task, Tuning
from droptune.datafiles.formats import FORMATS, DataFormat

__all__ = [
    "CSV_BLOCK_SIZE",
    "FORMATS",
    "MAX_INFERRED_CLASSES",
    "NPZ_CHUNK_BYTES",
    "PARQUET_BATCH_CELLS",
    "TASKS",
    "DataError",
    "Kind",
    "Limits",
    "Table",
    "Task",
    "detect_format",
    "inspect",
    "load",
]

# The tunables are read from this module when each call starts (see `_tuning`), so a test that
# patches one here changes what the format modules' readers do.

# Bytes of CSV text parsed at a time; module-level so tests can make a small file span blocks.
CSV_BLOCK_SIZE = 1 << 20
# Cells per Parquet batch: rows per batch shrink as the table widens, so memory does not grow.
PARQUET_BATCH_CELLS = 1 << 20
# Bytes of an NPZ array decompressed at a time while inspect() checks its values.
NPZ_CHUNK_BYTES = 1 << 23
# A numeric target with at most this many distinct whole values is taken for class labels.
MAX_INFERRED_CLASSES = 50


# --------------------------------------------------------------------------- format detection


def detect_format(filename: str | None, head: bytes) -> str:
    """The file's format from its first bytes; the filename only makes messages clearer."""
    for fmt in reversed(FORMATS.values()):  # the most specific first (see datafiles.formats)
        if fmt.detect(head):
            return fmt.name
    name = repr(filename) if filename else "the file"
    for fmt in FORMATS.values():
        why = fmt.refuse(head)
        if why is not None:
            raise DataError(f"{name} {why}")
    ext = filename.rsplit(".", 1)[-1].lower() if filename and "." in filename else ""
    hint = f" (its content does not match its .{ext} extension)" if ext in FORMATS else ""
    *others, last = [f.label for f in FORMATS.values()]
    labels = f"{', '.join(others)} or {last}" if others else last
    raise DataError(f"{name} is not a {labels} file{hint}")


def _format(fmt: str) -> DataFormat:
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return FORMATS[fmt]


def _check_task(task: str | None) -> Task | None:
    if task is not None and task not in TASKS:
        raise DataError(f"unknown task {task!r}: expected 'classification' or 'regression'")
    return cast("Task | None", task)


def _tuning() -> Tuning:
    """This module's tunables as they are now."""
    return Tuning(
        csv_block_size=CSV_BLOCK_SIZE,
        parquet_batch_cells=PARQUET_BATCH_CELLS,
        npz_chunk_bytes=NPZ_CHUNK_BYTES,
        max_inferred_classes=MAX_INFERRED_CLASSES,
    )


# --------------------------------------------------------------------------- public entry points


def inspect(
    f: BinaryIO,
    fmt: str,
    *,
    target: str | None = None,
    task: str | None = None,
    limits: Limits = Limits(),
) -> DataSummary:
    """Validates the whole file in bounded memory and summarises it; raises DataError."""
    form, wanted = _format(fmt), _check_task(task)
    # The raw bytes first: a parser could cost far more than the file before any check ran.
    form.check_raw(f, limits)
    return form.inspect(f, target, wanted, limits, _tuning())


def load(f: BinaryIO, summary: DataSummary) -> Table:
    """Reads the whole file for training, the way inspect() read it for `summary`."""
    return _format(summary.format).load(f, summary, _tuning())
