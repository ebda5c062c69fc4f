"""Helpers shared by test_datafile.py and test_npzfile.py: write a file, inspect it, reload it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from droptune.core.schemas import DataSummary
from droptune.datafiles import datafile
from droptune.datafiles.datafile import DataError, detect_format, inspect, load


def summarise(path: Path, **kw: Any) -> DataSummary:
    with path.open("rb") as f:
        return inspect(f, detect_format(path.name, f.read(4096)), **kw)


def reload(path: Path, summary: DataSummary) -> datafile.Table:
    # The worker gets the summary back from the database as JSON.
    stored = DataSummary.model_validate_json(summary.model_dump_json())
    with path.open("rb") as f:
        return load(f, stored)


def refused(path: Path, **kw: Any) -> str:
    with pytest.raises(DataError) as info:
        summarise(path, **kw)
    detail = info.value.detail
    assert "\n" not in detail and "Traceback" not in detail
    return detail


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def write_npz(tmp_path: Path, name: str = "d.npz", **arrays: Any) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path
