"""Uploaded data sets on a worker: fetched from the database once per machine, then trained on.

Files are cached under DROPTUNE_CACHE_DIR by their sha256 (checked on every fetch), bounded in
size, least recently used out. Any worker with the database URL can train on any data set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine

from droptune.core.schemas import DataSummary
from droptune.core.spec.study import DatasetSpec, StudySpec
from droptune.datafiles import datafile
from droptune.storage import datasets
from droptune.worker.engine.data import Dataset, holdout_split, load_dataset, subset
from droptune.worker.engine.preprocess import tabular_preprocessor

log = logging.getLogger("droptune.worker")

# A partial download older than this was left by a worker that died while fetching it.
PART_AGE_S = 3600.0


@dataclass
class FileCache:
    """Uploaded files on local disk, named by their sha256."""

    engine: Engine
    directory: Path
    max_bytes: int
    fetched: int = 0  # files read from the database (the rest came from disk)

    def path(self, dataset_id: int) -> tuple[Path, DataSummary]:
        sha, size, summary = datasets.record(self.engine, dataset_id)
        path = self.directory / sha
        with contextlib.suppress(FileNotFoundError):  # evicted by another worker: fetch it
            os.utime(path)  # most recently used
            return path, summary
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{sha}.{os.getpid()}.part"
        t0 = time.perf_counter()
        try:
            with tmp.open("wb") as out:
                got = datasets.read_bytes(self.engine, dataset_id, out)
            if got != sha:
                raise ValueError(
                    f"data set {dataset_id}: the bytes read from the database do not match its "
                    f"sha256 ({got[:12]}… != {sha[:12]}…)"
                )
            os.replace(tmp, path)  # atomic: another worker on this machine sees all or nothing
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.fetched += 1
        log.info(
            "data set %s: %.1f MB read from the database in %.2f s",
            dataset_id,
            size / 2**20,
            time.perf_counter() - t0,
        )
        self._evict(keep=path)
        return path, summary

    def _evict(self, keep: Path) -> None:
        """Drop the least recently used files until the cache fits (the newest always stays),
        and partial files a killed worker left behind."""
        files = []
        for p in self.directory.iterdir():
            if p.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    if p.name.endswith(".part") and time.time() - p.stat().st_mtime > PART_AGE_S:
                        p.unlink()
                continue
            if p == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files) + keep.stat().st_size
        for _, size, p in sorted(files):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                total -= size


def load_uploaded(files: FileCache, dataset_id: int) -> Dataset:
    """An uploaded data set, read as its upload was validated, with its preprocessing."""
    for attempt in (1, 2):
        path, summary = files.path(dataset_id)
        try:
            f = path.open("rb")
        except FileNotFoundError:  # evicted by another worker in between: fetch it again
            if attempt == 2:
                raise
            continue
        with f:
            table = datafile.load(f, summary)
        break
    task = summary.task
    n_out = len(summary.classes or []) if task == "classification" else 1
    if isinstance(table.X, np.ndarray):  # NPZ: numbers only, standardised per fold
        shape = summary.image_shape
        return Dataset(
            X=table.X,
            y=table.y,
            n_classes=n_out,
            image_shape=(shape[0], shape[1], shape[2]) if shape else None,
            task=task,
        )
    numeric = [c.name for c in summary.columns if c.kind == "numeric"]
    categorical = [c.name for c in summary.columns if c.kind == "categorical"]
    missing = [c.name for c in summary.columns if c.missing]
    return Dataset(
        X=table.X,
        y=table.y,
        n_classes=n_out,
        image_shape=None,
        task=task,
        preprocess=lambda: tabular_preprocessor(numeric, categorical, missing),
    )


def load_named(files: FileCache, spec: DatasetSpec) -> Dataset:
    """The whole data set a spec names: uploaded (through the cache) or built in."""
    if spec.id is not None:
        return load_uploaded(files, spec.id)
    assert spec.builtin is not None
    options = spec.synthetic_options() if spec.builtin == "synthetic" else {}
    return load_dataset(spec.builtin, dict(options))


def search_rows(ds: Dataset, spec: StudySpec) -> tuple[np.ndarray, np.ndarray]:
    """(rows the search cross-validates, held-out rows) of the data set a spec names."""
    h = spec.evaluation.holdout or 0.0
    if not h:
        return np.arange(len(ds.y)), np.zeros(0, dtype=np.int64)
    return holdout_split(ds.y, h, spec.cv.seed, ds.task)


def load_for_search(files: FileCache, spec: StudySpec) -> Dataset:
    """The rows a study's trials cross-validate: its data set less the held-out rows."""
    ds = load_named(files, spec.dataset)
    train, held = search_rows(ds, spec)
    return subset(ds, train) if len(held) else ds
