"""inclinet-compress: merge prep parts sorted by pgc, checks, reports, atomic output."""

import csv

import numpy as np
import pytest
from _prep_data import write_sample

from inclinet.stages import compress

SIZE = 32


@pytest.fixture
def parts(tmp_path):
    """Three parts of band r with pgc ids out of order across and within parts."""
    specs = [([30, 10, 20], [61, 0, 1]), ([5, 40], [45, 90]), ([], [])]
    paths = []
    for index, (pgcs, labels) in enumerate(specs, start=1):
        paths.append(write_sample(tmp_path / f"part{index:04d}of0003.npz", "r", pgcs, labels, SIZE, seed=index))
    return paths


def _read(path):
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def test_merges_sorted_by_pgc(parts, tmp_path):
    out = tmp_path / "compressed" / "32x32_r.npz"
    assert compress.main(["-i", *map(str, parts), "-o", str(out), "-s", str(SIZE), "-q"]) == 0
    merged = _read(out)
    assert merged["pgcIDs"].tolist() == [5, 10, 20, 30, 40]
    assert merged["labels"].tolist() == [45, 0, 1, 61, 90]
    assert merged["images"].shape == (5, SIZE, SIZE, 3) and merged["images"].dtype == np.uint8
    assert merged["labels"].dtype == np.int32 and merged["pgcIDs"].dtype == np.int32
    assert str(merged["band"]) == "r"
    sources = {}
    for part in parts:
        data = _read(part)
        sources.update({pgc: image for pgc, image in zip(data["pgcIDs"].tolist(), data["images"])})
    for pgc, image in zip(merged["pgcIDs"].tolist(), merged["images"]):
        assert np.array_equal(image, sources[pgc])
    report = tmp_path / "compressed" / "32x32_r.report.csv"
    assert report.read_text() == "pgc,band,file,reason\n"


def test_part_order_does_not_matter(parts, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert compress.main(["-i", *map(str, parts), "-o", str(a), "-q"]) == 0
    assert compress.main(["-i", *map(str, reversed(parts)), "-o", str(b), "-q"]) == 0
    x, y = _read(a), _read(b)
    assert all(np.array_equal(x[key], y[key]) for key in x)


def test_duplicates_and_out_of_range_labels_are_reported(tmp_path):
    first = write_sample(tmp_path / "p1.npz", "g", [7, 8], [50, 60], SIZE)
    second = write_sample(tmp_path / "p2.npz", "g", [8, 9], [60, 120], SIZE)
    out = tmp_path / "g.npz"
    assert compress.main(["-i", str(first), str(second), "-o", str(out), "-q"]) == 0
    assert _read(out)["pgcIDs"].tolist() == [7, 8]
    rows = list(csv.DictReader(open(tmp_path / "g.report.csv")))
    assert {(row["pgc"], row["file"]) for row in rows} == {("8", str(second)), ("9", str(second))}
    assert any("duplicate" in row["reason"] for row in rows)
    assert any("out of range" in row["reason"] for row in rows)


def test_mixed_bands_is_an_input_error(tmp_path, capsys):
    a = write_sample(tmp_path / "a.npz", "g", [1], [50], SIZE)
    b = write_sample(tmp_path / "b.npz", "i", [2], [50], SIZE)
    assert compress.main(["-i", str(a), str(b), "-o", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert "different bands" in err and "a.npz: g" in err and "b.npz: i" in err
    assert not (tmp_path / "o.npz").exists()


def test_size_mismatch_is_an_input_error(tmp_path, capsys):
    a = write_sample(tmp_path / "a.npz", "g", [1], [50], SIZE)
    b = write_sample(tmp_path / "b.npz", "g", [2], [50], 16)
    assert compress.main(["-i", str(a), str(b), "-o", str(tmp_path / "o.npz")]) == 2
    assert "image sizes" in capsys.readouterr().err
    assert compress.main(["-i", str(a), "-o", str(tmp_path / "o.npz"), "-s", "64"]) == 2
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "not-npz", "no-band"])
def test_corrupt_part_is_named(parts, tmp_path, capsys, damage):
    bad = tmp_path / "bad.npz"
    data = parts[0].read_bytes()
    if damage == "truncate":
        bad.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "flip":
        blob = bytearray(data)
        blob[400] ^= 0xFF
        bad.write_bytes(bytes(blob))
    elif damage == "not-npz":
        bad.write_text("hello")
    else:
        np.savez(bad, images=np.zeros((1, SIZE, SIZE, 3), np.uint8), labels=[50], pgcIDs=[1])
    out = tmp_path / "o.npz"
    assert compress.main(["-i", str(parts[1]), str(bad), "-o", str(out)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_empty_band_is_an_input_error(parts, tmp_path, capsys):
    assert compress.main(["-i", str(parts[2]), "-o", str(tmp_path / "o.npz")]) == 2
    assert "no usable galaxies" in capsys.readouterr().err


def test_wrong_image_mode_is_an_input_error(tmp_path, capsys):
    bad = tmp_path / "gray.npz"
    np.savez(
        bad,
        images=np.zeros((2, SIZE, SIZE), np.uint8),
        labels=np.array([50, 60]),
        pgcIDs=np.array([1, 2]),
        band=np.array("g"),
    )
    assert compress.main(["-i", str(bad), "-o", str(tmp_path / "o.npz")]) == 2
    assert "expected uint8 (N, S, S, 3)" in capsys.readouterr().err


def test_missing_part_and_no_arguments(tmp_path):
    assert compress.main(["-i", str(tmp_path / "nothere.npz"), "-o", str(tmp_path / "o.npz")]) == 2
    assert compress.main(["-o", str(tmp_path / "o.npz")]) == 2
