"""Attacks on data-set uploads, each reproduced: files whose headers or directories cost the API
hundreds of times their size to parse (measured in a child process), a compressed NPZ counted
by its compressed size against the quota, and a second file part in one upload."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from droptune.datafiles import rawcheck
from droptune.datafiles.datacheck import DataError, Limits
from droptune.datafiles.rawcheck import (
    check_csv_header,
    check_parquet_footer,
    check_zip_directory,
    scan_csv_header,
)
from droptune.service.app import create_app
from droptune.service.settings import ServiceSettings
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import dataset_chunks, datasets

MB = 2**20

# ------------------------------------------------------------- 1: memory out of proportion

HEADERS = [
    (b"a,b,c\n1,2,3\n", 3),
    (b"a,b,c", 3),  # no newline: the header is the file
    (b"a,b,", 3),  # an empty last name is still a field
    (b'"a,b",c\n1,2\n', 2),  # a comma inside quotes
    (b'"a""b,",c\n1,2\n', 2),  # an escaped quote, then a comma, inside quotes
    (b'"a""",",",c\n1,2,3\n', 3),  # a field ending in an escaped quote
    (b'a,"b\nc",d\n1,2,3\n', 3),  # a newline inside quotes
    (b'a,"b\r\nc",d\r\n1,2,3\r\n', 3),  # CRLF, inside and after
    (b"a,b\rc,d,e\r", 2),  # CR alone ends the header
    (b'x,y"z,w\n1,2,3\n', 3),  # a quote inside an unquoted field is a plain character
    (b'"a"x,b\n1,2\n', 2),  # text after a closing quote
    (b'\xef\xbb\xbf"a,b",c\n1,2\n', 2),  # a UTF-8 BOM before a quoted field
    (b'\n\r\n"a,b",c,d\n1,2,3\n', 3),  # empty lines before the header are skipped
    (b",,,,\n1,2,3,4,5\n", 5),
]


@pytest.mark.parametrize("read_size", [1, 2, 3, 7, 1 << 20])
@pytest.mark.parametrize(("data", "fields"), HEADERS)
def test_the_header_field_counter(data: bytes, fields: int, read_size: int) -> None:
    scan = scan_csv_header(io.BytesIO(data), 100, 1 << 20, read_size)
    assert (scan.fields, scan.complete) == (fields, True)
    assert 0 < scan.length <= len(data)
    # pyarrow, reading as storage.tabular does, splits the header the same way.
    parse = pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=lambda _: "skip")
    row = b"\n" + b",".join([b"1"] * fields)
    names = pacsv.open_csv(io.BytesIO(data + row), parse_options=parse)
    assert len(names.schema.names) == fields


def test_the_header_counter_stops_past_the_limit() -> None:
    wide = io.BytesIO(b",".join(b"c%d" % i for i in range(100_000)) + b"\n")
    scan = scan_csv_header(wide, 10, 1 << 30, read_size=4096)
    assert 10 < scan.fields < 2000 and scan.length <= 8192 and not scan.complete
    with pytest.raises(DataError) as exc:  # counted to its end (in the first 1 MiB read)
        check_csv_header(wide, Limits(max_columns=10))
    assert exc.value.detail == (
        "the file has 99999 feature columns, more than the limit of 10 (DROPTUNE_MAX_COLUMNS)"
    )
    wider = io.BytesIO(b",".join(b"c%d" % i for i in range(300_000)) + b"\n")
    with pytest.raises(DataError) as exc:  # counting stopped after the first 1 MiB
        check_csv_header(wider, Limits(max_columns=10))
    assert exc.value.detail == (
        "the CSV header has more than 10 feature columns, the limit (DROPTUNE_MAX_COLUMNS=10)"
    )
    # Ten columns in names far longer than any header needs: the line's length is refused.
    long = io.BytesIO(b",".join([b"x" * (1 << 20)] * 3) + b"\n1,2,3\n")
    with pytest.raises(DataError, match="header line is longer than 1048576 bytes"):
        check_csv_header(long, Limits(max_columns=10))
    # An unclosed quote swallows the whole file into the header: refused the same way.
    with pytest.raises(DataError, match="header line is longer"):
        check_csv_header(io.BytesIO(b'a,"b\n' + b"1,2\n" * 300_000), Limits(max_columns=10))


# The peak is read from VmHWM, not getrusage's ru_maxrss: a child keeps the ru_maxrss of the
# process it was forked from (the test's, large after making the files), VmHWM starts afresh.
CHILD = """
import json, sys
from droptune.datafiles import datafile

def peak() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

path, fmt = sys.argv[1], sys.argv[2]
before, out = peak(), {}
try:
    with open(path, "rb") as f:
        out["features"] = datafile.inspect(f, fmt).features
except datafile.DataError as e:
    out["error"] = e.detail
out["growth"] = peak() - before
print(json.dumps(out))
"""


# What inspecting any file may cost beyond twice its size. quoted_csv's inspection peaks at 66 MB
# alone, and at 107.5 MB (the same to 0.1 MB in two clean-clone CI runs, Arrow on one thread or
# many) inside the full parallel suite, whose busy memory changes how the allocator's arenas are
# backed; the attacks this guards against cost 9 GB.
BASE_GROWTH = 160 * MB


def inspect_in_child(path: Path, fmt: str) -> dict[str, Any]:
    """inspect() in a fresh Python: its peak RSS growth over the call, and what it said."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), fmt],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def wide_csv(path: Path) -> None:
    names = ",".join(f"c{i}" for i in range(1_000_000))
    path.write_text(names + "\n" + ",".join(["1"] * 1_000_000) + "\n")


def long_csv(path: Path) -> None:
    path.write_bytes(b"a,b,y\n" + b"1.5,2,0\n3,4.25,1\n" * 1_200_000)


def quoted_csv(path: Path) -> None:
    # 5 000 names holding two commas each: 15 000 commas, 5 000 columns (within the limit).
    names = ",".join(f'"x,y,z{i}"' for i in range(5000))
    rows = "\n".join(",".join([str(r % 2)] * 5000) for r in range(4))
    path.write_text(names + "\n" + rows + "\n")


def wide_parquet(path: Path) -> None:
    one = pa.array([1], pa.int8())
    columns = 60_000
    table = pa.Table.from_arrays([one] * columns, names=[f"c{i}" for i in range(columns)])
    pq.write_table(table, path, compression="none")


def npy_header_bomb(path: Path) -> None:
    """An NPZ whose X.npy declares a 4 GB header (.npy version 2): 200 MB of spaces follow,
    a few hundred KB compressed, all read by numpy before it checks the header's length."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("X.npy", "w", force_zip64=True) as m:
            m.write(b"\x93NUMPY\x02\x00" + (2**32 - 1).to_bytes(4, "little"))
            block = b" " * MB
            for _ in range(200):
                m.write(block)
        buf = io.BytesIO()
        np.save(buf, np.zeros(3))
        zf.writestr("y.npy", buf.getvalue())


ATTACKS = [
    (wide_csv, "csv", "the CSV header has more than 10000 feature columns"),
    (long_csv, "csv", None),
    (quoted_csv, "csv", None),
    (wide_parquet, "parquet", "the Parquet file has 60000 columns, more than the limit of 10000"),
    (npy_header_bomb, "npz", "X.npy's header is 4294967295 bytes long, more than 10000"),
]


@pytest.mark.parametrize(("make", "fmt", "refusal"), ATTACKS, ids=[a[0].__name__ for a in ATTACKS])
def test_inspecting_costs_about_the_file_size(
    make: Any, fmt: str, refusal: str | None, tmp_path: Path
) -> None:
    path = tmp_path / f"{make.__name__}.{fmt}"
    make(path)
    size = path.stat().st_size
    out = inspect_in_child(path, fmt)
    print(make.__name__, size, out)
    assert out["growth"] < BASE_GROWTH + 2 * size, out
    if refusal is None:
        assert "error" not in out, out
    else:
        assert refusal in out.get("error", ""), out


def _long_form_footer(path: Path) -> bytes:
    """The Parquet file at `path` with its footer's first field header in the long form."""
    data = path.read_bytes()
    n = int.from_bytes(data[-8:-4], "little")
    footer = data[-8 - n : -8]
    assert footer[0] == 0x15  # field 1 (delta 1), an i32
    footer = b"\x05\x02" + footer[1:]  # type i32, delta 0, then the id 1 as a zigzag varint
    return data[: -8 - n] + footer + len(footer).to_bytes(4, "little") + b"PAR1"


def test_parquet_footer_and_zip_directory_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.parquet"
    pq.write_table(pa.table({f"c{i}": [1] for i in range(20)}), path)
    with path.open("rb") as f:
        check_parquet_footer(f, Limits(max_columns=19))
        with pytest.raises(DataError, match="has 20 columns, more than the limit of 17"):
            check_parquet_footer(f, Limits(max_columns=17))
        monkeypatch.setattr(rawcheck, "MAX_FOOTER_BYTES", 100)
        with pytest.raises(DataError, match=r"footer \(its metadata\) is \d+ bytes, more than"):
            check_parquet_footer(f, Limits())
    with pytest.raises(DataError, match="footer is missing or corrupt"):
        check_parquet_footer(io.BytesIO(b"PAR1" + b"\0" * 20 + b"\xff\0\0\0PAR1"), Limits())
    monkeypatch.undo()
    # The second probe: field 1's header in thrift's long form (legal; pyarrow reads it), which
    # hid a 400 000-column schema from a reader of the short form only.
    long_form = _long_form_footer(path)
    assert pq.ParquetFile(io.BytesIO(long_form)).metadata.num_columns == 20  # still valid
    check_parquet_footer(io.BytesIO(long_form), Limits(max_columns=19))
    with pytest.raises(DataError, match="has 20 columns, more than the limit of 17"):
        check_parquet_footer(io.BytesIO(long_form), Limits(max_columns=17))
    garbled = bytearray(long_form)
    start = len(garbled) - 8 - int.from_bytes(garbled[-8:-4], "little")
    garbled[start] = 0x0D  # a type no thrift value has
    with pytest.raises(DataError, match="footer could not be read"):
        check_parquet_footer(io.BytesIO(bytes(garbled)), Limits())
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as zf:
        for name in ["X.npy", "y.npy", *(f"pad{i}" for i in range(100))]:
            zf.writestr(name, b"")
    with pytest.raises(DataError, match="directory lists 102 members"):
        check_zip_directory(many)


# ------------------------------------------------------------- 8 and 9: through the API


@pytest.fixture
def api(db_url: str) -> Iterator[TestClient]:
    settings = ServiceSettings(database_url=db_url, quota_dataset_mb=4)
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        yield client


def stored(db_url: str) -> tuple[int, int]:
    """(data set records, chunk rows) in the database."""
    engine = create_engine(db_url)
    try:
        with transaction(engine, read_only=True) as conn:
            counts = [
                conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for t in (datasets, dataset_chunks)
            ]
    finally:
        engine.dispose()
    return int(counts[0]), int(counts[1])


def zeros_npz(rows: int, features: int = 100) -> bytes:
    buf = io.BytesIO()
    y = np.arange(rows) % 2
    np.savez_compressed(buf, X=np.zeros((rows, features)), y=y)
    return buf.getvalue()


def test_the_quota_counts_an_npz_decompressed(api: TestClient, db_url: str) -> None:
    small = zeros_npz(1000)  # 0.8 MB decompressed
    r = api.post("/datasets", files={"file": ("small.npz", small)})
    assert r.status_code == 201, r.text
    first = r.json()
    bomb = zeros_npz(62_500)  # 50 MB of zeros, ~50 KB compressed
    assert len(bomb) < MB
    r = api.post("/datasets", files={"file": ("zeros.npz", bomb)})
    assert r.status_code == 403, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"].startswith(
        "quota DROPTUNE_QUOTA_DATASET_MB=4 exceeded: your stored data sets take 0.8 MB and "
        "this upload 48.2 MB, counted decompressed"
    )
    assert stored(db_url) == (1, 1)  # nothing of the refused upload
    held = 1000 * 100 * 8 + 128 + 1000 * 8 + 128  # X and y with their .npy headers
    assert (first["bytes"], first["held_bytes"]) == (len(small), held)
    # The review's bypass: a stored member no reader touches still counts (held >= the file).
    padded = io.BytesIO()
    x, y = np.zeros((10, 4), np.float32), np.arange(10) % 2
    np.savez(padded, X=x, y=y, pad=np.zeros(5 * MB, np.uint8))
    r = api.post("/datasets", files={"file": ("padded.npz", padded.getvalue())})
    assert r.status_code == 403, r.text
    assert "this upload 5.0 MB" in r.json()["detail"]
    assert stored(db_url) == (1, 1)


def test_one_file_part_per_upload(api: TestClient, db_url: str, tmp_path: Path) -> None:
    a, b = zeros_npz(100), zeros_npz(200)
    for parts in (
        [("file", ("a.npz", a)), ("file", ("b.npz", b))],  # `file` twice: the last won
        [("file", ("a.npz", a)), ("other", ("b.npz", b))],  # a file under another name
        [("file", (None, "text")), ("file", ("b.npz", b))],  # a text part named `file` first
    ):
        r = api.post("/datasets", files=parts)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["errors"][0]["field"] == "file"
        assert "one file" in problem["detail"] and "2 file parts" in problem["detail"], problem
    assert stored(db_url) == (0, 0)
    r = api.post("/datasets", files=[("file", ("a.npz", a))], data={"name": "one"})
    assert r.status_code == 201, r.text
