"""Column chunks, and the statistics inspect() gathers over them batch by batch.

A `Chunk` is one batch of one column, from CSV, Parquet or an NPZ file's y. `ColumnStats`
decides a feature column's kind; `TargetStats` decides the task and the classes or the target's
moments; `encode_target` turns a target chunk into what training gets, the way the summary says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from droptune.core.schemas import ColumnInfo, DataSummary
from droptune.datafiles.datacheck import (
    BoolArray,
    DataError,
    FloatArray,
    How,
    Limits,
    ObjectArray,
    Task,
    changed,
    snip,
    to_number,
)


@dataclass
class Chunk:
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
                num = to_number(self.text())
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


def to_chunk(arr: Any, how: How) -> Chunk:
    if how == "number":
        num = pc.cast(arr, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        num = np.asarray(num, dtype=np.float64)
        # A stored NaN means missing just as a null does.
        return Chunk(null=np.isnan(num), num=num)
    if how == "bool":
        arr = pc.if_else(arr, "True", "False")
    elif how == "string":
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            arr = pc.cast(arr, pa.string())
    null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return Chunk(null=null, arrow=arr)


FLOAT32_MAX = float(np.finfo(np.float32).max)


class ColumnStats:
    """What inspect() learns about one feature column, in memory bounded by max_categories."""

    def __init__(self, name: str, how: How, max_categories: int) -> None:
        self.name = name
        self.max_categories = max_categories
        self.could_be_numeric = how in ("text", "number")
        self.missing = 0
        self.infinite = 0
        self.huge = 0
        # Hashes of the distinct values, not the values: a wide file must not hold its strings.
        # None once there are too many (then the column may only end up numeric).
        self.hashes: npt.NDArray[np.int64] | None = None if how == "number" else _no_hashes()

    def add(self, c: Chunk) -> None:
        self.missing += int(c.null.sum())
        if self.could_be_numeric:
            num = c.numbers()
            if np.isnan(num).any():
                self.could_be_numeric = False
            else:
                self.infinite += int(np.isinf(num).sum())
                # Beyond float32's range the standardisation overflows (and training is
                # float32): refused like infinities, as for NPZ arrays.
                self.huge += int((np.abs(num[np.isfinite(num)]) > FLOAT32_MAX).sum())
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
            if self.huge:
                raise DataError(
                    f"column {self.name!r} has {self.huge} value(s) beyond ±3.4e38 (float32's "
                    "range): rescale the column"
                )
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


def _label(value: float) -> str:
    """The canonical string of a numeric class label: whole numbers without '.0'."""
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


@dataclass
class TargetOutcome:
    task: Task
    inferred: bool
    classes: list[str] | None = None
    counts: list[int] | None = None
    mean: float | None = None
    std: float | None = None


class TargetStats:
    """Label counts (capped) and running moments of the target, fed batch by batch."""

    def __init__(self, name: str, how: How, limits: Limits, max_inferred: int) -> None:
        self.name = name
        self.limits = limits
        self.max_inferred = max_inferred  # MAX_INFERRED_CLASSES of datafiles.datafile
        self.cap = max(limits.max_classes, max_inferred) + 1
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

    def add(self, c: Chunk, first_row: int) -> None:
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

    def _count(self, c: Chunk) -> None:
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

    def outcome(self, task: Task | None) -> TargetOutcome:
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
                and len(self._numeric_counts()) <= self.max_inferred
            )
            task = "classification" if few or not self.numeric else "regression"
        if task == "regression":
            return self._regression(inferred)
        return self._classification(inferred)

    def _regression(self, inferred: bool) -> TargetOutcome:
        if not self.numeric:
            raise DataError(
                f"task 'regression' needs a numeric target, but {self.name!r} has "
                f"non-numeric values such as {snip(self.example)}"
            )
        if not self.hi > self.lo:
            raise DataError(f"target {self.name!r} has only one distinct value: nothing to learn")
        std = math.sqrt(self.m2 / (self.n - 1))
        if not (math.isfinite(self.mean) and math.isfinite(std)):
            raise DataError(f"target {self.name!r} has values too large to average")
        return TargetOutcome("regression", inferred, mean=self.mean, std=std)

    def _numeric_counts(self) -> dict[float, int]:
        assert self.counts is not None
        keys = list(self.counts)
        values = to_number(np.array(keys, dtype=object)).tolist()
        merged: dict[float, int] = {}
        for key, value in zip(keys, values, strict=True):
            merged[value] = merged.get(value, 0) + self.counts[key]
        return merged

    def _classification(self, inferred: bool) -> TargetOutcome:
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
            # a numeric target read as classes because it has few distinct whole values
            guess = (
                f" (read as classes because its {len(classes)} values are few whole numbers; if "
                f"it is a quantity, upload with task 'regression': --task regression)"
                if inferred and self.numeric
                else ""
            )
            raise DataError(
                f"each class needs at least 2 rows, but target {self.name!r} has class "
                f"{', '.join(rare[:5])}{more}{guess}"
            )
        return TargetOutcome("classification", inferred, classes=classes, counts=counts)


def encode_target(c: Chunk, numeric: bool, summary: DataSummary) -> npt.NDArray[Any]:
    """Class codes in `summary.classes` order, or regression values as float64."""
    if c.null.any():
        raise changed("the target has missing values")
    if summary.task == "regression":
        num = c.numbers()
        if np.isnan(num).any():
            raise changed("the target has non-numeric values")
        return num
    assert summary.classes is not None
    if numeric:
        classes = pd.Index(to_number(np.array(summary.classes, dtype=object)))
        codes = classes.get_indexer(c.numbers())
    else:
        codes = pd.Index(summary.classes, dtype=object).get_indexer(c.keys())
    codes = np.asarray(codes, dtype=np.int64)
    if (codes < 0).any():
        raise changed(f"label {snip(c.keys()[int(np.argmax(codes < 0))])} is not a known class")
    return codes
