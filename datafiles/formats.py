"""The data formats an upload may be in: one protocol, one registry.

Each format is one module with one class implementing `DataFormat` (`datafiles/csvfile.py`,
`datafiles/parquetfile.py`, `datafiles/npzfile.py`) and one `register` line below;
`datafiles.datafile` detects, checks, inspects and loads through `FORMATS` only. The names are
also listed in `core.schemas.DATA_FORMATS` (core, which the API's schema and the client read,
may not import this package); `tests/unit/test_formats.py` checks the two agree.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol

from droptune.core.schemas import DataSummary
from droptune.datafiles.csvfile import CsvFormat
from droptune.datafiles.datacheck import Limits, Table, Task, Tuning
from droptune.datafiles.npzfile import NpzFormat
from droptune.datafiles.parquetfile import ParquetFormat

# The datasets table's `format` column is String(16).
MAX_NAME = 16


class DataFormat(Protocol):
    @property
    def name(self) -> str:
        """The format's name: `DataSummary.format`, the `format` column, the API's word."""

    @property
    def label(self) -> str:
        """The name in messages ("the CSV file has no data rows")."""

    def detect(self, head: bytes) -> bool:
        """Whether a file whose first bytes are `head` is in this format."""

    def refuse(self, head: bytes) -> str | None:
        """When no format detected `head`: why, if it looks like this format gone wrong (a
        sentence after the file's name: "is UTF-16 text: ..."); None otherwise."""

    def check_raw(self, f: BinaryIO, limits: Limits) -> None:
        """Refuse, with a DataError, what would cost a parser far more than the file's size
        (headers, footers, directories), from bounded reads of the raw bytes."""

    def inspect(
        self, f: BinaryIO, target: str | None, task: Task | None, limits: Limits, tuning: Tuning
    ) -> DataSummary:
        """The whole file validated in bounded memory (after `check_raw` passed); DataError."""

    def load(self, f: BinaryIO, summary: DataSummary, tuning: Tuning) -> Table:
        """The file read for training, the way `inspect` read it for `summary`."""


# In registration order, which is the order messages list them in. Detection tries them in the
# reverse order: a format registered later is more specific than one before it (CSV, first,
# accepts any UTF-8 text, and Parquet's signature is text).
FORMATS: dict[str, DataFormat] = {}


def register(fmt: DataFormat) -> None:
    if fmt.name in FORMATS:
        raise ValueError(f"data format {fmt.name!r} is registered already")
    if not fmt.name or len(fmt.name) > MAX_NAME:
        raise ValueError(f"data format name {fmt.name!r}: 1 to {MAX_NAME} characters")
    FORMATS[fmt.name] = fmt


def unregister(name: str) -> None:
    del FORMATS[name]


register(CsvFormat())
register(NpzFormat())
register(ParquetFormat())
