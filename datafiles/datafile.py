"""Read and validate a user's uploaded data file (CSV, NPZ or Parquet).

The API calls `inspect()` on upload: it streams the file once in bounded memory (CSV blocks,
Parquet batches, NPZ chunks), refuses anything training would choke on with a one-line `DataError`,
and returns a `DataSummary` that is stored with the dataset. The worker later calls `load()` with
that summary; both go through the same readers and per-column conversions, so a column the
summary calls categorical is read as strings even where part of the file looks numeric.

This module detects the format and dispatches; the work is done by `storage.tabular` (CSV and
Parquet), `storage.npzfile` (NPZ) and `storage.columns` (per-column conversions and statistics),
which share `storage.datacheck` (formats, limits, `DataError`, `Table`).
"""

from __future__ import annotations

from typing import BinaryIO, cast

from droptune.core.schemas import DataSummary
from droptune.datafiles.datacheck import (
    FORMATS,
    TASKS,
    DataError,
    Format,
    Kind,
    Limits,
    Table,
    Task,
    Tuning,
)
from droptune.datafiles.npzfile import inspect_npz, load_npz
from droptune.datafiles.tabular import inspect_tabular, load_tabular

__all__ = [
    "CSV_BLOCK_SIZE",
    "FORMATS",
    "MAX_INFERRED_CLASSES",
    "NPZ_CHUNK_BYTES",
    "PARQUET_BATCH_CELLS",
    "TASKS",
    "DataError",
    "Format",
    "Kind",
    "Limits",
    "Table",
    "Task",
    "detect_format",
    "inspect",
    "load",
]

# The tunables are read from this module when each call starts (see `_tuning`), so a test that
# patches one here changes what the readers in storage.tabular and storage.npzfile do.

# Bytes of CSV text parsed at a time; module-level so tests can make a small file span blocks.
CSV_BLOCK_SIZE = 1 << 20
# Cells per Parquet batch: rows per batch shrink as the table widens, so memory does not grow.
PARQUET_BATCH_CELLS = 1 << 20
# Bytes of an NPZ array decompressed at a time while inspect() checks its values.
NPZ_CHUNK_BYTES = 1 << 23
# A numeric target with at most this many distinct whole values is taken for class labels.
MAX_INFERRED_CLASSES = 50

_UTF8_BOM = b"\xef\xbb\xbf"
# C0 control bytes that plain text may contain (tab, newlines, vertical tab, form feed).
_TEXT_CONTROLS = frozenset(b"\t\n\r\x0b\x0c")


# --------------------------------------------------------------------------- format detection


def detect_format(filename: str | None, head: bytes) -> str:
    """The file's format from its first bytes; the filename only makes messages clearer."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "npz"
    if head.startswith(b"PAR1"):
        return "parquet"
    name = repr(filename) if filename else "the file"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{name} is UTF-16 text: save the CSV file as UTF-8")
    text = head.removeprefix(_UTF8_BOM)
    if any(b < 0x20 and b not in _TEXT_CONTROLS for b in text):
        ext = filename.rsplit(".", 1)[-1].lower() if filename and "." in filename else ""
        hint = f" (its content does not match its .{ext} extension)" if ext in FORMATS else ""
        raise DataError(f"{name} is not a CSV, NPZ or Parquet file{hint}")
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as e:
        # The head may end inside a multi-byte character; only a bad byte before that counts.
        if not (e.reason == "unexpected end of data" and len(text) - e.start < 4):
            raise DataError(
                f"{name} is not UTF-8 text (byte 0x{text[e.start]:02X} at offset {e.start}): "
                "save the CSV file as UTF-8"
            ) from None
    return "csv"


def _check_options(fmt: str, task: str | None) -> tuple[Format, Task | None]:
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if task is not None and task not in TASKS:
        raise DataError(f"unknown task {task!r}: expected 'classification' or 'regression'")
    return cast(Format, fmt), cast("Task | None", task)


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
    form, wanted = _check_options(fmt, task)
    if form == "npz":
        return inspect_npz(f, target, wanted, limits, _tuning())
    return inspect_tabular(f, form, target, wanted, limits, _tuning())


def load(f: BinaryIO, summary: DataSummary) -> Table:
    """Reads the whole file for training, the way inspect() read it for `summary`."""
    if summary.format == "npz":
        return load_npz(f, summary)
    return load_tabular(f, summary, _tuning())
