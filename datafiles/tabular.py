"""What CSV and Parquet share: a file opened as a `Source`, streamed in bounded batches.

A tabular format (`datafiles/csvfile.py`, `datafiles/parquetfile.py`) subclasses `TabularFormat`
and provides `open`: its column names, how each column is read, and its record batches.
`inspect_tabular` feeds the batches to the column and target statistics of `datafiles.columns`,
and `load_tabular` reads them into a DataFrame the way the stored summary says.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import pandas as pd

from droptune.core.schemas import DataSummary
from droptune.datafiles.columns import Chunk, ColumnStats, TargetStats, encode_target, to_chunk
from droptune.datafiles.datacheck import (
    DataError,
    How,
    Kind,
    Limits,
    Table,
    Task,
    Tuning,
    changed,
    check_cells,
    some,
    to_number,
)


@dataclass
class Source:
    """A tabular file opened for streaming: its columns and an iterator of record batches."""

    names: list[str]
    hows: list[How]
    rows: int | None  # known before reading for Parquet
    batches: Iterator[Any]
    unpacked: int  # bytes of the values decompressed: the file's size for CSV


class TabularFormat(ABC):
    """A `formats.DataFormat` whose files open as a `Source`: a subclass gives its name, label,
    detection, raw checks and `open`; inspect and load are the shared ones below."""

    name: str
    label: str

    @abstractmethod
    def detect(self, head: bytes) -> bool: ...

    def refuse(self, head: bytes) -> str | None:
        return None

    @abstractmethod
    def check_raw(self, f: BinaryIO, limits: Limits) -> None: ...

    @abstractmethod
    def open(self, f: BinaryIO, tuning: Tuning) -> Source:
        """The file opened for streaming; called after `check_raw` passed (inspect) or on a
        file that passed it before (load)."""

    def inspect(
        self, f: BinaryIO, target: str | None, task: Task | None, limits: Limits, tuning: Tuning
    ) -> DataSummary:
        src = self.open(f, tuning)
        return inspect_tabular(src, self.name, self.label, target, task, limits, tuning)

    def load(self, f: BinaryIO, summary: DataSummary, tuning: Tuning) -> Table:
        return load_tabular(self.open(f, tuning), summary)


def check_names(names: list[str], what: str) -> None:
    empty = [str(i + 1) for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise DataError(f"the {what} has empty column names (column {', '.join(empty[:5])})")
    counts = Counter(names)
    dupes = sorted(n for n, k in counts.items() if k > 1)
    if dupes:
        raise DataError(f"the {what} has duplicate column names: {some(dupes)}")


def _pick_target(names: list[str], target: str | None) -> int:
    if not names:
        raise DataError("the file has no columns")
    if target is None:
        return names.index("label") if "label" in names else len(names) - 1
    if target not in names:
        near = [n for n in names if n.casefold() == target.casefold()]
        near = near or difflib.get_close_matches(target, names, n=1, cutoff=0.8)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise DataError(f"target column {target!r} not found{hint}; the columns are {some(names)}")
    return names.index(target)


def _features(names: list[str], ti: int, limits: Limits) -> list[int]:
    """The feature columns' indices: every column but the target, within the limit."""
    feats = [i for i in range(len(names)) if i != ti]
    if not feats:
        raise DataError(
            f"the file has only the target column {names[ti]!r}: "
            "at least one feature column is needed"
        )
    if len(feats) > limits.max_columns:
        raise DataError(
            f"the file has {len(feats)} feature columns, more than the limit of "
            f"{limits.max_columns}"
        )
    return feats


def inspect_tabular(
    src: Source,
    name: str,
    label: str,
    target: str | None,
    task: Task | None,
    limits: Limits,
    tuning: Tuning,
) -> DataSummary:
    """inspect() for a tabular format: every batch through the column and target statistics."""
    ti = _pick_target(src.names, target)
    feats = _features(src.names, ti, limits)
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
        raise DataError(f"the {label} file has no data rows")
    columns = [stats[i].info() for i in feats]
    out = labels.outcome(task)
    encoded = sum(
        (1 if c.kind == "numeric" else c.categories or 0) + (1 if c.missing else 0) for c in columns
    )
    return DataSummary(
        format=name,
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


def load_tabular(src: Source, summary: DataSummary) -> Table:
    """load() for a tabular format: each column read as the kind `summary` gives it."""
    if summary.target not in src.names:
        raise changed(f"target column {summary.target!r} is gone")
    ti = src.names.index(summary.target)
    feats = [i for i in range(len(src.names)) if i != ti]
    if [src.names[i] for i in feats] != [c.name for c in summary.columns]:
        raise changed("its columns differ")
    # A text target (CSV) is numeric exactly when every class label parses as a number
    # (inspect() sorted such labels numerically); a typed target's (Parquet) type decides.
    classes = np.array(summary.classes or [], dtype=object)
    numeric_target = (
        src.hows[ti] == "number"
        if src.hows[ti] != "text"
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
