"""inclinet-synth: output layout, catalog and label mix, determinism, sharding invariance, CLI."""

import csv
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
from conftest import TINY_N_GALAXIES, TINY_SEED, TINY_SIZE
from PIL import Image

from inclinet import naming
from inclinet.catalog import find_raw_image, read_catalog
from inclinet.stages import synth


def _truth(directory):
    with open(directory / "truth.csv") as handle:
        return list(csv.DictReader(handle))


def test_catalog_parses_with_expected_label_mix(tiny_universe):
    galaxies = read_catalog(tiny_universe / "catalog.csv")
    assert [g.pgc for g in galaxies] == synth.galaxy_ids(TINY_N_GALAXIES, TINY_SEED)
    labels = Counter("A" if g.inc_flg == 0 else g.label for g in galaxies)
    assert 24 <= labels["A"] <= 31
    assert 3 <= labels["F"] <= 7
    assert 6 <= labels["0"] <= 10
    accepted = [g for g in galaxies if g.inc_flg == 0]
    assert all(45 <= g.inc <= 90 for g in accepted)
    assert all(1.5 <= g.inc_e <= 5.5 for g in accepted)
    assert max(g.inc for g in accepted) - min(g.inc for g in accepted) >= 30
    for galaxy in galaxies:
        if galaxy.inc_flg:
            assert galaxy.inc == 0 and galaxy.inc_e == 0
        if galaxy.label == "F":
            assert galaxy.fon == "F" and galaxy.inc_note == "[face_on]"
        assert 0 <= galaxy.pa < 180 and 0 < galaxy.b_a <= 1 and galaxy.d25 > 0
    causes = {g.inc_note for g in galaxies if g.label == "0"}
    assert causes == {"[star]", "[multiple]", "[faint]", "[not_spiral]"}


def test_truth_matches_catalog(tiny_universe):
    galaxies = {g.pgc: g for g in read_catalog(tiny_universe / "catalog.csv")}
    truth = _truth(tiny_universe)
    assert len(truth) == TINY_N_GALAXIES
    for row in truth:
        galaxy = galaxies[int(row["pgc"])]
        if row["label"] == "A":
            assert galaxy.inc == round(float(row["true_inc"]))
        elif row["label"] == "F":
            assert float(row["true_inc"]) < 45 and galaxy.label == "F"
        else:
            assert galaxy.inc_note == f"[{row['cause']}]"
            assert (row["true_inc"] == "") == (row["cause"] == "not_spiral")
        assert abs(float(row["misalignment"])) < 10


def test_images_in_original_layout(tiny_universe):
    for galaxy in read_catalog(tiny_universe / "catalog.csv"):
        for band in ("g", "r", "i"):
            path = find_raw_image(tiny_universe / "galaxies", galaxy.pgc, band)
            assert path is not None and path.name == f"pgc{galaxy.pgc}_d25x2_rot_{band}.png"
            with Image.open(path) as image:
                assert image.mode == "L" and image.size == (TINY_SIZE, TINY_SIZE)
                array = np.asarray(image)
            border = np.concatenate([array[:3].ravel(), array[-3:].ravel()])
            assert 175 <= np.median(border) <= 255  # light sky (OBSERVATION_RANGES sky_gray 185-250)
        path = find_raw_image(tiny_universe / "galaxies", galaxy.pgc, "gri")
        assert path.name.endswith("_gri.sdss.jpg")
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            array = np.asarray(image)
        assert np.median(array[:3]) < 40  # dark sky
    assert len(list((tiny_universe / "galaxies").iterdir())) == 4 * TINY_N_GALAXIES


def test_galaxies_are_dark_on_white_and_centred(tiny_universe):
    galaxy = next(g for g in read_catalog(tiny_universe / "catalog.csv") if g.inc_flg == 0)
    array = np.asarray(Image.open(find_raw_image(tiny_universe / "galaxies", galaxy.pgc, "r")), dtype=float)
    centre = array[TINY_SIZE // 2 - 2 : TINY_SIZE // 2 + 2, TINY_SIZE // 2 - 2 : TINY_SIZE // 2 + 2]
    assert centre.mean() < array[:4].mean() - 100


def test_faint_and_star_causes_are_rendered(tiny_universe):
    truth = _truth(tiny_universe)
    galaxies = tiny_universe / "galaxies"

    def contrast(row):
        array = np.asarray(Image.open(galaxies / f"pgc{row['pgc']}_d25x2_rot_r.png"), dtype=float)
        return np.median(array[:4]) - np.percentile(array, 1)

    faint = [contrast(row) for row in truth if row["cause"] == "faint"]
    normal = [contrast(row) for row in truth if row["label"] == "A"]
    assert faint and max(faint) < np.median(normal)
    starred = [row for row in truth if row["cause"] == "star"]
    assert starred and all(int(row["n_stars"]) >= 1 for row in starred)


def _files(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_sharding_is_byte_identical(tmp_path):
    whole = tmp_path / "whole"
    parts = tmp_path / "parts"
    assert synth.main(["-n", "7", "-o", str(whole), "-s", "32", "--seed", "5", "-q"]) == 0
    for shard in ("1/3", "2/3", "3/3"):
        assert synth.main(["-n", "7", "-o", str(parts), "-s", "32", "--seed", "5", "--shard", shard, "-q"]) == 0
    assert not (parts / "catalog.csv").exists()
    assert synth.main(["-n", "7", "-o", str(parts), "-s", "32", "--seed", "5", "--catalog-only", "-q"]) == 0
    whole_files, part_files = _files(whole), _files(parts)
    assert len(whole_files) == 7 * 4 + 2
    assert whole_files.keys() == part_files.keys()
    assert whole_files == part_files


def test_seed_changes_the_universe(tmp_path):
    synth.run(n_galaxies=3, output=tmp_path / "a", size=32, seed=1)
    synth.run(n_galaxies=3, output=tmp_path / "b", size=32, seed=2)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    name = next(iter(k for k in a if str(k).endswith("_g.png")))
    assert a[name] != b[name]


def test_catalog_only_and_no_catalog(tmp_path):
    start = time.perf_counter()
    summary = synth.run(n_galaxies=2000, output=tmp_path / "cat", size=512, seed=0, catalog_only=True)
    assert time.perf_counter() - start < 20
    assert summary["rendered"] == 0
    assert not (tmp_path / "cat" / "galaxies").exists()
    galaxies = read_catalog(tmp_path / "cat" / "catalog.csv")
    assert len(galaxies) == 2000
    fractions = Counter("A" if g.inc_flg == 0 else g.label for g in galaxies)
    assert fractions["0"] / 2000 == pytest.approx(0.20, abs=0.01)
    assert fractions["F"] / 2000 == pytest.approx(0.12, abs=0.01)
    synth.run(n_galaxies=2, output=tmp_path / "img", size=32, seed=0, no_catalog=True)
    assert not (tmp_path / "img" / "catalog.csv").exists()
    assert (tmp_path / "img" / naming.raw_image(1_000_001, "gri")).is_file()


def test_galaxy_ids_and_params_are_cheap_and_stable():
    ids = synth.galaxy_ids(5, 3)
    assert ids == synth.galaxy_ids(5, 3) and len(set(ids)) == 5
    assert synth.galaxy_ids(8, 3)[:5] == ids
    first = synth.galaxy_params(4, 3)
    again = synth.galaxy_params(4, 3)
    assert first == again
    assert synth.galaxy_params(4, 9) != first


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-n", "0", "-o", "OUT"], "invalid --n-galaxies"),
        (["-n", "3", "-o", "OUT", "--size", "8"], "invalid --size"),
        (["-n", "3", "-o", "OUT", "--shard", "4/3"], "invalid --shard"),
        (["-n", "3", "-o", "OUT", "--shard", "x"], "invalid --shard"),
        (["-n", "3", "-o", "OUT", "--catalog-only", "--no-catalog"], "not allowed with"),
        (["-o", "OUT"], "required"),
    ],
)
def test_cli_usage_errors(tmp_path, capsys, argv, message):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert synth.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "galaxies").exists()


def test_help_and_catalog_import_no_heavy_libraries():
    code = (
        "import sys\n"
        "from inclinet.stages import synth\n"
        "synth.galaxy_params(0, 0).catalog_row()\n"
        "assert 'galsim' not in sys.modules and 'tensorflow' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    result = subprocess.run([sys.executable, "-m", "inclinet.stages.synth", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--n-galaxies" in result.stdout


def test_missing_galsim_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "galsim", None)  # makes "import galsim" fail
    assert synth.main(["-n", "2", "-o", str(tmp_path / "out"), "-s", "32"]) == 1
    assert "pip install 'inclinet[synth]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert synth.main(["-n", "2", "-o", str(tmp_path / "cat"), "--catalog-only", "-q"]) == 0
    assert (tmp_path / "cat" / "catalog.csv").is_file()
