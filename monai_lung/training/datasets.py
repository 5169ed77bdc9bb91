"""Datasets for training: cached in memory for small sets, on disk for LUNA16-sized ones."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from monai.data import CacheDataset, Dataset, PersistentDataset


def build_dataset(
    data: Sequence[dict],
    transform: Callable,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    cache_rate: float = 1.0,
    num_workers: int | None = 0,
    copy_cache: bool = True,
):
    """A MONAI dataset over ``data`` (data-list entries) with the deterministic part of ``transform`` cached.

    Args:
        cache: ``"memory"`` (``CacheDataset``: fine for the demo's few dozen scans), ``"disk"``
            (``PersistentDataset`` under ``cache_dir``: resampled volumes are stored once, as float16 image and
            uint8 label when the transform chain casts them before its first random transform, ~80 MB per
            LUNA16 scan at 1 mm, so 888 scans train on a 24 GB machine), or ``"none"``.
        cache_dir: folder for ``"disk"``; created when missing. Delete it after changing preprocessing.
        cache_rate, num_workers: for ``CacheDataset``.
        copy_cache: ``CacheDataset``'s deep copy of a cached item before the random transforms. Turn it off
            only when those transforms never change their input in place (``RandCropByPosNegLabeld`` first:
            it makes new patches); it saves copying a whole scan (~0.05 s) per item.
    """
    if cache == "memory":
        return CacheDataset(
            data, transform, cache_rate=cache_rate, num_workers=num_workers, progress=False, copy_cache=copy_cache
        )
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs cache_dir")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(data, transform, cache_dir=cache_dir)
    if cache == "none":
        return Dataset(data, transform)
    raise ValueError(f"cache must be 'memory', 'disk' or 'none', got {cache!r}")
