"""inclinet-split: one split by galaxy for every band, subsamples, binary stratification, bad input."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _prep_data import write_sample

from inclinet import naming
from inclinet.stages import split

SIZE = 16
BANDS = ("gri", "g", "r", "i")


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """60 galaxies: 40 with inclination 45..90, 8 F, 8 J, 4 low-inclination; pgc 1010 missing in r."""
    folder = tmp_path_factory.mktemp("compressed")
    rng = np.random.default_rng(0)
    labels = np.concatenate([rng.integers(45, 91, 40), [1] * 8, [0] * 8, [30, 35, 40, 44]])
    pgcs = 1000 + np.arange(len(labels)) * 3
    rng.shuffle(labels)
    paths = {}
    for band in BANDS:
        keep = pgcs != 1030 if band == "r" else np.ones(len(pgcs), bool)
        name = Path(naming.compressed(SIZE, band)).name
        paths[band] = write_sample(folder / name, band, pgcs[keep], labels[keep], SIZE)
    return paths, dict(zip(pgcs.tolist(), labels.tolist()))


def _run(paths, out, *extra):
    return split.main(["-i", *map(str, paths.values()), "-o", str(out), "-s", str(SIZE), "-q", *extra])


def _pgcs(path):
    with np.load(path) as data:
        return data["pgcIDs"].tolist()


def test_split_is_by_galaxy_and_identical_across_bands(compressed, tmp_path):
    paths, truth = compressed
    assert _run(paths, tmp_path, "--seed", "7") == 0
    summary = json.loads((tmp_path / f"{SIZE}x{SIZE}_split.json").read_text())
    subsets = summary["subsets"]
    regression = sorted(p for p, c in truth.items() if c >= 45)
    assert len(subsets["test_000"]) == 4  # 10% of 40
    assert sorted(subsets["test_000"] + subsets["train_000"]) == regression
    for k in (1, 2, 3):
        sub = subsets[f"train_{k:03d}"]
        assert len(sub) == (2 * 36) // 3 and set(sub) <= set(subsets["train_000"])
    assert subsets["train_001"] != subsets["train_002"]
    for band in BANDS:
        tag = "RGB" if band == "gri" else band
        absent = {1030} if band == "r" else set()
        test = set(_pgcs(tmp_path / f"{tag}_{SIZE}x{SIZE}_test_000.npz"))
        expected_test = set(subsets["test_000"]) - absent
        assert test == expected_test
        for k in range(4):
            train_file = tmp_path / f"{tag}_{SIZE}x{SIZE}_train_{k:03d}.npz"
            train = set(_pgcs(train_file))
            assert not train & test, f"{band} train_{k:03d} shares galaxies with test"
            assert train == set(subsets[f"train_{k:03d}"]) - absent
            with np.load(train_file) as data:
                assert str(data["band"]) == band
                assert data["images"].shape[1:] == (SIZE, SIZE, 3)
                assert data["labels"].dtype == np.int32
                assert data["labels"].tolist() == [truth[p] for p in data["pgcIDs"].tolist()]
                assert min(data["labels"]) >= 45
        bin_train = set(_pgcs(tmp_path / f"{tag}_{SIZE}x{SIZE}_binary_train.npz"))
        bin_test = set(_pgcs(tmp_path / f"{tag}_{SIZE}x{SIZE}_binary_test.npz"))
        assert not bin_train & bin_test
        assert bin_train | bin_test == set(truth) - absent
    assert summary["missing"] == {"RGB": [], "g": [], "r": [1030], "i": []}
    report = list(csv.DictReader(open(tmp_path / f"{SIZE}x{SIZE}_split.report.csv")))
    below = sorted(p for p, c in truth.items() if 10 <= c < 45)
    assert sorted(int(row["pgc"]) for row in report if "below 45" in row["reason"]) == below
    assert all(
        "an accept for the binary task, left out of regression" in row["reason"]
        for row in report
        if "below 45" in row["reason"]
    )
    assert [(row["pgc"], row["band"]) for row in report if "below 45" not in row["reason"]] == [("1030", "r")]


def test_accepted_rows_with_impossible_inclinations_are_reported_not_relabelled(tmp_path):
    from inclinet.catalog import OUT_OF_RANGE

    pgcs = list(range(2000, 2024))
    labels = [50 + i for i in range(20)] + [5, OUT_OF_RANGE, 0, 1]  # inc 5 (old prep), catalog-refused, J, F
    sample = write_sample(tmp_path / "a.npz", "gri", pgcs, labels, SIZE)
    assert split.main(["-i", str(sample), "-o", str(tmp_path / "out"), "-s", str(SIZE), "-n", "1", "-q"]) == 0
    summary = json.loads((tmp_path / "out" / f"{SIZE}x{SIZE}_split.json").read_text())
    everywhere = {p for subset in summary["subsets"].values() for p in subset}
    assert 2020 not in everywhere and 2021 not in everywhere  # neither accept nor reject
    assert {2022, 2023} <= everywhere
    report = {
        int(r["pgc"]): r["reason"] for r in csv.DictReader(open(tmp_path / "out" / f"{SIZE}x{SIZE}_split.report.csv"))
    }
    assert set(report) == {2020, 2021}
    assert "inclination 5" in report[2020] and "left out of both tasks" in report[2020]
    assert "inc is below 10 or above 90" in report[2021]


def test_binary_split_is_stratified_with_binary_labels(compressed, tmp_path):
    paths, truth = compressed
    assert _run(paths, tmp_path, "--binary-test-fraction", "0.25") == 0
    with np.load(tmp_path / f"RGB_{SIZE}x{SIZE}_binary_test.npz") as data:
        pgcs, labels = data["pgcIDs"].tolist(), data["labels"].tolist()
    classes = [truth[p] for p in pgcs]
    assert sum(c == 1 for c in classes) == 2 and sum(c == 0 for c in classes) == 2  # 25% of 8 F, 8 J
    assert sum(c > 1 for c in classes) == 11  # 25% of the 44 numeric
    assert labels == [1 if truth[p] < 10 else 0 for p in pgcs]


def test_deterministic_from_seed(compressed, tmp_path):
    paths, _ = compressed
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert _run(paths, tmp_path / name, "--seed", seed) == 0
    read = {name: json.loads((tmp_path / name / f"{SIZE}x{SIZE}_split.json").read_text())["subsets"] for name in "abc"}
    assert read["a"] == read["b"]
    assert read["a"]["test_000"] != read["c"]["test_000"]
    # Input order does not matter either.
    reordered = dict(reversed(list(paths.items())))
    assert _run(reordered, tmp_path / "d", "--seed", "1") == 0
    assert json.loads((tmp_path / "d" / f"{SIZE}x{SIZE}_split.json").read_text())["subsets"] == read["a"]


def test_test_fraction_and_subsample_count(compressed, tmp_path):
    paths, _ = compressed
    assert _run(paths, tmp_path, "--test-fraction", "0.25", "-n", "1") == 0
    summary = json.loads((tmp_path / f"{SIZE}x{SIZE}_split.json").read_text())
    assert len(summary["subsets"]["test_000"]) == 10
    assert "train_001" in summary["subsets"] and "train_002" not in summary["subsets"]
    assert not (tmp_path / f"g_{SIZE}x{SIZE}_train_002.npz").exists()


def test_conflicting_labels_are_reported_and_left_out(tmp_path):
    pgcs = list(range(1, 21))
    labels = [50 + i for i in range(20)]
    other = list(labels)
    other[3] = 70 if labels[3] != 70 else 71
    a = write_sample(tmp_path / "a.npz", "gri", pgcs, labels, SIZE)
    b = write_sample(tmp_path / "b.npz", "g", pgcs, other, SIZE)
    out = tmp_path / "samples"
    assert split.main(["-i", str(a), str(b), "-o", str(out), "-s", str(SIZE), "-q"]) == 0
    summary = json.loads((out / f"{SIZE}x{SIZE}_split.json").read_text())
    assert summary["excluded"] == [4]
    assert all(4 not in members for members in summary["subsets"].values())
    assert "differs" in (out / f"{SIZE}x{SIZE}_split.report.csv").read_text()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("size", "expected uint8"),
        ("twice", "given twice"),
        ("empty", "no galaxies"),
        ("corrupt", "corrupt"),
        ("unlabelled", "no galaxies with inclination"),
    ],
)
def test_bad_input_is_a_clear_error(compressed, tmp_path, capsys, case, message):
    paths, _ = compressed
    inputs = [paths["gri"], paths["g"]]
    if case == "size":
        inputs = [write_sample(tmp_path / "big.npz", "r", [1], [50], SIZE * 2)]
    elif case == "twice":
        inputs = [paths["g"], paths["g"]]
    elif case == "empty":
        inputs.append(write_sample(tmp_path / "empty.npz", "i", [], [], SIZE))
    elif case == "corrupt":
        bad = tmp_path / "bad.npz"
        bad.write_bytes(paths["r"].read_bytes()[:300])
        inputs.append(bad)
    else:
        inputs = [write_sample(tmp_path / "flags.npz", "g", [1, 2, 3], [0, 1, 0], SIZE)]
    out = tmp_path / "samples"
    assert split.main(["-i", *map(str, inputs), "-o", str(out), "-s", str(SIZE)]) == 2
    assert message in capsys.readouterr().err
    assert not (out / f"{SIZE}x{SIZE}_split.json").exists()


@pytest.mark.parametrize(
    "flags", [["--test-fraction", "0"], ["--test-fraction", "1.5"], ["-n", "-1"], ["--binary-test-fraction", "1"]]
)
def test_invalid_flags(compressed, tmp_path, flags):
    paths, _ = compressed
    assert _run(paths, tmp_path, *flags) == 2
