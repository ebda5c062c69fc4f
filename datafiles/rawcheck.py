"""Checks on a file's raw bytes, made before any parser builds objects for what the file declares.

A parser's objects can cost hundreds of times the bytes that declare them: pyarrow infers every
column of a CSV header (a 12 MB header of 10^6 columns took 9 GB), parses a Parquet footer whole
(a 20 MB footer of 10^5 columns, 300 MB), and zipfile makes an object of every member of an
archive. So the header, the footer and the zip directory are measured here first, in a few reads
of bounded size, and refused past the limits with a one-line `DataError`: no upload may cost the
API more than a small constant plus about the file's own size.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import BinaryIO

from droptune.datafiles.datacheck import DataError, Limits

# Bytes read at a time while the CSV header is scanned.
SCAN_BYTES = 1 << 20
# A header line may be this long whatever the column limit, and 256 bytes a column beyond it.
MIN_HEADER_BYTES = 1 << 20
HEADER_BYTES_PER_COLUMN = 256
# A Parquet footer may be this long, or 1/16 of the file where that is more: parsing it costs
# about 11x its bytes (measured), so a bounded footer bounds that cost near the file's size.
MAX_FOOTER_BYTES = 8 << 20
# An NPZ holds X and y; a few more members (np.savez of extra arrays) are allowed.
MAX_ZIP_MEMBERS = 16
MAX_ZIP_DIRECTORY = 1 << 20

_BOM = b"\xef\xbb\xbf"
# Outside quotes, only a newline (the header ends) or a quote opening a field matters; the
# commas in between are counted with bytes.count. A quote inside an unquoted field is a plain
# character to pyarrow, as here.
_UNQUOTED_STOP = re.compile(rb'[\r\n]|,"')


@dataclass(frozen=True)
class HeaderScan:
    fields: int  # the header's fields, or a count past `max_fields` where counting stopped
    length: int  # bytes scanned: the header line with its newline, or up to where it stopped
    complete: bool  # whether the scan reached the header's end (a newline or the file's end)


def _unquoted(buf: bytes, pos: int, fields: int) -> tuple[int, int, bool | None]:
    """One step outside quotes: (pos, fields, None to read on | True at a quote | False at the
    header's end). A comma ending the buffer is left unread: a quote may follow it."""
    m = _UNQUOTED_STOP.search(buf, pos)
    if m is None:
        end = len(buf) - 1 if buf.endswith(b",") else len(buf)
        return end, fields + buf.count(b",", pos, end), None
    fields += buf.count(b",", pos, m.start())
    if m.group() == b',"':
        return m.end(), fields + 1, True
    return m.start() + 1, fields, False


def scan_csv_header(
    f: BinaryIO, max_fields: int, max_bytes: int, read_size: int = SCAN_BYTES
) -> HeaderScan:
    """Count the fields of the CSV header the way pyarrow splits it (commas outside double
    quotes, `""` an escaped quote, the header ending at the first CR or LF outside quotes, empty
    lines and a UTF-8 BOM before it skipped), reading `read_size` bytes at a time. Stops once
    the count passes `max_fields` or `max_bytes` have been read."""
    f.seek(0)
    buf = f.read(max(read_size, len(_BOM)))
    base = len(_BOM) if buf.startswith(_BOM) else 0
    buf = buf[base:]
    pos, fields, quoted, started = 0, 1, False, False
    while True:  # each pass either moves on in `buf` (continue) or needs more bytes
        if not started:  # empty lines before the header are skipped (pyarrow's default)
            pos = len(buf) - len(buf.lstrip(b"\r\n"))
            if pos < len(buf):
                started, quoted = True, buf[pos : pos + 1] == b'"'
                pos += quoted
                continue
        elif quoted:
            q = buf.find(b'"', pos)
            if q >= 0 and q + 1 < len(buf):  # the byte after the quote tells an escape
                pos, quoted = (q + 2, True) if buf[q + 1 : q + 2] == b'"' else (q + 1, False)
                continue
            pos = len(buf) if q < 0 else q
        else:
            pos, fields, opened = _unquoted(buf, pos, fields)
            if opened is False:
                return HeaderScan(fields, base + pos, True)
            if opened:
                quoted = True
                continue
        if fields > max_fields or base + pos > max_bytes:
            return HeaderScan(fields, base + pos, False)
        more = f.read(read_size)
        if not more:  # the header is the whole file
            fields += 0 if quoted else buf.count(b",", pos)
            return HeaderScan(fields, base + len(buf), True)
        base, buf, pos = base + pos, buf[pos:] + more, 0


def header_bytes_limit(limits: Limits) -> int:
    return max(MIN_HEADER_BYTES, HEADER_BYTES_PER_COLUMN * (limits.max_columns + 1))


def check_csv_header(f: BinaryIO, limits: Limits) -> int:
    """Refuse a CSV header with more fields than the column limit allows (the target and
    `max_columns` features), or a header line too long; returns the header line's length."""
    max_bytes = header_bytes_limit(limits)
    scan = scan_csv_header(f, limits.max_columns + 1, max_bytes)
    if scan.fields > limits.max_columns + 1 and scan.complete:  # counted to the end
        raise DataError(
            f"the file has {scan.fields - 1} feature columns, more than the limit of "
            f"{limits.max_columns} (DROPTUNE_MAX_COLUMNS)"
        )
    if scan.fields > limits.max_columns + 1:
        raise DataError(
            f"the CSV header has more than {limits.max_columns} feature columns, the limit "
            f"(DROPTUNE_MAX_COLUMNS={limits.max_columns})"
        )
    if scan.length > max_bytes:
        raise DataError(
            f"the CSV header line is longer than {max_bytes} bytes, the most for "
            f"{limits.max_columns} columns (DROPTUNE_MAX_COLUMNS): is the file CSV with a header?"
        )
    return scan.length


# How much of a Parquet footer is walked to find its schema's length (writers put it first).
FOOTER_HEAD_BYTES = 4096


def _thrift_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not b & 0x80:
            return value, pos
    raise ValueError("truncated varint")


class _Thrift:
    """Enough of thrift's compact protocol to walk a struct's fields and skip their values."""

    MAX_DEPTH = 16

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        b = self.data[self.pos]  # IndexError past the end: the caller gives up
        self.pos += 1
        return b

    def varint(self) -> int:
        value, self.pos = _thrift_varint(self.data, self.pos)
        return value

    def field(self, last: int) -> tuple[int, int] | None:
        """The next field's (id, type), or None at the struct's end. A header byte holds the
        type and the id's delta from the last field; a delta of 0 (the long form, legal for
        any field) is followed by the id as a zigzag varint."""
        b = self.byte()
        if b == 0:
            return None
        delta = b >> 4
        if delta:
            return last + delta, b & 0x0F
        raw = self.varint()
        return (raw >> 1) ^ -(raw & 1), b & 0x0F

    def list_head(self) -> tuple[int, int]:
        """A list's or set's (size, element type)."""
        b = self.byte()
        return (self.varint() if b >> 4 == 0x0F else b >> 4), b & 0x0F

    def skip(self, kind: int, depth: int = 0, in_list: bool = False) -> None:
        if depth > self.MAX_DEPTH:
            raise ValueError("nested too deep")
        if kind in (1, 2):  # a bool: in the field header, or one byte in a list
            self.pos += 1 if in_list else 0
        elif kind == 3:
            self.pos += 1
        elif kind in (4, 5, 6):
            self.varint()
        elif kind == 7:
            self.pos += 8
        elif kind == 8:
            self.pos += self.varint()
        elif kind in (9, 10):
            size, elem = self.list_head()
            for _ in range(size):
                self.skip(elem, depth + 1, in_list=True)
        elif kind == 11:
            size = self.varint()
            if size:
                types = self.byte()
                for _ in range(size):
                    self.skip(types >> 4, depth + 1, in_list=True)
                    self.skip(types & 0x0F, depth + 1, in_list=True)
        elif kind == 12:
            last = 0
            while (f := self.field(last)) is not None:
                last = f[0]
                self.skip(f[1], depth + 1)
        else:
            raise ValueError(f"unknown thrift type {kind}")
        if self.pos > len(self.data):
            raise IndexError("past the end")


def parquet_schema_elements(footer_head: bytes) -> int | None:
    """The length of FileMetaData's schema list (field 2), walked to from the footer's first
    bytes in thrift's compact protocol whatever the fields before it and however their headers
    are written (short or long form: issue 19's second probe wrote field 1's header long, which
    an earlier shortcut did not read). None when it cannot be read from these bytes."""
    r = _Thrift(footer_head)
    last = 0
    try:
        while (f := r.field(last)) is not None:
            last, kind = f
            if last == 2:
                if kind != 9:
                    return None
                size, elem = r.list_head()
                return size if elem == 12 else None
            r.skip(kind)
    except (ValueError, IndexError):
        return None
    return None


def check_parquet_footer(f: BinaryIO, limits: Limits) -> None:
    """Refuse a Parquet file whose footer is longer than the bound, or whose schema lists more
    columns than the limit allows, before pyarrow parses the footer."""
    size = f.seek(0, 2)
    if size < 12:
        raise DataError("the file is not a valid Parquet file: it is too short")
    f.seek(size - 8)
    tail = f.read(8)
    footer = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or footer > size - 12:
        raise DataError("the file is not a valid Parquet file: its footer is missing or corrupt")
    f.seek(size - 8 - footer)
    elements = parquet_schema_elements(f.read(min(footer, FOOTER_HEAD_BYTES)))
    if elements is None:  # pyarrow would parse it whole before anything is known of its width
        raise DataError(
            "the Parquet file's footer could not be read (its schema does not come where "
            "Parquet writers put it): write the file with pyarrow or pandas"
        )
    # The schema lists its root, each column, and each group of nested columns; the target and
    # a pandas index column come on top of the feature columns.
    if elements - 1 > limits.max_columns + 2:
        raise DataError(
            f"the Parquet file has {elements - 1} columns, more than the limit of "
            f"{limits.max_columns} feature columns (DROPTUNE_MAX_COLUMNS)"
        )
    bound = max(MAX_FOOTER_BYTES, size // 16)
    if footer > bound:
        raise DataError(
            f"the Parquet file's footer (its metadata) is {footer} bytes, more than {bound}: "
            "write the file with fewer columns or fewer row groups"
        )
    f.seek(0)


def _zip_directory(tail: bytes) -> tuple[int, int] | None:
    """(members, directory bytes) as zipfile will read them from the archive's last bytes:
    the last end-of-directory record, or the zip64 record right before it when there is one."""
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None  # zipfile itself says the file is not a zip archive
    members, directory = struct.unpack_from("<HL", tail, at + 10)
    z64 = at - 20 - 56
    locator, record = tail[at - 20 : at - 16], tail[z64 : z64 + 4]
    if z64 >= 0 and locator == b"PK\x06\x07" and record == b"PK\x06\x06":
        members, directory = struct.unpack_from("<QQ", tail, z64 + 32)
    return members, directory


def check_zip_directory(f: BinaryIO) -> None:
    """Refuse an archive whose directory lists more members, or takes more bytes, than an NPZ
    of X and y needs, before zipfile makes an object of each member."""
    size = f.seek(0, 2)
    f.seek(max(0, size - (22 + 0xFFFF + 20 + 56)))  # the record, its comment, the zip64 parts
    found = _zip_directory(f.read())
    f.seek(0)
    if found is not None and (found[0] > MAX_ZIP_MEMBERS or found[1] > MAX_ZIP_DIRECTORY):
        raise DataError(
            f"the NPZ file's zip directory lists {found[0]} members in {found[1]} bytes: an NPZ "
            f"file holds arrays X and y (at most {MAX_ZIP_MEMBERS} members)"
        )
