"""The data-format registry: it names the formats core lists, and a new format is one class and
one `register` line (shown with a toy TSV format, registered for a test only)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from droptune.core.schemas import DATA_FORMATS, DataSummary
from droptune.datafiles import datafile, formats
from droptune.datafiles.datacheck import DataError, Limits, Tuning
from droptune.datafiles.tabular import Source, TabularFormat


def test_the_registry_names_the_formats_core_lists() -> None:
    """core.schemas cannot import datafiles; this is what keeps the two lists one."""
    assert tuple(formats.FORMATS) == DATA_FORMATS
    assert datafile.FORMATS is formats.FORMATS
    with pytest.raises(ValueError, match="registered already"):
        formats.register(formats.FORMATS["csv"])


class TsvFormat(TabularFormat):
    """Tab-separated text, read with the CSV machinery's Source: a toy, not a product format."""

    name = "tsv"
    label = "TSV"

    def detect(self, head: bytes) -> bool:
        first = head.split(b"\n", 1)[0]
        return b"\t" in first and b"," not in first

    def check_raw(self, f: BinaryIO, limits: Limits) -> None:
        # A product format would bound its header here (see CsvFormat); the toy's are tiny.
        return None

    def open(self, f: BinaryIO, tuning: Tuning) -> Source:
        size = f.seek(0, 2)
        f.seek(0)
        names = f.readline().decode().rstrip("\r\n").split("\t")
        f.seek(0)
        convert = pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=True
        )
        parse = pacsv.ParseOptions(delimiter="\t")
        reader = pacsv.open_csv(f, parse_options=parse, convert_options=convert)
        return Source(names, ["text"] * len(names), None, iter(reader), size)


@pytest.fixture
def tsv() -> Iterator[TsvFormat]:
    fmt = TsvFormat()
    formats.register(fmt)  # the one registry line
    try:
        yield fmt
    finally:
        formats.unregister(fmt.name)


ROWS = b"size\tcolour\tlabel\n" + b"".join(
    f"{i}\t{'red' if i % 3 else 'blue'}\t{i % 2}\n".encode() for i in range(40)
)


def test_a_registered_format_is_detected_inspected_and_loaded(tsv: TsvFormat) -> None:
    assert datafile.detect_format("t.tsv", ROWS[:4096]) == "tsv"
    assert datafile.detect_format("t.csv", b"a,b\n1,2\n") == "csv"  # CSV is still tried
    with pytest.raises(DataError, match=r"is not a CSV, NPZ, Parquet or TSV file"):
        datafile.detect_format("x.bin", b"\x00\x01binary")
    summary = datafile.inspect(io.BytesIO(ROWS), "tsv")
    assert (summary.format, summary.rows, summary.features) == ("tsv", 40, 2)
    assert summary.task == "classification" and summary.classes == ["0", "1"]
    assert [c.kind for c in summary.columns] == ["numeric", "categorical"]
    # Stored as JSON and read back, as the API and the worker do.
    stored = DataSummary.model_validate_json(summary.model_dump_json())
    table = datafile.load(io.BytesIO(ROWS), stored)
    assert isinstance(table.X, pd.DataFrame) and list(table.X.columns) == ["size", "colour"]
    assert table.y.tolist() == [i % 2 for i in range(40)]
    with pytest.raises(DataError, match="the TSV file has no data rows"):
        datafile.inspect(io.BytesIO(b"a\tb\n"), "tsv")


def test_without_its_line_the_toy_format_is_refused() -> None:
    assert "tsv" not in formats.FORMATS
    assert datafile.detect_format("t.tsv", ROWS[:4096]) == "csv"
    with pytest.raises(DataError, match="separated by tabs"):
        datafile.inspect(io.BytesIO(ROWS), "csv")
    with pytest.raises(DataError, match=r"unknown format 'tsv': expected one of csv, npz, parquet"):
        datafile.inspect(io.BytesIO(ROWS), "tsv")
