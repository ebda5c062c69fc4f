"""The Parquet format: typed columns read in record batches whose rows shrink as the table widens.

The raw check measures the footer and its schema's length (`datafiles.rawcheck`) before pyarrow
parses it whole; opening then refuses column chunks that decompress to far more than the file.
A column's Parquet type fixes how it is read (number, string or bool).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from droptune.datafiles.datacheck import DataError, How, Limits, Tuning
from droptune.datafiles.rawcheck import check_parquet_footer
from droptune.datafiles.tabular import Source, TabularFormat, check_names

# A Parquet column chunk may decompress to at most this, or 8x the file if that is more.
PARQUET_MAX_CHUNK_BYTES = 64 << 20


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


class ParquetFormat(TabularFormat):
    name = "parquet"
    label = "Parquet"

    def detect(self, head: bytes) -> bool:
        return head.startswith(b"PAR1")

    def check_raw(self, f: BinaryIO, limits: Limits) -> None:
        # pyarrow parses the whole footer at ~11x its bytes: its length and column count first.
        check_parquet_footer(f, limits)

    def open(self, f: BinaryIO, tuning: Tuning) -> Source:
        f.seek(0)
        try:
            # By default a row group's column chunks are read whole; a buffered stream reads
            # them piecewise, so one large row group does not fill memory.
            pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20)
            schema = pf.schema_arrow
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"the file is not a valid Parquet file: {e}") from None
        # pandas stores a non-default index as an extra column; it is not data.
        meta = schema.pandas_metadata or {}
        index = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
        names = [str(n) for n in schema.names if n not in index]
        check_names(names, "Parquet file")
        unpacked = _check_parquet_sizes(pf, f)
        hows = [_parquet_how(n, schema.field(n).type) for n in names]
        rows = int(pf.metadata.num_rows)
        batches = _parquet_batches(pf, names, tuning.parquet_batch_cells)
        return Source(names, hows, rows, batches, unpacked)
