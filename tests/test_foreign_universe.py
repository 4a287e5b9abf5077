"""The foreign universe (bench/foreign_universe.py): files, catalog, determinism, projected shapes, labels."""

import csv
import dataclasses
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inclinet import naming
from inclinet.catalog import read_catalog, write_catalog

_PATH = Path(__file__).resolve().parent.parent / "bench" / "foreign_universe.py"
_spec = importlib.util.spec_from_file_location("foreign_universe", _PATH)
fu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fu)


def _axial_ratio(image):
    """sqrt of the ratio of the eigenvalues of the second-moment matrix (no weighting)."""
    n = image.shape[0]
    c = np.arange(n) + 0.5
    w = np.clip(image, 0.0, None)
    total = w.sum()
    x0, y0 = (w * c[None, :]).sum() / total, (w * c[:, None]).sum() / total
    dx, dy = c[None, :] - x0, c[:, None] - y0
    m = np.array([[(w * dx * dx).sum(), (w * dx * dy).sum()], [(w * dx * dy).sum(), (w * dy * dy).sum()]]) / total
    low, high = np.linalg.eigvalsh(m)
    return math.sqrt(low / high)


@pytest.fixture(scope="module")
def universe(tmp_path_factory):
    output = tmp_path_factory.mktemp("foreign")
    summary = fu.render_universe(output, n_galaxies=6, size=48, seed=5)
    return output, summary


def test_files_catalog_and_truth(universe):
    output, summary = universe
    galaxies = read_catalog(output / "catalog.csv")
    assert len(galaxies) == 6
    assert [g.pgc for g in galaxies] == list(range(5_000_000, 5_000_006))
    for galaxy in galaxies:
        for band in naming.GRAY_BANDS:
            with Image.open(output / naming.raw_image(galaxy.pgc, band)) as image:
                assert image.mode == "L" and image.size == (48, 48)
                pixels = np.asarray(image)
            # Dark galaxy on a white sky: the sky (median) is light.
            assert np.median(pixels) > 150
        with Image.open(output / naming.raw_image(galaxy.pgc, "gri")) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (48, 48)
            assert np.median(np.asarray(image)) < 60  # dark sky
    with open(output / "truth.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["pgc"]) for r in rows] == [g.pgc for g in galaxies]
    for column in ("true_inc", "label", "q0", "psf_fwhm", "pixel_scale", "cause"):
        assert column in rows[0]
    for row in rows:
        assert float(row["pixel_scale"]) == pytest.approx(float(row["fov_arcsec"]) / 48, rel=1e-3)
        assert 0.05 < float(row["q0"]) < 0.45 and float(row["psf_fwhm"]) > 0.5


def test_same_seed_same_bytes_whatever_the_jobs(universe, tmp_path):
    output, _ = universe
    again = tmp_path / "again"
    fu.render_universe(again, n_galaxies=6, size=48, seed=5, jobs=2)
    names = sorted(p.relative_to(output) for p in output.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in names:
        assert (output / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "other"
    fu.render_universe(other, n_galaxies=2, size=48, seed=6)
    first = naming.raw_image(5_000_000, "r")
    assert (other / first).read_bytes() != (output / first).read_bytes()


@pytest.mark.parametrize("q0", [0.1, 0.3])
def test_projected_shape_follows_inclination_and_thickness(q0):
    base = fu.draw_galaxy(0, 3)
    measured = {}
    for inc in (50.0, 70.0, 85.0, 89.5):
        # A frame wide enough (+-8 scale lengths) to hold the whole disk: moments need its wings.
        g = dataclasses.replace(
            base,
            inc=inc,
            q0=q0,
            cause="",
            label="A",
            stars=[],
            background=[],
            neighbour={},
            d25_catalog=8.0 * base.h / 60.0,
        )
        image = fu.render_light(g, 64, 3, psf=False, components=("disk",))[1]
        expected = math.sqrt(math.cos(math.radians(inc)) ** 2 + (q0 * math.sin(math.radians(inc))) ** 2)
        measured[inc] = _axial_ratio(image)
        assert measured[inc] == pytest.approx(expected, abs=0.02), (inc, q0)
    # The thickness, not cos i, sets the shape of an edge-on disk.
    assert measured[89.5] > q0 - 0.02 and abs(measured[89.5] - math.cos(math.radians(89.5))) > 0.07


def test_full_noise_free_galaxy_flattens_with_inclination():
    base = fu.draw_galaxy(0, 3)
    ratios = []
    for inc in (50.0, 70.0, 88.0):
        g = dataclasses.replace(base, inc=inc, cause="", label="A", stars=[], background=[], neighbour={})
        ratios.append(_axial_ratio(fu.render_light(g, 64, 3)[1]))
    assert ratios[0] > ratios[1] + 0.1 > ratios[2] + 0.2


def test_labels_follow_the_original_rules(tmp_path):
    drawn = [fu.draw_galaxy(k, 11) for k in range(300)]
    write_catalog(tmp_path / "catalog.csv", [g.catalog_row() for g in drawn])
    galaxies = read_catalog(tmp_path / "catalog.csv")
    counts = {"A": 0, "F": 0, "J": 0}
    for g, row in zip(drawn, galaxies):
        counts[g.label] += 1
        if g.label == "A":
            assert row.label == str(round(g.inc)) and 45 <= int(row.label) <= 90 and row.binary == 0
        elif g.label == "F":
            assert round(g.inc) < 45 and row.label == "F" and row.binary == 1
        else:
            assert g.cause in fu.REJECT_CAUSES and row.label == "0" and row.binary == 1
            assert row.inc_note == f"[{g.cause}]"
    assert counts["A"] > 150 and counts["F"] > 15 and counts["J"] > 30
    # Isotropic orientations: among accepted galaxies, more edge-on than near 45 deg.
    accepted = np.array([g.inc for g in drawn if g.label == "A"])
    assert (accepted > 75).sum() > (accepted < 60).sum()


def test_a_star_reject_has_a_saturating_star_on_its_disk():
    g = next(fu.draw_galaxy(k, 2) for k in range(500) if fu.draw_galaxy(k, 2).cause == "star")
    x, y, mag, _ = g.stars[-1]
    assert mag < 15.5 and math.hypot(x, y) * g.fov < g.r25
    assert fu.star_peak(g, mag) > g.saturation
    mask = fu.saturation_mask(g, 64)
    assert mask.any()
    rows, cols = np.nonzero(mask)
    centre = (cols.mean() + 0.5 - 32) / 64, (32 - rows.mean() - 0.5) / 64
    assert centre == pytest.approx((x, y), abs=2.0 / 64)


def test_a_nearly_face_on_disk_renders_finite_light_beyond_its_map():
    # Lines of sight outside the disk map of a nearly face-on disk used to get an integration
    # interval beyond the slab, where exp(-|Z| / h_z) underflows: log(0), NaN light and a
    # crash in the Poisson noise (galaxy 64 of seed 77 at 256 px).
    g = fu.draw_galaxy(64, 77)  # inclination 1.2 deg
    with np.errstate(divide="raise", invalid="raise"):
        light = fu.render_light(g, 128, 77)[1]
    assert np.all(np.isfinite(light))
