"""Atomic outputs: all or nothing under the final name, with ordinary permissions."""

import os
import stat

import numpy as np
import pytest

from inclinet.errors import InputError
from inclinet.io import atomic_path, atomic_savez, atomic_write_json, load_npz


def test_failed_write_leaves_neither_output_nor_temporary(tmp_path):
    target = tmp_path / "out" / "result.npz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_outputs_get_umask_permissions_not_private_ones(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"a": np.int64(3)})
    mode = stat.S_IMODE(target.stat().st_mode)
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask


def test_npz_round_trip_and_truncated_file_is_named(tmp_path):
    path = tmp_path / "x.npz"
    atomic_savez(path, images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.arange(2), pgcIDs=np.arange(2))
    assert load_npz(path)["images"].shape == (2, 4, 4, 3)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(InputError, match="x.npz.*corrupt or truncated"):
        load_npz(path)
