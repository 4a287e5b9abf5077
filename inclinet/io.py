"""Atomic output writing (temp file + rename) and checked npz reading."""

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from inclinet.errors import InputError, StageError


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success.

    A job killed mid-write leaves at most a ``.tmp-*`` file behind, never a half file
    under the final name. The temporary name keeps the final suffix so that libraries
    choosing a format from the suffix (``.npz``, ``.png``, ``.keras``) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=path.suffix, dir=path.parent)
    # mkstemp creates 0600; outputs are shared products (cluster file systems, Pegasus
    # staging, collaborators), so give them the permissions a plain open() would.
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def atomic_savez(path, *, compressed=True, **arrays):
    """Write an npz atomically (``np.savez_compressed`` by default)."""
    save = np.savez_compressed if compressed else np.savez
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            save(handle, **arrays)


def missing_file_error(path):
    return InputError(f"{path}: file not found; run the stage that produces it first")


def unreadable_npz_error(path, exc):
    return InputError(
        f"{path}: not a readable npz ({exc}); the file is corrupt or truncated, "
        "delete it and re-run the stage that produced it"
    )


def missing_arrays_error(path, missing, present):
    return InputError(
        f"{path}: missing array(s) {', '.join(missing)} (has {', '.join(sorted(present))}); "
        "was it written by another tool or an older version?"
    )


def load_npz(path, required=("images", "labels", "pgcIDs")):
    """Load every array of an npz into memory, checking it is readable and complete.

    Raises :class:`InputError` naming the file when it is missing, truncated, not an npz,
    or lacks one of the ``required`` keys.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_file_error(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise unreadable_npz_error(path, exc) from None
    missing = [key for key in required if key not in arrays]
    if missing:
        raise missing_arrays_error(path, missing, arrays)
    return arrays


def check_outputs(paths):
    """Raise :class:`StageError` unless every declared output exists."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise StageError(f"declared output(s) not written: {', '.join(missing)}")
