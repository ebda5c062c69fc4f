"""Read and validate a user's uploaded data file (CSV, NPZ or Parquet).

The API calls `inspect()` on upload: it streams the file once in bounded memory (CSV blocks,
Parquet batches, NPZ chunks), refuses anything training would choke on with a one-line `DataError`,
and returns a `DataSummary` that is stored with the dataset. The worker later calls `load()` with
that summary; both go through the same readers and per-column conversions, so a column the
summary calls categorical is read as strings even where part of the file looks numeric.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from storage.errors import Invalid
from storage.schemas import ColumnInfo, DataSummary

FORMATS = ("csv", "npz", "parquet")
TASKS = ("classification", "regression")

Format = Literal["csv", "npz", "parquet"]
Task = Literal["classification", "regression"]
Kind = Literal["numeric", "categorical"]

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
_FLOAT32_MAX = float(np.finfo(np.float32).max)

# How one column is read: "text" is CSV (its kind is decided by its values), the others are
# Parquet types whose kind is fixed by the type.
_How = Literal["text", "number", "string", "bool"]

FloatArray = npt.NDArray[np.float64]
ObjectArray = npt.NDArray[np.object_]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Limits:
    max_columns: int = 10_000
    max_cells: int = 500_000_000
    max_categories: int = 256
    max_image_values: int = 3 * 512 * 512
    max_classes: int = 1000


class DataError(Invalid):
    """The uploaded file cannot be used; `detail` names the problem on one line."""

    def __init__(self, detail: str) -> None:
        # Values quoted from the file could carry newlines; the API promises one line.
        super().__init__(" ".join(detail.split()))


@dataclass
class Table:
    X: pd.DataFrame | npt.NDArray[np.float32]
    y: npt.NDArray[Any]
    summary: DataSummary


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


# --------------------------------------------------------------------------- small helpers


def _snip(value: object, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _some(names: Sequence[str], k: int = 8) -> str:
    shown = ", ".join(_snip(n) for n in names[:k])
    return shown + (f" (and {len(names) - k} more)" if len(names) > k else "")


def _to_number(text: ObjectArray) -> FloatArray:
    """pandas' number parsing; NaN where a value is missing or not a number."""
    return np.asarray(pd.to_numeric(text, errors="coerce"), dtype=np.float64)


def _label(value: float) -> str:
    """The canonical string of a numeric class label: whole numbers without '.0'."""
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _check_options(fmt: str, task: str | None) -> tuple[Format, Task | None]:
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if task is not None and task not in TASKS:
        raise DataError(f"unknown task {task!r}: expected 'classification' or 'regression'")
    return cast(Format, fmt), cast("Task | None", task)


def _check_names(names: list[str], what: str) -> None:
    empty = [str(i + 1) for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise DataError(f"the {what} has empty column names (column {', '.join(empty[:5])})")
    counts = Counter(names)
    dupes = sorted(n for n, k in counts.items() if k > 1)
    if dupes:
        raise DataError(f"the {what} has duplicate column names: {_some(dupes)}")


# --------------------------------------------------------------------------- column chunks


@dataclass
class _Chunk:
    """One batch of one column: pyarrow strings for text columns, floats for typed numbers.

    Conversions are done on demand and kept, because most columns need only some of them.
    """

    null: BoolArray
    arrow: Any = None  # pyarrow string array (CSV, and Parquet text/bool columns)
    num: FloatArray | None = None  # all rows, NaN where missing or not a number
    _text: ObjectArray | None = None

    @property
    def is_text(self) -> bool:
        return self.arrow is not None

    def text(self) -> ObjectArray:
        """All rows as str objects, None where missing."""
        if self._text is None:
            self._text = np.asarray(self.arrow.to_numpy(zero_copy_only=False), dtype=object)
        return self._text

    def numbers(self) -> FloatArray:
        """Non-missing values as numbers (NaN where a text value is not a number)."""
        if self.num is None:
            try:
                # pyarrow's parser is much faster; the numbers it accepts are ones pandas
                # accepts too, with the same values, and pandas decides whenever it refuses.
                num = pc.cast(self.arrow, pa.float64()).to_numpy(zero_copy_only=False)
            except pa.ArrowInvalid:
                num = _to_number(self.text())
            self.num = np.asarray(num, dtype=np.float64)
        return self.num[~self.null]

    def keys(self) -> npt.NDArray[Any]:
        """Non-missing values as they appear in the file (strings, or numbers for typed columns)."""
        if self.is_text:
            return self.text()[~self.null]
        assert self.num is not None
        return self.num[~self.null]

    def distinct(self) -> list[str]:
        """The distinct non-missing text values."""
        return cast("list[str]", pc.unique(self.arrow.drop_null()).to_pylist())

    def value_counts(self) -> tuple[list[Any], list[int]]:
        """Distinct non-missing values (as in `keys`) and how often each occurs."""
        if self.is_text:
            vc = pc.value_counts(self.arrow.drop_null())
            return vc.field("values").to_pylist(), vc.field("counts").to_pylist()
        counted = pd.Series(self.keys()).value_counts(sort=False)
        return counted.index.tolist(), counted.tolist()


def _chunk(arr: Any, how: _How) -> _Chunk:
    if how == "number":
        num = pc.cast(arr, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        num = np.asarray(num, dtype=np.float64)
        # A stored NaN means missing just as a null does.
        return _Chunk(null=np.isnan(num), num=num)
    if how == "bool":
        arr = pc.if_else(arr, "True", "False")
    elif how == "string":
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            arr = pc.cast(arr, pa.string())
    null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return _Chunk(null=null, arrow=arr)


class _ColumnStats:
    """What inspect() learns about one feature column, in memory bounded by max_categories."""

    def __init__(self, name: str, how: _How, max_categories: int) -> None:
        self.name = name
        self.max_categories = max_categories
        self.could_be_numeric = how in ("text", "number")
        self.missing = 0
        self.infinite = 0
        # Hashes of the distinct values, not the values: a wide file must not hold its strings.
        # None once there are too many (then the column may only end up numeric).
        self.hashes: npt.NDArray[np.int64] | None = None if how == "number" else _no_hashes()

    def add(self, c: _Chunk) -> None:
        self.missing += int(c.null.sum())
        if self.could_be_numeric:
            num = c.numbers()
            if np.isnan(num).any():
                self.could_be_numeric = False
            else:
                self.infinite += int(np.isinf(num).sum())
        if self.hashes is not None and c.is_text:
            self._add_distinct(c.distinct())
        if not self.could_be_numeric and self.hashes is None:
            raise DataError(
                f"column {self.name!r} has more than {self.max_categories} distinct text values "
                "(an id or free-text column?): drop it or encode it as numbers"
            )

    def _add_distinct(self, values: list[str]) -> None:
        assert self.hashes is not None
        if len(values) > self.max_categories:
            self.hashes = None
            return
        # Python's own string hash will do: these hashes live only as long as this call.
        new = np.fromiter((hash(v) for v in values), dtype=np.int64, count=len(values))
        merged = np.union1d(self.hashes, new)
        self.hashes = merged if len(merged) <= self.max_categories else None

    def info(self) -> ColumnInfo:
        if self.could_be_numeric:
            if self.infinite:
                raise DataError(
                    f"column {self.name!r} has {self.infinite} infinite values: "
                    "replace them or leave those cells empty"
                )
            return ColumnInfo(name=self.name, kind="numeric", missing=self.missing)
        assert self.hashes is not None
        return ColumnInfo(
            name=self.name, kind="categorical", missing=self.missing, categories=len(self.hashes)
        )


def _no_hashes() -> npt.NDArray[np.int64]:
    return np.empty(0, dtype=np.int64)


@dataclass
class _TargetOutcome:
    task: Task
    inferred: bool
    classes: list[str] | None = None
    counts: list[int] | None = None
    mean: float | None = None
    std: float | None = None


class _TargetStats:
    """Label counts (capped) and running moments of the target, fed batch by batch."""

    def __init__(self, name: str, how: _How, limits: Limits) -> None:
        self.name = name
        self.limits = limits
        self.cap = max(limits.max_classes, MAX_INFERRED_CLASSES) + 1
        self.numeric = how in ("text", "number")
        self.example: str | None = None  # a value that is not a number, for messages
        self.missing = 0
        self.first_missing = 0
        self.counts: dict[Any, int] | None = {}
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self.nonfinite = 0
        self.whole = True

    def add(self, c: _Chunk, first_row: int) -> None:
        if c.null.any():
            if not self.missing:
                self.first_missing = first_row + int(np.argmax(c.null)) + 1
            self.missing += int(c.null.sum())
        self._count(c)
        if not self.numeric:
            return
        num = c.numbers()
        bad = np.isnan(num)
        if bad.any():
            self.numeric = False
            self.example = str(c.keys()[int(np.argmax(bad))])
            return
        self._moments(num)

    def _count(self, c: _Chunk) -> None:
        if self.counts is None:
            return
        keys, counts = c.value_counts()
        if len(keys) > self.cap:
            self.counts = None
            return
        for key, count in zip(keys, counts, strict=True):
            self.counts[key] = self.counts.get(key, 0) + count
        if len(self.counts) > self.cap:
            self.counts = None

    def _moments(self, num: FloatArray) -> None:
        finite = np.isfinite(num)
        self.nonfinite += int((~finite).sum())
        v = num[finite]
        if not len(v):
            return
        self.whole = self.whole and bool(np.all(v == np.floor(v)))
        self.lo = min(self.lo, float(v.min()))
        self.hi = max(self.hi, float(v.max()))
        # Chan et al.'s pairwise update: numerically stable across batches of any size.
        with np.errstate(over="ignore", invalid="ignore"):  # huge values: refused at the end
            nb, mb = len(v), float(v.mean())
            m2b = float(((v - mb) ** 2).sum())
        delta = mb - self.mean
        total = self.n + nb
        self.mean += delta * nb / total
        self.m2 += m2b + delta * delta * self.n * nb / total
        self.n = total

    def outcome(self, task: Task | None) -> _TargetOutcome:
        if self.missing:
            raise DataError(
                f"target {self.name!r} has {self.missing} missing values "
                f"(first in data row {self.first_missing}): drop those rows"
            )
        if self.numeric and self.nonfinite:
            raise DataError(
                f"target {self.name!r} has {self.nonfinite} non-finite values (NaN or inf)"
            )
        inferred = task is None
        if task is None:
            few = (
                self.numeric
                and self.whole
                and self.counts is not None
                and len(self._numeric_counts()) <= MAX_INFERRED_CLASSES
            )
            task = "classification" if few or not self.numeric else "regression"
        if task == "regression":
            return self._regression(inferred)
        return self._classification(inferred)

    def _regression(self, inferred: bool) -> _TargetOutcome:
        if not self.numeric:
            raise DataError(
                f"task 'regression' needs a numeric target, but {self.name!r} has "
                f"non-numeric values such as {_snip(self.example)}"
            )
        if not self.hi > self.lo:
            raise DataError(f"target {self.name!r} has only one distinct value: nothing to learn")
        std = math.sqrt(self.m2 / (self.n - 1))
        if not (math.isfinite(self.mean) and math.isfinite(std)):
            raise DataError(f"target {self.name!r} has values too large to average")
        return _TargetOutcome("regression", inferred, mean=self.mean, std=std)

    def _numeric_counts(self) -> dict[float, int]:
        assert self.counts is not None
        keys = list(self.counts)
        values = _to_number(np.array(keys, dtype=object)).tolist()
        merged: dict[float, int] = {}
        for key, value in zip(keys, values, strict=True):
            merged[value] = merged.get(value, 0) + self.counts[key]
        return merged

    def _classification(self, inferred: bool) -> _TargetOutcome:
        limit = self.limits.max_classes
        if self.counts is None:
            raise DataError(f"target {self.name!r} has more than the limit of {limit} classes")
        if self.numeric:
            merged = self._numeric_counts()
            order = sorted(merged)
            classes, counts = [_label(v) for v in order], [merged[v] for v in order]
        else:
            labels = sorted(self.counts, key=str)
            classes, counts = [str(k) for k in labels], [self.counts[k] for k in labels]
        if len(classes) < 2:
            raise DataError(
                f"target {self.name!r} has only one class ({classes[0]!r}): nothing to learn"
            )
        if len(classes) > limit:
            raise DataError(
                f"target {self.name!r} has {len(classes)} classes, more than the limit of {limit}"
            )
        rare = [f"{c!r} with {n} row" for c, n in zip(classes, counts, strict=True) if n < 2]
        if rare:
            more = f" and {len(rare) - 5} more" if len(rare) > 5 else ""
            raise DataError(
                f"each class needs at least 2 rows, but target {self.name!r} has class "
                f"{', '.join(rare[:5])}{more}"
            )
        return _TargetOutcome("classification", inferred, classes=classes, counts=counts)


# --------------------------------------------------------------------------- tabular sources


@dataclass
class _Source:
    """A tabular file opened for streaming: its columns and an iterator of record batches."""

    names: list[str]
    hows: list[_How]
    rows: int | None  # known before reading for Parquet
    batches: Iterator[Any]


def _csv_error(exc: Exception, bad: list[Any]) -> DataError:
    if bad:
        row = bad[-1]
        where = f"row {row.number} (counting the header)" if row.number else "a row"
        return DataError(
            f"CSV {where} has {row.actual_columns} fields but the header has "
            f"{row.expected_columns}: {_snip(row.text)}"
        )
    msg = str(exc)
    if isinstance(exc, UnicodeDecodeError) or "UTF8" in msg:
        return DataError("the CSV file is not UTF-8 text: save it as UTF-8")
    if "Empty CSV file" in msg:
        return DataError("the CSV file is empty: it needs a header row and data rows")
    return DataError(f"the CSV file could not be parsed: {_snip(msg, 200)}")


def _csv_reader(f: BinaryIO, names: list[str] | None, bad: list[Any]) -> Any:
    def on_bad_row(row: Any) -> str:
        bad.append(row)
        return "error"

    f.seek(0)
    # One thread: pyarrow then knows the row number of a ragged row.
    # Each column of each block costs a fixed overhead, so wide files get larger blocks
    # (up to 8x): fewer, larger batches for the same bounded memory per row.
    scale = min(8, max(1, len(names or ()) // 64))
    read = pacsv.ReadOptions(block_size=CSV_BLOCK_SIZE * scale, use_threads=False)
    parse = pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_bad_row)
    if names is None:
        return pacsv.open_csv(f, read_options=read, parse_options=parse)
    # Every column as text: whether a column is numeric is decided over the whole file,
    # not by pyarrow's guess from the first block.
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names}, strings_can_be_null=True
    )
    return pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)


def _csv_batches(f: BinaryIO, names: list[str], bad: list[Any]) -> Iterator[Any]:
    try:
        reader = _csv_reader(f, names, bad)
        yield from reader
    except (pa.ArrowException, UnicodeDecodeError) as e:
        raise _csv_error(e, bad) from None


def _open_csv(f: BinaryIO) -> _Source:
    bad: list[Any] = []
    try:
        names = [str(n) for n in _csv_reader(f, None, bad).schema.names]
    except (pa.ArrowException, UnicodeDecodeError) as e:
        raise _csv_error(e, bad) from None
    _check_names(names, "CSV header")
    return _Source(names, ["text"] * len(names), None, _csv_batches(f, names, bad))


def _parquet_how(name: str, t: Any) -> _How:
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


def _parquet_batches(pf: Any, names: list[str]) -> Iterator[Any]:
    per_batch = max(1, PARQUET_BATCH_CELLS // max(1, len(names)))
    try:
        yield from pf.iter_batches(batch_size=per_batch, columns=names)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"the Parquet file could not be read: {e}") from None
    finally:
        pf.close()


def _open_parquet(f: BinaryIO) -> _Source:
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
    hows = [_parquet_how(n, schema.field(n).type) for n in names]
    return _Source(names, hows, int(pf.metadata.num_rows), _parquet_batches(pf, names))


def _open_tabular(f: BinaryIO, fmt: Format) -> _Source:
    return _open_csv(f) if fmt == "csv" else _open_parquet(f)


def _pick_target(names: list[str], target: str | None) -> int:
    if not names:
        raise DataError("the file has no columns")
    if target is None:
        return names.index("label") if "label" in names else len(names) - 1
    if target not in names:
        raise DataError(f"target column {target!r} not found; the columns are {_some(names)}")
    return names.index(target)


def _check_cells(rows: int, features: int, limits: Limits) -> None:
    if rows * features > limits.max_cells:
        raise DataError(
            f"the file has more than the limit of {limits.max_cells} cells (rows x feature columns)"
        )


def _inspect_tabular(
    f: BinaryIO, fmt: Format, target: str | None, task: Task | None, limits: Limits
) -> DataSummary:
    src = _open_tabular(f, fmt)
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
        _check_cells(src.rows, len(feats), limits)
    stats = {i: _ColumnStats(src.names[i], src.hows[i], limits.max_categories) for i in feats}
    labels = _TargetStats(src.names[ti], src.hows[ti], limits)
    rows = 0
    for batch in src.batches:
        n = int(batch.num_rows)
        # Checked before the batch is examined, so a huge file stops early.
        _check_cells(rows + n, len(feats), limits)
        for i in feats:
            stats[i].add(_chunk(batch.column(i), src.hows[i]))
        labels.add(_chunk(batch.column(ti), src.hows[ti]), rows)
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
    )


# --------------------------------------------------------------------------- NPZ


@dataclass
class _NpyHeader:
    name: str
    member: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    offset: int  # bytes of .npy header before the data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


# Reading a zip member can fail in all of these ways on a corrupt or hostile archive.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,
    RuntimeError,  # an encrypted member
)


def _npy_header(zf: zipfile.ZipFile, name: str, info: zipfile.ZipInfo) -> _NpyHeader:
    fmt = np.lib.format
    try:
        with zf.open(info) as m:
            version = fmt.read_magic(m)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(m)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(m)
            else:
                raise DataError(f"array {name} uses .npy version {version}, not supported")
            offset = m.tell()
    except (*_ZIP_ERRORS, SyntaxError) as e:
        raise DataError(f"array {name} in the NPZ file is not a valid .npy array: {e}") from None
    return _NpyHeader(name, info, tuple(int(s) for s in shape), dtype, offset)


def _npz_headers(zf: zipfile.ZipFile) -> tuple[_NpyHeader, _NpyHeader]:
    """The headers of X and y, read without decompressing (or unpickling) their data."""
    members = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
    missing = [a for a in ("X", "y") if a not in members]
    if missing:
        found = [n for n in members if not n.endswith("/")]
        raise DataError(
            f"the NPZ file needs arrays X and y; it has no {' or '.join(missing)} "
            f"(found: {_some(found) or 'nothing'})"
        )
    hx, hy = (_npy_header(zf, a, members[a]) for a in ("X", "y"))
    for h in (hx, hy):
        if h.dtype.hasobject:
            raise DataError(
                f"array {h.name} has dtype object (pickled Python objects), which is refused: "
                "save it as a numeric array"
            )
    return hx, hy


def _check_npz_dtypes(hx: _NpyHeader, hy: _NpyHeader) -> None:
    if hx.dtype.kind not in "biuf" or hx.dtype.fields:
        raise DataError(f"X must hold numbers or booleans, not dtype {hx.dtype}")
    if hy.dtype.kind not in "biufU" or hy.dtype.fields:
        raise DataError(f"y must hold numbers, booleans or strings (dtype 'U'), not {hy.dtype}")
    if hy.dtype.itemsize == 0:
        raise DataError("y holds only empty strings")


def _check_npz_shapes(hx: _NpyHeader, hy: _NpyHeader, limits: Limits) -> list[int] | None:
    """Refuses shapes beyond the limits; returns [C, H, W] for images."""
    xs, ys = hx.shape, hy.shape
    if len(xs) not in (2, 3, 4):
        raise DataError(
            f"X has {len(xs)} dimensions {xs}; expected (N, F) features, "
            "(N, H, W) or (N, C, H, W) images"
        )
    if not (len(ys) == 1 or (len(ys) == 2 and ys[1] == 1)):
        raise DataError(f"y must have shape (N,), not {ys}")
    if xs[0] != ys[0]:
        raise DataError(f"X has {xs[0]} rows but y has {ys[0]} labels")
    if xs[0] == 0:
        raise DataError("the NPZ file has no data rows (X is empty)")
    features = math.prod(xs[1:])
    if features == 0:
        raise DataError(f"X has no features: its shape is {xs}")
    image = None
    if len(xs) == 2 and features > limits.max_columns:
        raise DataError(
            f"X has {features} feature columns, more than the limit of {limits.max_columns}"
        )
    if len(xs) == 4 and xs[1] > 64 and xs[3] <= 4:
        raise DataError(
            f"X has shape {xs}, which looks like (N, H, W, C): transpose to (N, C, H, W)"
        )
    if len(xs) > 2:
        image = [1, *xs[1:]] if len(xs) == 3 else list(xs[1:])
        if features > limits.max_image_values:
            raise DataError(
                f"each image in X has C*H*W = {features} values, more than the limit of "
                f"{limits.max_image_values}"
            )
    _check_cells(xs[0], features, limits)
    return image


def _check_npz_sizes(headers: Sequence[_NpyHeader], limits: Limits) -> None:
    for h in headers:
        declared = h.member.file_size
        # Shapes are within the limits by now, but long strings in y could still be huge.
        if h.nbytes > 8 * limits.max_cells:
            raise DataError(
                f"array {h.name} in the NPZ file would take {h.nbytes} bytes, more than the "
                f"limit of {8 * limits.max_cells}"
            )
        if declared != h.offset + h.nbytes:
            raise DataError(
                f"array {h.name} in the NPZ file declares {declared} bytes uncompressed, "
                f"but its header says {h.offset + h.nbytes}: the archive is corrupt"
            )


def _npy_chunks(zf: zipfile.ZipFile, h: _NpyHeader) -> Iterator[npt.NDArray[Any]]:
    """The array's values in flat chunks, so inspect() never holds a decompressed X."""
    step = max(1, NPZ_CHUNK_BYTES // h.dtype.itemsize) * h.dtype.itemsize
    try:
        with zf.open(h.member) as m:
            m.read(h.offset)
            left = h.nbytes
            while left:
                data = m.read(min(step, left))
                if not data or len(data) % h.dtype.itemsize:
                    raise DataError(f"array {h.name} in the NPZ file is truncated")
                left -= len(data)
                yield np.frombuffer(data, dtype=h.dtype)
            m.read()  # to the end, so zipfile checks the CRC
    except _ZIP_ERRORS as e:
        raise DataError(f"array {h.name} in the NPZ file could not be read: {e}") from None


def _check_x_values(zf: zipfile.ZipFile, hx: _NpyHeader) -> None:
    nonfinite = huge = 0
    for part in _npy_chunks(zf, hx):
        if part.dtype.kind != "f":
            continue
        finite = np.isfinite(part)
        nonfinite += int((~finite).sum())
        huge += int((np.abs(part[finite]) > _FLOAT32_MAX).sum())
    if nonfinite:
        raise DataError(f"X has {nonfinite} non-finite values (NaN or inf)")
    if huge:
        raise DataError(f"X has {huge} values too large for float32 (beyond 3.4e38)")


def _y_chunk(y: npt.NDArray[Any]) -> tuple[_Chunk, _How]:
    """y as a target column: numbers stay numbers, booleans and strings are labels."""
    y = y.reshape(-1)
    none = np.zeros(len(y), dtype=bool)
    if y.dtype.kind == "b":
        return _Chunk(null=none, arrow=pa.array(np.where(y, "True", "False"))), "bool"
    if y.dtype.kind == "U":
        return _Chunk(null=none, arrow=pa.array(y, type=pa.string())), "string"
    num = y.astype(np.float64)
    bad = int((~np.isfinite(num)).sum())
    if bad:
        raise DataError(f"y has {bad} non-finite values (NaN or inf)")
    return _Chunk(null=none, num=num), "number"


def _open_zip(f: BinaryIO) -> zipfile.ZipFile:
    f.seek(0)
    try:
        return zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DataError(f"the file is not a valid NPZ (zip) archive: {e}") from None


def _inspect_npz(f: BinaryIO, target: str | None, task: Task | None, limits: Limits) -> DataSummary:
    if target not in (None, "y"):
        raise DataError(f"an NPZ file's target is its array y; target {target!r} cannot be set")
    with _open_zip(f) as zf:
        hx, hy = _npz_headers(zf)
        _check_npz_dtypes(hx, hy)
        image = _check_npz_shapes(hx, hy, limits)
        _check_npz_sizes((hx, hy), limits)
        y = np.concatenate(list(_npy_chunks(zf, hy)))
        _check_x_values(zf, hx)
    chunk, how = _y_chunk(y)
    labels = _TargetStats("y", how, limits)
    labels.add(chunk, 0)
    out = labels.outcome(task)
    features = math.prod(hx.shape[1:])
    return DataSummary(
        format="npz",
        rows=hx.shape[0],
        features=features,
        task=out.task,
        task_inferred=out.inferred,
        target=None,
        columns=[],
        classes=out.classes,
        class_counts=out.counts,
        image_shape=image,
        encoded_features=features,
        target_mean=out.mean,
        target_std=out.std,
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
        return _inspect_npz(f, target, wanted, limits)
    return _inspect_tabular(f, form, target, wanted, limits)


def _changed(what: str) -> DataError:
    return DataError(f"the file changed since it was inspected: {what}")


def _encode_target(c: _Chunk, numeric: bool, summary: DataSummary) -> npt.NDArray[Any]:
    """Class codes in `summary.classes` order, or regression values as float64."""
    if c.null.any():
        raise _changed("the target has missing values")
    if summary.task == "regression":
        num = c.numbers()
        if np.isnan(num).any():
            raise _changed("the target has non-numeric values")
        return num
    assert summary.classes is not None
    if numeric:
        classes = pd.Index(_to_number(np.array(summary.classes, dtype=object)))
        codes = classes.get_indexer(c.numbers())
    else:
        codes = pd.Index(summary.classes, dtype=object).get_indexer(c.keys())
    codes = np.asarray(codes, dtype=np.int64)
    if (codes < 0).any():
        raise _changed(f"label {_snip(c.keys()[int(np.argmax(codes < 0))])} is not a known class")
    return codes


def _feature_values(c: _Chunk, kind: Kind, name: str) -> npt.NDArray[Any]:
    if kind == "numeric":
        c.numbers()
        assert c.num is not None
        if (np.isnan(c.num) & ~c.null).any():
            raise _changed(f"column {name!r} has non-numeric values")
        return c.num
    if not c.is_text:
        raise _changed(f"column {name!r} is no longer text")
    text = c.text()
    text[c.null] = np.nan
    return text


def _load_tabular(f: BinaryIO, summary: DataSummary) -> Table:
    src = _open_tabular(f, summary.format)
    if summary.target not in src.names:
        raise _changed(f"target column {summary.target!r} is gone")
    ti = src.names.index(summary.target)
    feats = [i for i in range(len(src.names)) if i != ti]
    if [src.names[i] for i in feats] != [c.name for c in summary.columns]:
        raise _changed("its columns differ")
    # A CSV target is numeric exactly when every class label parses as a number (inspect()
    # sorted such labels numerically); a Parquet target's type decides.
    classes = np.array(summary.classes or [], dtype=object)
    numeric_target = (
        src.hows[ti] == "number"
        if summary.format == "parquet"
        else not np.isnan(_to_number(classes)).any()
    )
    parts: list[list[npt.NDArray[Any]]] = [[] for _ in feats]
    ys: list[npt.NDArray[Any]] = []
    for batch in src.batches:
        for j, i in enumerate(feats):
            col = summary.columns[j]
            parts[j].append(
                _feature_values(_chunk(batch.column(i), src.hows[i]), col.kind, col.name)
            )
        ys.append(_encode_target(_chunk(batch.column(ti), src.hows[ti]), numeric_target, summary))
    rows = sum(len(y) for y in ys)
    if rows != summary.rows:
        raise _changed(f"it has {rows} rows, not {summary.rows}")
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


def _load_npz(f: BinaryIO, summary: DataSummary) -> Table:
    with _open_zip(f) as zf:
        hx, hy = _npz_headers(zf)
        _check_npz_dtypes(hx, hy)
        # The stored summary bounds what np.load may decompress.
        if hx.shape[0] != summary.rows or math.prod(hx.shape[1:]) != summary.features:
            raise _changed(f"X has shape {hx.shape}")
        if hy.shape not in ((summary.rows,), (summary.rows, 1)):
            raise _changed(f"y has shape {hy.shape}")
    f.seek(0)
    try:
        with np.load(f, allow_pickle=False) as npz:
            X = np.asarray(npz["X"]).reshape(summary.rows, -1).astype(np.float32, copy=False)
            y = np.asarray(npz["y"])
    except _ZIP_ERRORS as e:
        raise DataError(f"the NPZ file could not be read: {e}") from None
    chunk, how = _y_chunk(y)
    return Table(X=X, y=_encode_target(chunk, how == "number", summary), summary=summary)


def load(f: BinaryIO, summary: DataSummary) -> Table:
    """Reads the whole file for training, the way inspect() read it for `summary`."""
    if summary.format == "npz":
        return _load_npz(f, summary)
    return _load_tabular(f, summary)
