"""inclinet.npzstream: row-wise npz reading and chunked, atomic npz writing."""

import numpy as np
import pytest

from inclinet.errors import InputError
from inclinet.npzstream import NpzRows, NpzWriter, array_info, load_arrays

ROW = (6, 6, 3)


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (11, *ROW), dtype=np.uint8)


@pytest.mark.parametrize("n_rows", [None, 11])
@pytest.mark.parametrize("compress", [True, False])
def test_written_file_is_a_normal_npz_and_rows_read_back(tmp_path, images, n_rows, compress):
    path = tmp_path / "x.npz"
    with NpzWriter(path, ROW, n_rows=n_rows, compress=compress) as writer:
        writer.append(images[:5])
        writer.append(images[5])  # a single row
        writer.append(images[6:])
        writer.set(labels=np.arange(11, dtype=np.int32), band=np.array("gri"))
    with np.load(path) as data:
        assert np.array_equal(data["images"], images) and data["labels"].tolist() == list(range(11))
        assert str(data["band"]) == "gri"
    assert array_info(path) == ((11, *ROW), np.dtype(np.uint8))
    with NpzRows(path) as rows:
        assert len(rows) == 11 and rows.row_shape == ROW
        assert np.array_equal(rows.read([10, 0, 3, 3]), images[[10, 0, 3, 3]])
        with pytest.raises(IndexError):
            rows.read([11])
    assert load_arrays(path, ("labels",))["labels"].tolist() == list(range(11))


def test_numpy_written_npz_is_readable(tmp_path, images):
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, images=images, labels=np.arange(11))
        with NpzRows(path) as rows:
            assert np.array_equal(rows.read([2, 7]), images[[2, 7]])


def test_failed_block_leaves_nothing(tmp_path, images):
    path = tmp_path / "x.npz"
    with pytest.raises(RuntimeError), NpzWriter(path, ROW) as writer:
        writer.append(images)
        raise RuntimeError("killed")
    with pytest.raises(ValueError), NpzWriter(path, ROW, n_rows=20) as writer:
        writer.append(images)  # fewer rows than declared
    assert list(tmp_path.iterdir()) == []


def test_wrong_row_shape_and_too_many_rows(tmp_path, images):
    with pytest.raises(ValueError), NpzWriter(tmp_path / "a.npz", (5, 5, 3)) as writer:
        writer.append(images)
    with pytest.raises(ValueError), NpzWriter(tmp_path / "b.npz", ROW, n_rows=2) as writer:
        writer.append(images)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compress", [True, False])
def test_damaged_files_raise_input_error_naming_them(tmp_path, images, compress):
    good = tmp_path / "good.npz"
    with NpzWriter(good, ROW, n_rows=11, compress=compress) as writer:
        writer.append(images)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    for path in (truncated, tmp_path / "missing.npz"):
        with pytest.raises(InputError, match=str(path.name)), NpzRows(path):
            pass
    with pytest.raises(InputError, match="missing array"), NpzRows(good, key="labels"):
        pass
    if compress:
        flipped = tmp_path / "flipped.npz"
        blob = bytearray(data)
        blob[len(blob) // 3] ^= 0xFF
        flipped.write_bytes(bytes(blob))
        with pytest.raises(InputError, match="flipped.npz"), NpzRows(flipped):
            pass
