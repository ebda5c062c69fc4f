"""The NPZ reader: arrays X and y in a zip archive, checked before they are decompressed.

`inspect_npz` reads only the .npy headers to check dtypes, shapes and sizes against the limits,
then decompresses X in bounded chunks to check its values; pickled arrays are always refused.
`load_npz` reads both arrays whole once the stored summary has bounded their size.
`NpzFormat` is the format `datafiles.formats` registers.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from droptune.core.schemas import DataSummary
from droptune.datafiles.columns import FLOAT32_MAX, Chunk, TargetStats, encode_target
from droptune.datafiles.datacheck import (
    DataError,
    How,
    Limits,
    Table,
    Task,
    Tuning,
    changed,
    check_cells,
    some,
)
from droptune.datafiles.rawcheck import check_zip_directory


@dataclass
class _NpyHeader:
    name: str
    member: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    offset: int  # bytes of .npy header before the data
    fortran: bool = False  # values stored column-major

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


# Longest class label in a string y: labels are stored and shown with the data set.
MAX_LABEL_CHARS = 200


# numpy reads a .npy header whole before it checks its length against this (its own bound);
# a version 2 header may declare 4 GB, read from a few MB of compressed spaces. Checked first.
MAX_NPY_HEADER = 10_000


def _npy_header(zf: zipfile.ZipFile, name: str, info: zipfile.ZipInfo) -> _NpyHeader:
    fmt = np.lib.format
    try:
        with zf.open(info) as m:
            version = fmt.read_magic(m)
            if version not in ((1, 0), (2, 0)):
                raise DataError(f"array {name} uses .npy version {version}, not supported")
            size = m.read(2 if version == (1, 0) else 4)
            length = int.from_bytes(size, "little")
            if length > MAX_NPY_HEADER:
                raise DataError(
                    f"array {name} in the NPZ file is not a valid .npy array: {name}.npy's "
                    f"header is {length} bytes long, more than {MAX_NPY_HEADER}"
                )
            header = io.BytesIO(size + m.read(length))
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(header)
            offset = m.tell()
    except (*_ZIP_ERRORS, SyntaxError) as e:
        raise DataError(f"array {name} in the NPZ file is not a valid .npy array: {e}") from None
    return _NpyHeader(name, info, tuple(int(s) for s in shape), dtype, offset, bool(fortran))


def _npz_headers(zf: zipfile.ZipFile) -> tuple[_NpyHeader, _NpyHeader]:
    """The headers of X and y, read without decompressing (or unpickling) their data."""
    # np.load looks a name up as given before trying it with ".npy": an archive holding both
    # `X` and `X.npy` would be checked as one and trained as the other. Refused.
    names = Counter(i.filename.removesuffix(".npy") for i in zf.infolist())
    twice = sorted(n for n, k in names.items() if k > 1)
    if twice:
        raise DataError(f"the NPZ file holds more than one array named {some(twice)}")
    members = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
    missing = [a for a in ("X", "y") if a not in members]
    office = ("[Content_Types].xml", "mimetype")  # Excel/Word (OOXML); LibreOffice (ODF)
    if missing and (any(o in members for o in office) or any(n.startswith("xl/") for n in members)):
        raise DataError(
            f"the file is an Excel workbook (or another Office file), not NPZ: {OFFICE}"
        )
    if missing:
        found = [n for n in members if not n.endswith("/")]
        raise DataError(
            f"the NPZ file needs arrays X and y; it has no {' or '.join(missing)} "
            f"(found: {some(found) or 'nothing'})"
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
    if hy.dtype.kind == "U" and hy.dtype.itemsize // 4 > MAX_LABEL_CHARS:
        raise DataError(
            f"y's labels are up to {hy.dtype.itemsize // 4} characters long; at most "
            f"{MAX_LABEL_CHARS} (class names, not free text)"
        )


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
    # (N, H, W, C) is how most image libraries hand images over; read as (N, C, H, W) it would
    # train on nonsense without a word. A last axis of 1, 3 or 4 (grey, RGB, RGBA) behind a
    # second axis that is not is taken for channels-last.
    if len(xs) == 4 and xs[3] in (1, 3, 4) and xs[1] not in (1, 3, 4):
        raise DataError(
            f"X has shape {xs}, which looks like (N, H, W, C) with {xs[3]} channel(s) last: "
            "droptune takes images as (N, C, H, W); transpose with X.transpose(0, 3, 1, 2)"
        )
    if len(xs) > 2:
        image = [1, *xs[1:]] if len(xs) == 3 else list(xs[1:])
        if features > limits.max_image_values:
            raise DataError(
                f"each image in X has C*H*W = {features} values, more than the limit of "
                f"{limits.max_image_values}"
            )
    check_cells(xs[0], features, limits)
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


def _npy_chunks(zf: zipfile.ZipFile, h: _NpyHeader, chunk_bytes: int) -> Iterator[npt.NDArray[Any]]:
    """The array's values in flat chunks, so inspect() never holds a decompressed X."""
    step = max(1, chunk_bytes // h.dtype.itemsize) * h.dtype.itemsize
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


def _check_x_values(zf: zipfile.ZipFile, hx: _NpyHeader, chunk_bytes: int) -> None:
    nonfinite = huge = seen = 0
    first: tuple[int, ...] | None = None
    for part in _npy_chunks(zf, hx, chunk_bytes):
        if part.dtype.kind != "f":
            seen += part.size
            continue
        finite = np.isfinite(part)
        bad = int((~finite).sum())
        if bad and first is None:
            flat = seen + int(np.argmax(~finite.reshape(-1)))
            where = np.unravel_index(flat, hx.shape, order="F" if hx.fortran else "C")
            first = tuple(int(i) for i in where)
        nonfinite += bad
        huge += int((np.abs(part[finite]) > FLOAT32_MAX).sum())
        seen += part.size
    if nonfinite:
        raise DataError(
            f"X has {nonfinite} non-finite value(s) (NaN or inf), the first at X{list(first or ())}"
            ": NPZ arrays must be complete (missing values are imputed only in CSV and Parquet "
            "columns)"
        )
    if huge:
        raise DataError(f"X has {huge} values too large for float32 (beyond 3.4e38)")


def _y_chunk(y: npt.NDArray[Any]) -> tuple[Chunk, How]:
    """y as a target column: numbers stay numbers, booleans and strings are labels."""
    y = y.reshape(-1)
    none = np.zeros(len(y), dtype=bool)
    if y.dtype.kind == "b":
        return Chunk(null=none, arrow=pa.array(np.where(y, "True", "False"))), "bool"
    if y.dtype.kind == "U":
        return Chunk(null=none, arrow=pa.array(y, type=pa.string())), "string"
    num = y.astype(np.float64)
    bad = int((~np.isfinite(num)).sum())
    if bad:
        raise DataError(f"y has {bad} non-finite values (NaN or inf)")
    return Chunk(null=none, num=num), "number"


OFFICE = (
    "droptune reads CSV, Parquet and NPZ (arrays X and y); save a spreadsheet as CSV "
    "(Excel: File > Save As > CSV UTF-8) and upload that"
)


def _open_zip(f: BinaryIO) -> zipfile.ZipFile:
    """The archive, once `check_zip_directory` passed (zipfile makes an object of each member
    its directory lists)."""
    try:
        return zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DataError(
            f"the file starts like a zip archive (NPZ, or an Excel .xlsx) but is not a valid "
            f"one ({e}): {OFFICE}"
        ) from None


def inspect_npz(
    f: BinaryIO, target: str | None, task: Task | None, limits: Limits, tuning: Tuning
) -> DataSummary:
    """inspect() for NPZ: headers, shapes and sizes first, then X's values in chunks."""
    with _open_zip(f) as zf:
        hx, hy = _npz_headers(zf)  # an Excel workbook is named here, before any target talk
        if target not in (None, "y"):
            raise DataError(f"an NPZ file's target is its array y; target {target!r} cannot be set")
        _check_npz_dtypes(hx, hy)
        image = _check_npz_shapes(hx, hy, limits)
        _check_npz_sizes((hx, hy), limits)
        # y, like X, in chunks: a compressed y can be far larger than the file.
        labels: TargetStats | None = None
        row = 0
        for part in _npy_chunks(zf, hy, tuning.npz_chunk_bytes):
            chunk, how = _y_chunk(part)
            labels = labels or TargetStats("y", how, limits, tuning.max_inferred_classes)
            labels.add(chunk, row)
            row += len(part)
        _check_x_values(zf, hx, tuning.npz_chunk_bytes)
    assert labels is not None  # y has as many rows as X, and X has rows
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
        # What counts against the quota: the members' uncompressed sizes from the zip headers
        # (checked against their .npy headers), or X as the float32 rows a worker makes of it
        # where that is more (a bool or int8 X).
        held_bytes=max(hx.member.file_size, hx.shape[0] * features * 4) + hy.member.file_size,
    )


def load_npz(f: BinaryIO, summary: DataSummary) -> Table:
    """load() for NPZ: X as float32 rows, y encoded the way `summary` says."""
    with _open_zip(f) as zf:
        hx, hy = _npz_headers(zf)
        _check_npz_dtypes(hx, hy)
        # The stored summary bounds what is decompressed below.
        if hx.shape[0] != summary.rows or math.prod(hx.shape[1:]) != summary.features:
            raise changed(f"X has shape {hx.shape}")
        if hy.shape not in ((summary.rows,), (summary.rows, 1)):
            raise changed(f"y has shape {hy.shape}")
        # The very members inspect() checked (not np.load's lookup by name), without pickles.
        try:
            with zf.open(hx.member) as m:
                X = np.lib.format.read_array(m, allow_pickle=False)
            with zf.open(hy.member) as m:
                y = np.lib.format.read_array(m, allow_pickle=False)
        except _ZIP_ERRORS as e:
            raise DataError(f"the NPZ file could not be read: {e}") from None
    X = np.asarray(X).reshape(summary.rows, -1).astype(np.float32, copy=False)
    chunk, how = _y_chunk(y)
    return Table(X=X, y=encode_target(chunk, how == "number", summary), summary=summary)


class NpzFormat:
    name = "npz"
    label = "NPZ"

    def detect(self, head: bytes) -> bool:
        return head.startswith((b"PK\x03\x04", b"PK\x05\x06"))

    def refuse(self, head: bytes) -> str | None:
        return None

    def check_raw(self, f: BinaryIO, limits: Limits) -> None:
        check_zip_directory(f)

    def inspect(
        self, f: BinaryIO, target: str | None, task: Task | None, limits: Limits, tuning: Tuning
    ) -> DataSummary:
        return inspect_npz(f, target, task, limits, tuning)

    def load(self, f: BinaryIO, summary: DataSummary, tuning: Tuning) -> Table:
        # Checked again: the directory is all that stands between zipfile and a file's members,
        # and the check costs one read of the archive's tail.
        check_zip_directory(f)
        return load_npz(f, summary)
