"""The CSV format: comma-separated UTF-8 text with a header row, streamed in blocks by pyarrow.

Detection accepts any UTF-8 text (CSV has no signature), so `datafiles.formats` registers CSV
first and tries it last. The raw check counts the header's fields on its bytes
(`datafiles.rawcheck`) before pyarrow infers a column for each; every column is then read as
text, its kind decided over the whole file by `datafiles.columns`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv

from droptune.datafiles.datacheck import DataError, Limits, Tuning, snip
from droptune.datafiles.rawcheck import check_csv_header, scan_csv_header
from droptune.datafiles.tabular import Source, TabularFormat, check_names

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# C0 control bytes that plain text may contain (tab, newlines, vertical tab, form feed).
_TEXT_CONTROLS = frozenset(b"\t\n\r\x0b\x0c")


def _binary(head: bytes) -> bool:
    return any(b < 0x20 and b not in _TEXT_CONTROLS for b in head.removeprefix(_UTF8_BOM))


def _utf8_error(head: bytes) -> UnicodeDecodeError | None:
    text = head.removeprefix(_UTF8_BOM)
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as e:
        # The head may end inside a multi-byte character; only a bad byte before that counts.
        if not (e.reason == "unexpected end of data" and len(text) - e.start < 4):
            return e
    return None


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


class CsvFormat(TabularFormat):
    name = "csv"
    label = "CSV"

    def detect(self, head: bytes) -> bool:
        return not head.startswith(_UTF16_BOMS) and not _binary(head) and not _utf8_error(head)

    def refuse(self, head: bytes) -> str | None:
        """Text a user can re-save as CSV is named as such; plain binary gets no reason."""
        if head.startswith(_UTF16_BOMS):
            return "is UTF-16 text: save the CSV file as UTF-8"
        e = None if _binary(head) else _utf8_error(head)
        if e is None:
            return None
        text = head.removeprefix(_UTF8_BOM)
        return (
            f"is not UTF-8 text (byte 0x{text[e.start]:02X} at offset {e.start}): "
            "save the CSV file as UTF-8"
        )

    def check_raw(self, f: BinaryIO, limits: Limits) -> None:
        # pyarrow infers every column of the header at ~1 KB a byte of it (a 12 MB header took
        # 9 GB): the header's columns are counted on the raw bytes first, refused past the limit.
        check_csv_header(f, limits)

    def open(self, f: BinaryIO, tuning: Tuning) -> Source:
        block_size = tuning.csv_block_size
        bad: list[Any] = []
        # After check_raw (or on a file that passed it) only the header's length is wanted.
        header = scan_csv_header(f, 1 << 62, 1 << 62).length
        # A header longer than a block (thousands of long names) would read as "empty": the block
        # must hold the whole first line. Sized once, before pyarrow opens the file: a reader
        # given up on keeps reading ahead from the same file in the background, so a second
        # attempt could see its bytes interleaved (a header cut short, seen under load). Not
        # larger than needed: pyarrow reads ahead several blocks, and on a narrow file that
        # would cost the API ~100 MB.
        scale = next((s for s in (1, 8, 64) if block_size * s > header), 64)
        try:
            names = [str(n) for n in _csv_reader(f, None, bad, block_size, scale).schema.names]
        except (pa.ArrowException, UnicodeDecodeError) as e:
            raise _csv_error(e, bad) from None
        for sep, what in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if len(names) == 1 and sep in names[0]:
                raise DataError(
                    f"the CSV header is one column, {snip(names[0])}, separated by {what}: "
                    "droptune reads comma-separated CSV; save the file with commas"
                )
        check_names(names, "CSV header")
        batches = _csv_batches(f, names, bad, block_size)
        return Source(names, ["text"] * len(names), None, batches, f.seek(0, 2))
