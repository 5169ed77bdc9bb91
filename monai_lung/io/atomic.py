"""Atomic file writes: every output goes to a temporary name in the same folder and is renamed.

A reader (or a crashed run resumed later) therefore never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    ``suffix`` defaults to ``path``'s own suffixes, so writers that pick the format from the
    extension (SimpleITK, nibabel, matplotlib) still work on the temporary name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs should be readable like any other file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def write_csv_atomic(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame to ``path`` atomically, without the index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_image_atomic(path: str | os.PathLike, image) -> None:
    """Write a SimpleITK image atomically. MetaImage (``.mhd``) pairs are handled too.

    A ``.mhd`` header names its ``.raw`` file, so both are written with their final names inside a
    temporary folder next to ``path``; the ``.raw`` is moved in first and the ``.mhd`` last, so a
    visible header always has its complete data file.
    """
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() != ".mhd":
        with atomic_path(path) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=path.suffix.lower() in (".mha", ".nrrd"))
        return
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", dir=path.parent))
    try:
        sitk.WriteImage(image, str(tmp_dir / path.name))
        raw = tmp_dir / (path.stem + ".raw")
        if raw.exists():
            os.replace(raw, path.with_suffix(".raw"))
        os.replace(tmp_dir / path.name, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
