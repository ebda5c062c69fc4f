"""What the data-file modules share: tasks, limits, the error, the loaded table, helpers.

`datafiles.datafile` re-exports the public names; the format modules, `datafiles.columns` and
`datafiles.tabular` import them from here, so none of them imports `datafiles.datafile`. The
formats themselves are registered in `datafiles.formats`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from droptune.core.errors import Invalid
from droptune.core.schemas import DataSummary

TASKS = ("classification", "regression")

Task = Literal["classification", "regression"]
Kind = Literal["numeric", "categorical"]

# How one column is read: "text" is CSV (its kind is decided by its values), the others are
# Parquet types whose kind is fixed by the type.
How = Literal["text", "number", "string", "bool"]

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


@dataclass(frozen=True)
class Tuning:
    """The module-level tunables of `datafiles.datafile`, read when each call starts (tests patch
    them there)."""

    csv_block_size: int  # bytes of CSV text parsed at a time
    parquet_batch_cells: int  # cells per Parquet batch
    npz_chunk_bytes: int  # bytes of an NPZ array decompressed at a time
    max_inferred_classes: int  # most distinct whole values a target may have to be labels


# --------------------------------------------------------------------------- small helpers


def snip(value: object, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def some(names: Sequence[str], k: int = 8) -> str:
    shown = ", ".join(snip(n) for n in names[:k])
    return shown + (f" (and {len(names) - k} more)" if len(names) > k else "")


def to_number(text: ObjectArray) -> FloatArray:
    """pandas' number parsing; NaN where a value is missing or not a number."""
    return np.asarray(pd.to_numeric(text, errors="coerce"), dtype=np.float64)


def check_cells(rows: int, features: int, limits: Limits) -> None:
    if rows * features > limits.max_cells:
        raise DataError(
            f"the file has more than the limit of {limits.max_cells} cells (rows x feature columns)"
        )


def changed(what: str) -> DataError:
    return DataError(f"the file changed since it was inspected: {what}")
