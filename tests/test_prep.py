"""inclinet-prep: resize to npz shards, padding, modes, sharding invariance, skips, JPEG option."""

import csv

import numpy as np
import pytest
from _prep_data import galaxy_image
from PIL import Image

from inclinet.axial import axial_ratio
from inclinet.catalog import write_catalog
from inclinet.stages import prep

RAW = 96
ROWS = [  # pgc, inc, inc_flg, fon, inc_note
    (101, 61, 0, "", ""),
    (57, 80, 0, "", ""),
    (230, 0, 1, "F", "[face_on]"),
    (9, 0, 1, "", "[bad_TF]"),
    (444, 47, 0, "", ""),
    (12, 90, 0, "", ""),
    (318, 55, 0, "", ""),
    (77, 72, 0, "", ""),
]


@pytest.fixture(scope="module")
def universe(tmp_path_factory):
    """Raw images of 8 galaxies in 4 bands, one non-square, one LA, plus a few broken files."""
    root = tmp_path_factory.mktemp("raw")
    galaxies = root / "galaxies"
    galaxies.mkdir()
    catalog = root / "catalog.csv"
    write_catalog(
        catalog, [dict(pgc=p, inc=i, inc_flg=f, fon=fon, inc_note=note) for p, i, f, fon, note in ROWS], fmt="csv"
    )
    for pgc, inc, *_ in ROWS:
        q = 0.5 if inc == 0 else max(0.25, np.cos(np.deg2rad(inc)))
        for band in ("g", "r", "i"):
            plane = galaxy_image(RAW, q, seed=pgc, radius=RAW / 10)[..., 0]
            Image.fromarray(plane, mode="L").save(galaxies / f"pgc{pgc}_d25x2_rot_{band}.png")
        Image.fromarray(galaxy_image(RAW, q, colour=True, seed=pgc, radius=RAW / 10)).save(
            galaxies / f"pgc{pgc}_d25x2_rot_gri.sdss.jpg", quality=95
        )
    # pgc 57: a non-square (wide) g image; pgc 444: an LA image with a transparent alpha.
    wide = galaxy_image(RAW, 0.5, radius=RAW / 10, seed=1)[..., 0]
    wide = np.concatenate([np.full((RAW, RAW // 4), wide[0, 0]), wide, np.full((RAW, RAW // 4), wide[0, 0])], 1)
    Image.fromarray(wide.astype(np.uint8), mode="L").save(galaxies / "pgc57_d25x2_rot_g.png")
    la = np.stack([galaxy_image(RAW, 0.5, seed=444)[..., 0], np.zeros((RAW, RAW), np.uint8)], axis=-1)
    Image.fromarray(la, mode="LA").save(galaxies / "pgc444_d25x2_rot_g.png")
    Image.fromarray(galaxy_image(RAW, 0.5, seed=444)[..., 0], mode="L").save(root / "pgc444_plain_g.png")
    # Broken: r of pgc 12 missing, r of pgc 77 truncated, i of pgc 318 is a colour image.
    (galaxies / "pgc12_d25x2_rot_r.png").unlink()
    data = (galaxies / "pgc77_d25x2_rot_r.png").read_bytes()
    (galaxies / "pgc77_d25x2_rot_r.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(galaxy_image(RAW, 0.5, colour=True)).save(galaxies / "pgc318_d25x2_rot_i.png")
    return root


def _prep(universe, out, band, *extra):
    return prep.main(
        [
            "-p",
            str(universe / "galaxies"),
            "-c",
            str(universe / "catalog.csv"),
            "-b",
            band,
            "-o",
            str(out),
            "-q",
            *extra,
        ]
    )


def _read(path):
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("size", [32, 64])
def test_resizes_a_band_in_catalog_order(universe, tmp_path, size):
    out = tmp_path / "part.npz"
    assert _prep(universe, out, "g", "-s", str(size)) == 0
    data = _read(out)
    assert data["images"].shape == (8, size, size, 3) and data["images"].dtype == np.uint8
    assert data["pgcIDs"].tolist() == [row[0] for row in ROWS]
    assert data["labels"].tolist() == [61, 80, 1, 0, 47, 90, 55, 72]
    assert data["labels"].dtype == np.int32 and data["pgcIDs"].dtype == np.int32
    assert str(data["band"]) == "g"
    images = data["images"]
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 0] == images[..., 2]).all()
    assert (tmp_path / "part.report.csv").read_text() == "pgc,band,file,reason\n"


def test_default_size_is_128_and_colour_band(universe, tmp_path):
    out = tmp_path / "rgb.npz"
    assert _prep(universe, out, "gri") == 0
    data = _read(out)
    assert data["images"].shape == (8, 128, 128, 3)
    images = data["images"].astype(int)
    # Normalised: bright galaxy on a dark sky whatever the source; colour images keep colour.
    assert (images[:, 56:72, 56:72].mean(axis=(1, 2, 3)) > images[:, :8, :8].mean(axis=(1, 2, 3)) + 60).all()
    assert (images[..., 0] != images[..., 2]).any(axis=(1, 2)).all()
    assert str(data["band"]) == "gri"


def test_non_square_is_framed_not_stretched(universe, tmp_path):
    out = tmp_path / "g.npz"
    assert _prep(universe, out, "g", "-s", "64") == 0
    image = _read(out)["images"][1]  # pgc 57: 96 x 144 raw
    # No flat frame where the raw image ended: the sky is noisy everywhere, at the normalised level.
    for strip in (image[:6], image[-6:]):
        assert abs(float(np.median(strip)) - 16) <= 3 and strip.std() > 1.0
    reference = galaxy_image(RAW, 0.5, radius=RAW / 10, seed=1)
    assert abs(axial_ratio(image) - axial_ratio(reference)) < 0.05


def test_alpha_is_dropped_not_averaged(universe, tmp_path):
    out = tmp_path / "g.npz"
    assert _prep(universe, out, "g", "-s", "32") == 0
    image = _read(out)["images"][4]  # pgc 444: LA with alpha 0
    plain = prep.prepare(universe / "pgc444_plain_g.png", "g", 32)
    assert np.array_equal(image, plain)  # the original's (L + alpha)/2 would wash it out


def test_downsampling_is_anti_aliased(tmp_path):
    # A galaxy drawn on a pixel-scale checkerboard sky: downsampling must average the pattern away.
    checker = ((np.indices((256, 256)).sum(axis=0) % 2) * 60 + 150).astype(np.float64)
    galaxy = 255 - galaxy_image(256, 0.5, radius=256 / 10, seed=3)[..., 0].astype(np.float64)
    image = np.clip(checker - galaxy, 0, 255).astype(np.uint8)
    Image.fromarray(image, mode="L").save(tmp_path / "checker.png")
    small = prep.prepare(tmp_path / "checker.png", "g", 32)
    sky = np.concatenate([small[:4].ravel(), small[-4:].ravel()]).astype(float)
    assert sky.std() < 6  # aliased, the +-30 checkerboard would come through at full strength


def test_sharding_invariance(universe, tmp_path):
    full = tmp_path / "full.npz"
    assert _prep(universe, full, "r", "-s", "32") == 0
    parts = []
    for index in range(1, 4):
        parts.append(tmp_path / f"part{index:04d}of0003.npz")
        assert _prep(universe, parts[-1], "r", "-s", "32", "--shard", f"{index}/3") == 0
    whole = _read(full)
    pieces = [_read(part) for part in parts]
    for key in ("images", "labels", "pgcIDs"):
        assert np.array_equal(whole[key], np.concatenate([piece[key] for piece in pieces]))
    skipped = [row for part in parts for row in csv.DictReader(open(str(part).replace(".npz", ".report.csv")))]
    whole_skips = list(csv.DictReader(open(tmp_path / "full.report.csv")))
    assert skipped == whole_skips


def test_bad_images_are_skipped_and_reported(universe, tmp_path):
    for band, pgc, reason in (
        ("r", 12, "no r image"),
        ("r", 77, "corrupt or truncated"),
        ("i", 318, "colour image for the grayscale band"),
    ):
        out = tmp_path / f"{band}.npz"
        assert _prep(universe, out, band, "-s", "32") == 0
        assert pgc not in _read(out)["pgcIDs"].tolist()
        rows = list(csv.DictReader(open(tmp_path / f"{band}.report.csv")))
        assert any(row["pgc"] == str(pgc) and reason in row["reason"] and row["band"] == band for row in rows), rows
    assert len(_read(tmp_path / "r.npz")["pgcIDs"]) == 6


def test_grayscale_image_for_colour_band_is_skipped(universe, tmp_path):
    galaxies = tmp_path / "galaxies"
    galaxies.mkdir()
    Image.fromarray(galaxy_image(RAW, 0.5)).save(galaxies / "pgc101_d25x2_rot_gri.jpg")  # gray pixels in RGB
    out = tmp_path / "rgb.npz"
    assert (
        prep.main(
            ["-p", str(galaxies), "-c", str(universe / "catalog.csv"), "-b", "gri", "-s", "32", "-o", str(out), "-q"]
        )
        == 0
    )
    report = (tmp_path / "rgb.report.csv").read_text()
    assert "grayscale image for the colour band" in report and report.count("\n") == 9  # header + 8


def test_jpeg_option_uses_the_original_names(universe, tmp_path):
    jpegs = tmp_path / "jpeg"
    assert _prep(universe, tmp_path / "g.npz", "g", "-s", "32", "--jpeg-dir", str(jpegs)) == 0
    names = sorted(p.name for p in jpegs.iterdir())
    assert "pgc101_32x32_61.g.jpg" in names and "pgc230_32x32_F.g.jpg" in names and "pgc9_32x32_0.g.jpg" in names
    assert len(names) == 8
    with Image.open(jpegs / "pgc101_32x32_61.g.jpg") as picture:
        assert picture.mode == "L" and picture.size == (32, 32)
    assert _prep(universe, tmp_path / "c.npz", "gri", "-s", "32", "--jpeg-dir", str(jpegs)) == 0
    assert (jpegs / "pgc57_32x32_80.RGB.jpg").is_file()


def test_bad_arguments_and_catalog(universe, tmp_path, capsys):
    out = tmp_path / "x.npz"
    assert _prep(universe, out, "z") == 2
    assert _prep(universe, out, "g", "-s", "0") == 2
    assert _prep(universe, out, "g", "--shard", "4/3") == 2
    assert (
        prep.main(["-p", str(tmp_path / "nowhere"), "-c", str(universe / "catalog.csv"), "-b", "g", "-o", str(out)])
        == 2
    )
    bad_catalog = tmp_path / "bad.csv"
    bad_catalog.write_text("pgc,inc\n12,abc\n")
    capsys.readouterr()
    assert prep.main(["-p", str(universe / "galaxies"), "-c", str(bad_catalog), "-b", "g", "-o", str(out)]) == 2
    assert "bad.csv" in capsys.readouterr().err
    assert not out.exists()


def test_chain_on_synthetic_universe(tiny_universe, tmp_path):
    """prep (2 shards) -> compress -> split -> augment on rendered galaxies, through main()."""
    from inclinet.stages import augment, compress, split

    data = tmp_path / "run"
    compressed = []
    for band, tag in (("g", "g"), ("r", "r"), ("i", "i"), ("gri", "RGB")):
        parts = [data / f"resized/32x32_{tag}/part{k:04d}of0002.npz" for k in (1, 2)]
        for k, part in enumerate(parts, start=1):
            assert (
                prep.main(
                    [
                        "-p",
                        str(tiny_universe / "galaxies"),
                        "-c",
                        str(tiny_universe / "catalog.csv"),
                        "-b",
                        band,
                        "-s",
                        "32",
                        "--shard",
                        f"{k}/2",
                        "-o",
                        str(part),
                        "-q",
                    ]
                )
                == 0
            )
        compressed.append(data / f"compressed/32x32_{tag}.npz")
        assert compress.main(["-i", *map(str, parts), "-o", str(compressed[-1]), "-s", "32", "-q"]) == 0
        merged = _read(compressed[-1])
        assert len(merged["pgcIDs"]) == 40 and list(merged["pgcIDs"]) == sorted(merged["pgcIDs"])
    assert (
        split.main(
            [
                "-i",
                *map(str, compressed),
                "-o",
                str(data / "samples"),
                "-s",
                "32",
                "-n",
                "1",
                "--test-fraction",
                "0.2",
                "-q",
            ]
        )
        == 0
    )
    for tag in ("g", "r", "i", "RGB"):
        test = set(_read(data / f"samples/{tag}_32x32_test_000.npz")["pgcIDs"].tolist())
        assert test
        for k in (0, 1):
            assert not test & set(_read(data / f"samples/{tag}_32x32_train_{k:03d}.npz")["pgcIDs"].tolist())
    samples = [data / f"samples/{tag}_32x32_train_001.npz" for tag in ("RGB", "g", "r", "i")]
    out = data / "augmented/Uset_001_npz"
    assert augment.main(["-i", *map(str, samples), "-o", str(out), "-s", "32", "-b", "2", "-z", "2", "-q"]) == 0
    batch = _read(out / "32x32_train_aug_02.npz")
    colour = batch["filter"].astype(str) == "c"
    assert colour.sum() == (~colour).sum() > 0 and "inverted" not in batch
    assert set(batch["pgcIDs"].tolist()) <= set(_read(samples[0])["pgcIDs"].tolist()) | set(
        _read(samples[1])["pgcIDs"].tolist()
    )
