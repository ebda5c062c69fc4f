"""The tabular readers: CSV and Parquet files streamed in bounded batches.

Both formats open as a `_Source` (column names, how each column is read, record batches);
`inspect_tabular` feeds the batches to the column and target statistics of `storage.columns`,
and `load_tabular` reads them into a DataFrame the way the stored summary says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from droptune.core.schemas import DataSummary
from droptune.datafiles.columns import Chunk, ColumnStats, TargetStats, encode_target, to_chunk
from droptune.datafiles.datacheck import (
    DataError,
    Format,
    How,
    Kind,
    Limits,
    Table,
    Task,
    Tuning,
    changed,
    check_cells,
    snip,
    some,
    to_number,
)
from droptune.datafiles.rawcheck import check_csv_header, check_parquet_footer, scan_csv_header


@dataclass
class _Source:
    """A tabular file opened for streaming: its columns and an iterator of record batches."""

    names: list[str]
    hows: list[How]
    rows: int | None  # known before reading for Parquet
    batches: Iterator[Any]
    unpacked: int  # bytes of the values decompressed: the file's size for CSV


def _check_names(names: list[str], what: str) -> None:
    empty = [str(i + 1) for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise DataError(f"the {what} has empty column names (column {', '.join(empty[:5])})")
    counts = Counter(names)
    dupes = sorted(n for n, k in counts.items() if k > 1)
    if dupes:
        raise DataError(f"the {what} has duplicate column names: {some(dupes)}")


def _csv_error(exc: Exception, bad: list[Any]) -> DataError:
    if bad:
        row = bad[-1]
        where = f"row {row.number} (counting the header)" if row.number else "a row"
        return DataError(
            f"CSV {where} has {row.actual_columns} fields but the header has "
            f"{row.expected_columns}: {snip(row.text)}"
        )
    msg = str(exc)
    if isinstance(exc, UnicodeDecodeError) or "UTF8" in msg:
        return DataError("the CSV file is not UTF-8 text: save it as UTF-8")
    if "Empty CSV file" in msg:
        return DataError("the CSV file is empty: it needs a header row and data rows")
    return DataError(f"the CSV file could not be parsed: {snip(msg, 200)}")


# A Parquet column chunk may decompress to at most this, or 8x the file if that is more.
PARQUET_MAX_CHUNK_BYTES = 64 << 20


def _csv_reader(
    f: BinaryIO, names: list[str] | None, bad: list[Any], block_size: int, scale: int = 1
) -> Any:
    def on_bad_row(row: Any) -> str:
        bad.append(row)
        return "error"

    f.seek(0)
    # One thread: pyarrow then knows the row number of a ragged row.
    # Each column of each block costs a fixed overhead, so wide files get larger blocks
    # (up to 8x): fewer, larger batches for the same bounded memory per row.
    if names is not None:
        scale = min(8, max(1, len(names) // 64))
    read = pacsv.ReadOptions(block_size=block_size * scale, use_threads=False)
    parse = pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_bad_row)
    if names is None:
        return pacsv.open_csv(f, read_options=read, parse_options=parse)
    # Every column as text: whether a column is numeric is decided over the whole file,
    # not by pyarrow's guess from the first block.
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names}, strings_can_be_null=True
    )
    return pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)


def _csv_batches(f: BinaryIO, names: list[str], bad: list[Any], block_size: int) -> Iterator[Any]:
    try:
        reader = _csv_reader(f, names, bad, block_size)
        yield from reader
    except (pa.ArrowException, UnicodeDecodeError) as e:
        raise _csv_error(e, bad) from None


def _open_csv(f: BinaryIO, block_size: int, limits: Limits | None) -> _Source:
    bad: list[Any] = []
    # pyarrow infers every column of the header at ~1 KB a byte of it (a 12 MB header took
    # 9 GB): the header's columns are counted on the raw bytes first, and refused past the limit.
    # Without limits (a worker loading a file inspect() passed) only the header's length counts.
    if limits is None:
        header = scan_csv_header(f, 1 << 62, 1 << 62).length
    else:
        header = check_csv_header(f, limits)
    # A header longer than a block (thousands of long names) would read as "empty": the block
    # must hold the whole first line. Sized once, before pyarrow opens the file: a reader given
    # up on keeps reading ahead from the same file in the background, so a second attempt could
    # see its bytes interleaved (a header cut short, seen under load). Not larger than needed:
    # pyarrow reads ahead several blocks, and on a narrow file that would cost the API ~100 MB.
    scale = next((s for s in (1, 8, 64) if block_size * s > header), 64)
    try:
        names = [str(n) for n in _csv_reader(f, None, bad, block_size, scale).schema.names]
    except (pa.ArrowException, UnicodeDecodeError) as e:
        raise _csv_error(e, bad) from None
    for sep, what in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
        if len(names) == 1 and sep in names[0]:
            raise DataError(
                f"the CSV header is one column, {snip(names[0])}, separated by {what}: droptune "
                "reads comma-separated CSV; save the file with commas"
            )
    _check_names(names, "CSV header")
    batches = _csv_batches(f, names, bad, block_size)
    return _Source(names, ["text"] * len(names), None, batches, f.seek(0, 2))


def _parquet_how(name: str, t: Any) -> How:
    types = pa.types
    if types.is_integer(t) or types.is_floating(t) or types.is_decimal(t):
        return "number"
    if types.is_boolean(t):
        return "bool"
    if types.is_string(t) or types.is_large_string(t) or types.is_string_view(t):
        return "string"
    if types.is_dictionary(t):
        v = t.value_type
        if types.is_string(v) or types.is_large_string(v) or types.is_integer(v):
            return "string"
    raise DataError(
        f"column {name!r} has Parquet type {t}, which is not supported: "
        "use numbers, booleans or strings"
    )


def _parquet_batches(pf: Any, names: list[str], batch_cells: int) -> Iterator[Any]:
    per_batch = max(1, batch_cells // max(1, len(names)))
    try:
        yield from pf.iter_batches(batch_size=per_batch, columns=names)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"the Parquet file could not be read: {e}") from None
    finally:
        pf.close()


def _check_parquet_sizes(pf: Any, f: BinaryIO) -> int:
    """Refuse column chunks that decompress to far more than the file: reading one page of such
    a chunk could need that memory (a small file must not cost the API gigabytes). Returns the
    bytes all the chunks decompress to."""
    f.seek(0, 2)
    limit = max(PARQUET_MAX_CHUNK_BYTES, 8 * f.tell())
    md = pf.metadata
    total = 0
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for j in range(rg.num_columns):
            col = rg.column(j)
            total += col.total_uncompressed_size
            if col.total_uncompressed_size > limit:
                raise DataError(
                    f"Parquet column {col.path_in_schema!r} decompresses to "
                    f"{col.total_uncompressed_size / 2**20:.0f} MB in row group {g}, more than "
                    f"{limit / 2**20:.0f} MB: write the file with smaller row groups"
                )
    return total


def _open_parquet(f: BinaryIO, batch_cells: int, limits: Limits | None) -> _Source:
    # pyarrow parses the whole footer at ~11x its bytes: its length and column count first.
    if limits is not None:
        check_parquet_footer(f, limits)
    f.seek(0)
    try:
        # By default a row group's column chunks are read whole; a buffered stream reads them
        # piecewise, so one large row group does not fill memory.
        pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20)
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"the file is not a valid Parquet file: {e}") from None
    # pandas stores a non-default index as an extra column; it is not data.
    meta = schema.pandas_metadata or {}
    index = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
    names = [str(n) for n in schema.names if n not in index]
    _check_names(names, "Parquet file")
    unpacked = _check_parquet_sizes(pf, f)
    hows = [_parquet_how(n, schema.field(n).type) for n in names]
    rows = int(pf.metadata.num_rows)
    return _Source(names, hows, rows, _parquet_batches(pf, names, batch_cells), unpacked)


def _open_tabular(f: BinaryIO, fmt: Format, tuning: Tuning, limits: Limits | None) -> _Source:
    if fmt == "csv":
        return _open_csv(f, tuning.csv_block_size, limits)
    return _open_parquet(f, tuning.parquet_batch_cells, limits)


def _pick_target(names: list[str], target: str | None) -> int:
    if not names:
        raise DataError("the file has no columns")
    if target is None:
        return names.index("label") if "label" in names else len(names) - 1
    if target not in names:
        raise DataError(f"target column {target!r} not found; the columns are {some(names)}")
    return names.index(target)


def inspect_tabular(
    f: BinaryIO, fmt: Format, target: str | None, task: Task | None, limits: Limits, tuning: Tuning
) -> DataSummary:
    """inspect() for CSV and Parquet: every batch through the column and target statistics."""
    src = _open_tabular(f, fmt, tuning, limits)
    ti = _pick_target(src.names, target)
    feats = [i for i in range(len(src.names)) if i != ti]
    if not feats:
        raise DataError(
            f"the file has only the target column {src.names[ti]!r}: "
            "at least one feature column is needed"
        )
    if len(feats) > limits.max_columns:
        raise DataError(
            f"the file has {len(feats)} feature columns, more than the limit of "
            f"{limits.max_columns}"
        )
    if src.rows is not None:
        check_cells(src.rows, len(feats), limits)
    stats = {i: ColumnStats(src.names[i], src.hows[i], limits.max_categories) for i in feats}
    labels = TargetStats(src.names[ti], src.hows[ti], limits, tuning.max_inferred_classes)
    rows = 0
    for batch in src.batches:
        n = int(batch.num_rows)
        # Checked before the batch is examined, so a huge file stops early.
        check_cells(rows + n, len(feats), limits)
        for i in feats:
            stats[i].add(to_chunk(batch.column(i), src.hows[i]))
        labels.add(to_chunk(batch.column(ti), src.hows[ti]), rows)
        rows += n
    if rows == 0:
        raise DataError(f"the {'CSV' if fmt == 'csv' else 'Parquet'} file has no data rows")
    columns = [stats[i].info() for i in feats]
    out = labels.outcome(task)
    encoded = sum(
        (1 if c.kind == "numeric" else c.categories or 0) + (1 if c.missing else 0) for c in columns
    )
    return DataSummary(
        format=fmt,
        rows=rows,
        features=len(feats),
        task=out.task,
        task_inferred=out.inferred,
        target=src.names[ti],
        columns=columns,
        classes=out.classes,
        class_counts=out.counts,
        image_shape=None,
        encoded_features=encoded,
        target_mean=out.mean,
        target_std=out.std,
        # What counts against the quota: the values decompressed, or 8 bytes a cell (a float64
        # in the worker's DataFrame, or a pointer to a category's string) where that is more,
        # as for a CSV of one-digit numbers.
        held_bytes=max(src.unpacked, rows * len(src.names) * 8),
    )


def _feature_values(c: Chunk, kind: Kind, name: str) -> npt.NDArray[Any]:
    if kind == "numeric":
        c.numbers()
        assert c.num is not None
        if (np.isnan(c.num) & ~c.null).any():
            raise changed(f"column {name!r} has non-numeric values")
        return c.num
    if not c.is_text:
        raise changed(f"column {name!r} is no longer text")
    text = c.text()
    text[c.null] = np.nan
    return text


def load_tabular(f: BinaryIO, summary: DataSummary, tuning: Tuning) -> Table:
    """load() for CSV and Parquet: each column read as the kind `summary` gives it."""
    src = _open_tabular(f, summary.format, tuning, None)
    if summary.target not in src.names:
        raise changed(f"target column {summary.target!r} is gone")
    ti = src.names.index(summary.target)
    feats = [i for i in range(len(src.names)) if i != ti]
    if [src.names[i] for i in feats] != [c.name for c in summary.columns]:
        raise changed("its columns differ")
    # A CSV target is numeric exactly when every class label parses as a number (inspect()
    # sorted such labels numerically); a Parquet target's type decides.
    classes = np.array(summary.classes or [], dtype=object)
    numeric_target = (
        src.hows[ti] == "number"
        if summary.format == "parquet"
        else not np.isnan(to_number(classes)).any()
    )
    parts: list[list[npt.NDArray[Any]]] = [[] for _ in feats]
    ys: list[npt.NDArray[Any]] = []
    for batch in src.batches:
        for j, i in enumerate(feats):
            col = summary.columns[j]
            parts[j].append(
                _feature_values(to_chunk(batch.column(i), src.hows[i]), col.kind, col.name)
            )
        ys.append(encode_target(to_chunk(batch.column(ti), src.hows[ti]), numeric_target, summary))
    rows = sum(len(y) for y in ys)
    if rows != summary.rows:
        raise changed(f"it has {rows} rows, not {summary.rows}")
    X = pd.DataFrame(
        {
            col.name: pd.Series(
                np.concatenate(parts[j]),
                dtype=np.float64 if col.kind == "numeric" else object,
                copy=False,
            )
            for j, col in enumerate(summary.columns)
        }
    )
    return Table(X=X, y=np.concatenate(ys), summary=summary)
