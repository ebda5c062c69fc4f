"""Reading and validating uploaded NPZ files (arrays X and y), good and bad."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from droptune.datafiles import datafile
from droptune.datafiles.datafile import DataError, Limits
from tests.datafile_helpers import refused, reload, summarise, write_npz


def test_npz_tabular(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 5)), np.repeat([3, 7], 20)
    path = write_npz(tmp_path, X=X, y=y)
    s = summarise(path)
    assert (s.format, s.rows, s.features, s.encoded_features) == ("npz", 40, 5, 5)
    assert (s.target, s.columns, s.image_shape) == (None, [], None)
    assert s.classes == ["3", "7"] and s.class_counts == [20, 20]
    t = reload(path, s)
    assert isinstance(t.X, np.ndarray) and t.X.dtype == np.float32 and t.X.shape == (40, 5)
    np.testing.assert_allclose(t.X, X.astype(np.float32))
    assert t.y.tolist() == [0] * 20 + [1] * 20
    path = write_npz(tmp_path, X=X, y=X[:, 0])
    s = summarise(path)
    assert s.task == "regression" and reload(path, s).y.tolist() == X[:, 0].tolist()


@pytest.mark.parametrize(("shape", "image"), [((12, 8, 8), [1, 8, 8]), ((12, 3, 4, 5), [3, 4, 5])])
def test_npz_images_with_string_labels(
    tmp_path: Path, shape: tuple[int, ...], image: list[int]
) -> None:
    X = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    y = np.array(["zebra", "ant", "moth"] * 4)
    path = write_npz(tmp_path, X=X, y=y)
    s = summarise(path)
    assert s.image_shape == image and s.features == s.encoded_features == np.prod(image)
    assert (s.task, s.classes, s.class_counts) == (
        "classification",
        ["ant", "moth", "zebra"],
        [4] * 3,
    )
    t = reload(path, s)
    assert t.X.shape == (12, np.prod(image)) and t.X.dtype == np.float32
    assert t.y.tolist() == [2, 0, 1] * 4


class Boom:
    """Unpickling this would record it: the reader must refuse before that."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (UNPICKLED.append, ("unpickled",))


UNPICKLED: list[str] = []


def npy_bomb(tmp_path: Path) -> Path:
    """An NPZ whose X header declares 10^12 float64 cells but holds no data."""
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for name, shape in (("X", (10**9, 1000)), ("y", (10**9,))):
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": "<f8", "fortran_order": False, "shape": shape}
            )
            zf.writestr(f"{name}.npy", header.getvalue())
    return path


# --------------------------------------------------------------------------- bad inputs


def bad_npz(**arrays: Any) -> Any:
    return lambda tmp: write_npz(tmp, **arrays)


X20 = np.zeros((20, 3))
Y20 = np.repeat([0, 1], 10)
NPZ_CASES: list[tuple[str, Any, dict[str, Any], str]] = [
    (
        "npz non-finite",
        bad_npz(X=np.full((20, 3), np.inf), y=Y20),
        {},
        "X has 60 non-finite value(s) (NaN or inf), the first at X[0, 0]",
    ),
    ("npz nan y", bad_npz(X=X20, y=np.full(20, np.nan)), {}, "y has 20 non-finite"),
    ("npz lengths", bad_npz(X=X20, y=Y20[:-1]), {}, "X has 20 rows but y has 19 labels"),
    ("npz 5-D", bad_npz(X=np.zeros((4, 1, 2, 2, 2)), y=Y20[:4]), {}, "X has 5 dimensions"),
    (
        "channels last",
        bad_npz(X=np.zeros((4, 16, 16, 3), np.uint8), y=Y20[:4]),
        {},
        "looks like (N, H, W, C) with 3 channel(s) last: droptune takes images as (N, C, H, W)",
    ),
    (
        "big image",
        bad_npz(X=np.zeros((2, 2, 8, 8)), y=Y20[:2]),
        {"limits": Limits(max_image_values=100)},
        "C*H*W = 128 values, more than the limit of 100",
    ),
    ("npz no y", bad_npz(X=X20, labels=Y20), {}, "has no y (found: 'X', 'labels')"),
    ("npz y 2-D", bad_npz(X=X20, y=np.zeros((20, 2))), {}, "y must have shape (N,)"),
    ("npz complex", bad_npz(X=X20.astype(complex), y=Y20), {}, "X must hold numbers"),
    ("npz target", bad_npz(X=X20, y=Y20), {"target": "label"}, "target is its array y"),
    ("bomb", npy_bomb, {}, "more than the limit of 500000000 cells"),
]


@pytest.mark.parametrize(
    ("make", "kw", "message"), [c[1:] for c in NPZ_CASES], ids=[c[0] for c in NPZ_CASES]
)
def test_bad_input(tmp_path: Path, make: Any, kw: dict[str, Any], message: str) -> None:
    assert message in refused(make(tmp_path), **kw)


def test_npz_object_array_is_never_unpickled(tmp_path: Path) -> None:
    path = write_npz(tmp_path, X=np.array([[Boom()]] * 4, dtype=object), y=Y20[:4])
    assert "dtype object (pickled Python objects)" in refused(path)
    assert UNPICKLED == []


def test_npz_size_mismatch_refused(tmp_path: Path) -> None:
    """A member whose zip entry claims more bytes than its header describes is not read."""
    path = write_npz(tmp_path, X=X20, y=Y20)
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("X.npy", members["X.npy"] + b"\x00" * 4096)
        zf.writestr("y.npy", members["y.npy"])
    assert "the archive is corrupt" in refused(path)


def test_npz_variants(tmp_path: Path) -> None:
    """Compressed archives, Fortran order, y of shape (N, 1) and boolean labels."""
    X = np.asfortranarray(np.arange(20.0).reshape(10, 2))
    path = tmp_path / "c.npz"
    np.savez_compressed(path, X=X, y=np.array([[True], [False]] * 5))
    s = summarise(path)
    assert (s.classes, s.class_counts, s.features) == (["False", "True"], [5, 5], 2)
    t = reload(path, s)
    np.testing.assert_array_equal(t.X, X)
    assert t.y.tolist() == [1, 0] * 5


def test_an_npz_with_two_arrays_of_one_name_is_refused(tmp_path: Path) -> None:
    """np.load would train on `X` where the checks read `X.npy`: refused outright."""
    good, bad = io.BytesIO(), io.BytesIO()
    np.save(good, np.zeros((20, 3)))
    np.save(bad, np.full((20, 50), np.nan))
    labels = io.BytesIO()
    np.save(labels, Y20)
    path = tmp_path / "two.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("X.npy", good.getvalue())
        z.writestr("X", bad.getvalue())
        z.writestr("y.npy", labels.getvalue())
    with pytest.raises(DataError, match="more than one array named 'X'"):
        summarise(path)


def test_a_compressed_y_is_read_in_chunks(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(datafile, "NPZ_CHUNK_BYTES", 64)  # many chunks for 400 labels
    path = write_npz(tmp_path, X=np.arange(800.0).reshape(400, 2), y=np.arange(400) % 3)
    s = summarise(path)
    assert s.class_counts == [134, 133, 133] and s.rows == 400
    long = write_npz(tmp_path, "long.npz", X=X20, y=np.array(["a" * 300] * 10 + ["b"] * 10))
    with pytest.raises(DataError, match="300 characters long; at most 200"):
        summarise(long)
