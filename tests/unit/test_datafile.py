"""Reading and validating uploaded data files: detection, CSV and Parquet, good and bad.

NPZ files are tested in test_npzfile.py.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from droptune.core.errors import Invalid
from droptune.datafiles import datafile
from droptune.datafiles.datafile import DataError, Limits, detect_format, inspect
from tests.datafile_helpers import refused, reload, summarise, write


def frame_of(table: datafile.Table) -> pd.DataFrame:
    assert isinstance(table.X, pd.DataFrame)
    return table.X


# --------------------------------------------------------------------------- detection


def test_detect_format() -> None:
    assert detect_format("a.npz", b"PK\x03\x04rest") == "npz"
    assert detect_format(None, b"PK\x05\x06") == "npz"
    assert detect_format("a.bin", b"PAR1\x15\x04") == "parquet"
    assert detect_format("a.txt", b"a,b\n1,2\n") == "csv"
    assert detect_format("a.csv", b"\xef\xbb\xbfa,b\n") == "csv"
    assert detect_format("a.csv", "x,é".encode()[:-1]) == "csv"  # a character cut by the head
    assert detect_format("a.csv", b"") == "csv"
    with pytest.raises(DataError, match=r"'a\.npz' is not a CSV, NPZ or Parquet file \(its"):
        detect_format("a.npz", b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(DataError, match="not UTF-8 text"):
        detect_format("a.csv", "name,city\nx,Zürich\n".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-16"):
        detect_format("a.csv", "a,b\n".encode("utf-16"))


def test_data_error_is_a_422() -> None:
    err = DataError("one\nline")
    assert isinstance(err, Invalid) and err.status == 422 and err.detail == "one line"


def test_unknown_format_and_task(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown format 'xlsx'"):
        inspect(io.BytesIO(b"a,b\n1,2\n"), "xlsx")
    path = write(tmp_path, "d.csv", "a,label\n1,x\n2,x\n3,y\n4,y\n")
    assert "unknown task 'ranking'" in refused(path, task="ranking")


# --------------------------------------------------------------------------- CSV


def test_breast_cancer_csv(tmp_path: Path) -> None:
    frame = load_breast_cancer(as_frame=True).frame
    path = tmp_path / "bc.csv"
    frame.to_csv(path, index=False)
    s = summarise(path, target="target")
    assert (s.format, s.rows, s.features, s.target) == ("csv", 569, 30, "target")
    assert (s.task, s.task_inferred) == ("classification", True)
    assert s.classes == ["0", "1"] and s.class_counts == [212, 357]
    assert all(c.kind == "numeric" and c.missing == 0 for c in s.columns)
    assert [c.name for c in s.columns] == list(frame.columns[:-1])
    assert s.encoded_features == 30 and s.image_shape is None and s.target_mean is None
    t = reload(path, s)
    X = frame_of(t)
    assert X.shape == (569, 30) and (X.dtypes == np.float64).all()
    np.testing.assert_allclose(X.to_numpy(), frame.iloc[:, :-1].to_numpy())
    assert t.y.dtype == np.int64 and (t.y == frame["target"].to_numpy()).all()


MIXED = (
    "\ufeffsize,city,note,label\n"
    '1.5,Paris,"hello, world",a\n'
    ',Lyon,"two\nlines",b\n'
    '3,,"x",a\n'
    "NA,Paris,y,b\n"
    "5,Nice,,a\n"
)


def test_mixed_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "mixed.csv", MIXED)
    s = summarise(path)
    assert s.target == "label" and s.rows == 5 and s.features == 3
    assert [c.model_dump() for c in s.columns] == [
        {"name": "size", "kind": "numeric", "missing": 2, "categories": None},
        {"name": "city", "kind": "categorical", "missing": 1, "categories": 3},
        {"name": "note", "kind": "categorical", "missing": 1, "categories": 4},
    ]
    # 1 numeric + 3 + 4 categories + 3 missing indicators
    assert s.encoded_features == 11
    assert s.classes == ["a", "b"] and s.class_counts == [3, 2]
    t = reload(path, s)
    assert isinstance(t.X, pd.DataFrame) and list(t.X.columns) == ["size", "city", "note"]
    assert t.X["size"].dtype == np.float64
    np.testing.assert_array_equal(t.X["size"].to_numpy(), [1.5, np.nan, 3.0, np.nan, 5.0])
    assert t.X["city"].dtype == object and t.X["note"].dtype == object
    assert t.X["note"].tolist()[:4] == ["hello, world", "two\nlines", "x", "y"]
    assert t.X["city"].isna().tolist() == [False, False, True, False, False]
    assert all(type(v) is str for v in t.X["city"].dropna())
    assert t.X["city"][2] is np.nan
    assert t.y.tolist() == [0, 1, 0, 1, 0]


def labelled(tmp_path: Path, values: list[Any]) -> Path:
    rows = "".join(f"{i},{v}\n" for i, v in enumerate(values))
    return write(tmp_path, "t.csv", "x,y\n" + rows)


@pytest.mark.parametrize(
    ("values", "task", "classes"),
    [
        (["cat", "dog", "cat", "dog", "emu", "emu"], "classification", ["cat", "dog", "emu"]),
        (["True", "False"] * 3, "classification", ["False", "True"]),
        ([2, 10, 2, 10, 1, 1, "1.0"], "classification", ["1", "2", "10"]),
        ([i % 60 for i in range(120)], "regression", None),
        ([0.5, 1.25, 2.0, 0.5], "regression", None),
    ],
)
def test_task_inference(
    tmp_path: Path, values: list[Any], task: str, classes: list[str] | None
) -> None:
    s = summarise(labelled(tmp_path, values))
    assert (s.task, s.task_inferred, s.classes) == (task, True, classes)
    if task == "regression":
        nums = np.array(values, dtype=float)
        assert s.target_mean == pytest.approx(nums.mean())
        assert s.target_std == pytest.approx(nums.std(ddof=1))


def test_task_override(tmp_path: Path) -> None:
    path = labelled(tmp_path, [0.5, 1.5, 0.5, 1.5, 2.5, 2.5])
    s = summarise(path, task="classification")
    assert (s.task, s.task_inferred) == ("classification", False)
    assert s.classes == ["0.5", "1.5", "2.5"] and s.class_counts == [2, 2, 2]
    assert reload(path, s).y.tolist() == [0, 1, 0, 1, 2, 2]
    s = summarise(labelled(tmp_path, [1, 2, 1, 2]), task="regression")
    assert (s.task, s.task_inferred, s.classes) == ("regression", False, None)
    t = reload(tmp_path / "t.csv", s)
    assert t.y.dtype == np.float64 and t.y.tolist() == [1.0, 2.0, 1.0, 2.0]
    detail = refused(labelled(tmp_path, ["a", "b", "a", "b"]), task="regression")
    assert "numeric target" in detail and "'a'" in detail


def test_default_target(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "label,x,z\na,1,2\nb,2,3\na,3,4\nb,4,5\n")
    s = summarise(path)
    assert s.target == "label" and [c.name for c in s.columns] == ["x", "z"]
    path = write(tmp_path, "b.csv", "x,z,kind\n1,2,a\n2,3,b\n3,4,a\n4,5,b\n")
    assert summarise(path).target == "kind"
    assert summarise(path, target="x", task="regression").target == "x"


def test_column_kind_decided_over_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datafile, "CSV_BLOCK_SIZE", 256)
    rows = [f"{i % 3},{i * 0.5},{'a' if i % 2 else 'b'}\n" for i in range(300)]
    rows[250] = "late,1.0,b\n"
    path = write(tmp_path, "late.csv", "code,v,label\n" + "".join(rows))
    assert path.stat().st_size > 10 * 256
    s = summarise(path)
    assert [(c.kind, c.categories) for c in s.columns] == [("categorical", 4), ("numeric", None)]
    assert s.encoded_features == 5 and s.class_counts == [150, 150]
    t = reload(path, s)
    X = frame_of(t)
    assert X["code"].tolist()[:4] == ["0", "1", "2", "0"] and X["code"][250] == "late"
    assert X["v"].dtype == np.float64 and X["v"][299] == 149.5
    assert t.y[:4].tolist() == [1, 0, 1, 0]
    monkeypatch.setattr(datafile, "CSV_BLOCK_SIZE", 1 << 20)
    assert summarise(path) == s


# --------------------------------------------------------------------------- Parquet


def test_parquet_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "f": [0.5, np.nan, 2.0, 3.5, 4.0, 5.0],
            "i": np.arange(6, dtype=np.int32),
            "s": ["u", None, "v", "u", "w", "u"],
            "b": [True, False, True, True, False, True],
            "c": pd.Categorical(["p", "q", "p", "q", "p", "q"]),
            "target": ["yes", "no", "yes", "no", "yes", "no"],
        },
        index=[10, 11, 12, 13, 14, 15],  # stored as a column, which is not data
    )
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    s = summarise(path)
    assert (s.format, s.rows, s.target, s.task) == ("parquet", 6, "target", "classification")
    assert [(c.name, c.kind, c.missing, c.categories) for c in s.columns] == [
        ("f", "numeric", 1, None),
        ("i", "numeric", 0, None),
        ("s", "categorical", 1, 3),
        ("b", "categorical", 0, 2),
        ("c", "categorical", 0, 2),
    ]
    assert s.encoded_features == 2 + 3 + 2 + 2 + 2
    t = reload(path, s)
    assert isinstance(t.X, pd.DataFrame)
    np.testing.assert_array_equal(t.X["f"].to_numpy(), frame["f"].to_numpy())
    assert t.X["i"].dtype == np.float64 and t.X["s"].dtype == object
    assert t.X["b"].tolist() == ["True", "False", "True", "True", "False", "True"]
    assert t.X["s"][1] is np.nan and t.X["c"].tolist()[:2] == ["p", "q"]
    assert s.classes == ["no", "yes"] and t.y.tolist() == [1, 0, 1, 0, 1, 0]


def test_parquet_numeric_target_and_bad_type(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0.1, 0.7, 0.4]}).to_parquet(path)
    s = summarise(path)
    assert s.task == "regression" and s.target_mean == pytest.approx(0.4)
    assert reload(path, s).y.tolist() == [0.1, 0.7, 0.4]
    when = pd.date_range("2024-01-01", periods=3)
    pd.DataFrame({"when": when, "y": [0, 1, 0]}).to_parquet(path)
    assert "column 'when' has Parquet type timestamp" in refused(path)


# --------------------------------------------------------------------------- bad inputs


def bad_csv(text: str | bytes) -> Any:
    return lambda tmp: write(tmp, "bad.csv", text)


TABULAR_CASES: list[tuple[str, Any, dict[str, Any], str]] = [
    ("empty", bad_csv(""), {}, "the CSV file is empty"),
    ("header only", bad_csv("a,b,label\n"), {}, "has no data rows"),
    ("short row", bad_csv("a,b\n1,2\n3\n4,5\n"), {}, "row 3 (counting the header) has 1 fields"),
    ("long row", bad_csv("a,b\n1,2\n3,4,5\n"), {}, "has 3 fields but the header has 2"),
    ("unknown target", bad_csv("a,b\n1,2\n"), {"target": "c"}, "'c' not found; the columns are"),
    ("no features", bad_csv("label\na\nb\n"), {}, "only the target column 'label'"),
    ("dup names", bad_csv("a,b,a\n1,2,3\n"), {}, "duplicate column names: 'a'"),
    ("semicolons", bad_csv("a;b;y\n1;2;x\n3;4;y\n"), {}, "separated by semicolons"),
    ("empty name", bad_csv("a,,b\n1,2,3\n"), {}, "empty column names (column 2)"),
    ("target missing", bad_csv("a,y\n1,x\n2,\n3,x\n4,NA\n"), {}, "'y' has 2 missing values"),
    ("one class", bad_csv("a,y\n1,x\n2,x\n"), {}, "only one class ('x')"),
    ("lonely class", bad_csv("a,y\n1,x\n2,x\n3,z\n"), {}, "has class 'z' with 1 row"),
    ("constant", bad_csv("a,y\n1,0.5\n2,0.5\n"), {"task": "regression"}, "one distinct value"),
    ("inf target", bad_csv("a,y\n1,0.5\n2,inf\n"), {}, "1 non-finite values"),
    ("inf feature", bad_csv("a,y\n1,x\n-inf,y\n1,x\n2,y\n"), {}, "'a' has 1 infinite values"),
    ("non-utf8", bad_csv(b"a,y\n1,x\n2,y\n3,caf\xe9\n"), {}, "not UTF-8 text"),
    (
        "too many columns",
        bad_csv("a,b,c,y\n1,2,3,x\n"),
        {"limits": Limits(max_columns=2)},
        "3 feature columns, more than the limit of 2",
    ),
    (
        "too many cells",
        bad_csv("a,b,y\n" + "1,2,x\n" * 10),
        {"limits": Limits(max_cells=15)},
        "more than the limit of 15 cells",
    ),
    (
        "too many classes",
        bad_csv("a,y\n" + "1,x\n1,y\n1,z\n" * 2),
        {"limits": Limits(max_classes=2)},
        "3 classes, more than the limit of 2",
    ),
    (
        "too many categories",
        bad_csv("id,y\n" + "".join(f"u{i},{i % 2}\n" for i in range(20))),
        {"limits": Limits(max_categories=5)},
        "'id' has more than 5 distinct text values (an id or free-text column?): drop it",
    ),
]


@pytest.mark.parametrize(
    ("make", "kw", "message"), [c[1:] for c in TABULAR_CASES], ids=[c[0] for c in TABULAR_CASES]
)
def test_bad_input(tmp_path: Path, make: Any, kw: dict[str, Any], message: str) -> None:
    assert message in refused(make(tmp_path), **kw)


@pytest.mark.parametrize("content", [b"\x00\x01\x02binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00"])
def test_binary_file_refused(content: bytes) -> None:
    with pytest.raises(DataError, match=r"'x\.bin' is not a CSV, NPZ or Parquet file"):
        detect_format("x.bin", content)


def test_non_utf8_past_the_head() -> None:
    """detect_format() sees only the head; the reader notices a bad byte anywhere."""
    data = b"a,y\n" + b"1,x\n2,y\n" * 3000 + b"3,caf\xe9\n"
    assert detect_format("d.csv", data[:4096]) == "csv"
    with pytest.raises(DataError, match="the CSV file is not UTF-8 text"):
        inspect(io.BytesIO(data), "csv")
    with pytest.raises(DataError, match="the CSV file is not UTF-8 text"):
        inspect(io.BytesIO(b"caf\xe9,y\n1,x\n"), "csv")


def test_not_a_real_zip_or_parquet() -> None:
    with pytest.raises(DataError, match=r"not a valid one .* \(Excel: File > Save As > CSV"):
        inspect(io.BytesIO(b"PK\x03\x04garbage"), "npz")
    with pytest.raises(DataError, match="not a valid Parquet file"):
        inspect(io.BytesIO(b"PAR1garbage"), "parquet")


def test_load_notices_a_changed_file(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "a,y\n1,x\n2,y\n3,x\n4,y\n")
    s = summarise(path)
    path.write_text("a,y\n1,x\n2,z\n3,x\n4,y\n")
    with pytest.raises(DataError, match="changed since it was inspected: label 'z'"):
        reload(path, s)


def test_values_beyond_float32_are_refused_in_tabular_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "huge.csv", "a,b,y\n1,1e300,x\n2,3,y\n3,4,x\n4,5,y\n")
    with pytest.raises(DataError, match="column 'b' has 1 value\\(s\\) beyond"):
        summarise(path)


def test_a_header_longer_than_a_block_is_read(tmp_path: Path) -> None:
    names = [f"feature_{i:04d}_" + "x" * 600 for i in range(2000)]  # ~1.2 MB of header
    rows = [",".join(str(i % 7) for i in range(2000)) + f",{k % 2}" for k in range(6)]
    path = write(tmp_path, "wide.csv", ",".join([*names, "label"]) + "\n" + "\n".join(rows))
    s = summarise(path)
    assert s.features == 2000 and s.rows == 6


def test_a_parquet_chunk_far_larger_than_the_file_is_refused(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from droptune.datafiles import parquetfile

    monkeypatch.setattr(parquetfile, "PARQUET_MAX_CHUNK_BYTES", 1024)
    frame = pd.DataFrame({"a": np.zeros(100_000), "label": np.arange(100_000) % 2})
    path = tmp_path / "zeros.parquet"
    frame.to_parquet(path, compression="zstd", use_dictionary=False)  # 800 KB of zeros, ~1 KB
    with pytest.raises(DataError, match=r"decompresses to .* write the file with smaller row"):
        summarise(path)


def test_an_excel_workbook_is_named_and_csv_suggested() -> None:
    """Issue 22: an .xlsx was "not a valid NPZ (zip) archive"; it is a zip of XML parts."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("xl/workbook.xml", "<workbook/>")
        zf.writestr("xl/worksheets/sheet1.xml", "<worksheet/>")
    assert detect_format("d.xlsx", buf.getvalue()[:4096]) == "npz"
    with pytest.raises(DataError, match=r"is an Excel workbook .* save a spreadsheet as CSV"):
        inspect(io.BytesIO(buf.getvalue()), "npz")
    # with a target named, as a new user uploaded it: still Excel, not the NPZ target rule
    with pytest.raises(DataError, match=r"is an Excel workbook"):
        inspect(io.BytesIO(buf.getvalue()), "npz", target="label")


def test_a_few_whole_numbers_read_as_classes_suggest_regression() -> None:
    """Issue 22: a 3-row numeric target was read as 3 classes of one row, with no word of
    --task regression; labels that are text get no such hint."""
    with pytest.raises(DataError, match="--task regression"):
        inspect(io.BytesIO(b"a,price\n1,10\n2,20\n3,30\n"), "csv")
    with pytest.raises(DataError) as err:
        inspect(io.BytesIO(b"a,label\n1,x\n2,y\n3,y\n"), "csv")
    assert "at least 2 rows" in str(err.value) and "regression" not in str(err.value)


def test_a_target_column_named_in_another_case_is_suggested() -> None:
    """A new user typed --target Diagnosis; the column is diagnosis, past the columns listed."""
    data = "a,b,c,d,e,f,g,h,i,j,diagnosis\n" + "1,2,3,4,5,6,7,8,9,10,x\n2,3,4,5,6,7,8,9,10,11,y\n"
    with pytest.raises(DataError, match="did you mean 'diagnosis'"):
        inspect(io.BytesIO(data.encode()), "csv", target="Diagnosis")
