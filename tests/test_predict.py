"""Tests of inclinet-predict: the API JSON, image formats, failures, folders and catalogs."""

import json

import numpy as np
import pytest
from conftest import untrained_bundle
from PIL import Image

from inclinet import bundle as model_bundle
from inclinet import models
from inclinet.catalog import Galaxy, write_catalog
from inclinet.normalise import normalise_image
from inclinet.stages import predict

SIZE = 32


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    members = (
        ("model4", 0, "regression"),
        ("model4", 2, "regression"),
        ("model6", 1, "regression"),
        ("model4", "binary", "binary"),
        ("model6", "binary", "binary"),
    )
    return untrained_bundle(tmp_path_factory.mktemp("predict"), members, size=SIZE)


def galaxy_image(height, width, *, colour=True, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    profile = np.exp(-((xx - width / 2) ** 2 / (0.1 * width) ** 2 + (yy - height / 2) ** 2 / (0.05 * height) ** 2))
    base = profile * 220 + rng.normal(0, 3, profile.shape)
    if colour:
        return np.clip(np.stack([base, base * 0.8, base * 0.6], axis=-1), 0, 255).astype(np.uint8)
    return np.clip(255 - base, 0, 255).astype(np.uint8)


def test_summary_reproduces_the_original_example():
    result = model_bundle.summary([69, 72, 76, 71, 73, 73, 74, 74, 73, 76, 76, 67])
    assert result["mean"] == pytest.approx(72.8333, abs=5e-5)
    assert result["median"] == 73.0
    assert result["stdev"] == pytest.approx(2.67187, abs=5e-6)
    rejection = model_bundle.summary([50.3969, 20.4981, 65.3705])
    assert rejection["median"] == pytest.approx(50.3969)
    assert rejection["mean"] == pytest.approx(45.4219, abs=1e-4)
    assert rejection["stdev"] == pytest.approx(18.6538, abs=1e-4)


def test_predict_formats_failures_and_the_api_json(bundle, tmp_path, capsys):
    files = {
        "colour.png": galaxy_image(40, 40),
        "colour.jpg": galaxy_image(48, 48, seed=1),
        "gray.png": galaxy_image(40, 40, colour=False),
        "wide.jpeg": galaxy_image(30, 70, seed=2),
        "anim.gif": galaxy_image(36, 36, colour=False, seed=3),
    }
    for name, array in files.items():
        Image.fromarray(array).save(tmp_path / name)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    inputs = [str(tmp_path / name) for name in list(files) + ["corrupt.png", "empty.jpg", "notes.txt"]]
    assert predict.main(["--bundle", str(bundle), *inputs, "-q"]) == 2
    captured = capsys.readouterr()
    assert "3 of 8 input(s) could not be predicted" in captured.err
    answers = [json.loads(line) for line in captured.out.splitlines()]
    assert [a["filename"] for a in answers] == inputs
    for answer in answers[:5]:
        assert answer["status"] == "success"
        inclinations = answer["inclinations"]
        assert list(inclinations) == ["Group_0", "Group_2", "summary"]
        assert list(inclinations["Group_0"]) == ["model4", "model42"]
        assert list(inclinations["Group_2"]) == ["model61"]
        values = [v for group in ("Group_0", "Group_2") for v in inclinations[group].values()]
        assert all(45.0 <= v <= 90.0 and v == round(v) for v in values)
        assert inclinations["summary"]["stdev"] == pytest.approx(np.std(values))
        assert inclinations["summary"]["median"] == pytest.approx(np.median(values))
        rejection = answer["rejection_likelihood"]
        assert list(rejection) == ["model4-binary", "model6-binary", "summary"]
        assert all(0.0 <= rejection[name] <= 100.0 for name in ("model4-binary", "model6-binary"))
        assert rejection["summary"]["mean"] == pytest.approx(
            (rejection["model4-binary"] + rejection["model6-binary"]) / 2
        )
    for answer in answers[5:]:
        assert answer["status"] == "failed" and answer["message"]
        assert set(answer) == {"status", "filename", "message"}
    assert "empty" in answers[6]["message"]


def test_prediction_equals_the_models_on_the_prepared_pixels(bundle, tmp_path):
    array = galaxy_image(20, 32, seed=4)
    Image.fromarray(array).save(tmp_path / "g.png")
    answer = predict.run(bundle=bundle, inputs=[tmp_path / "g.png"], output=tmp_path / "out.jsonl")[0]
    # The models see the canonical normalisation of the file, the same function as prep's.
    padded = normalise_image(array, 32)
    loaded = model_bundle.Bundle(bundle)
    mean, _ = models.predict_views(loaded.network("model42"), padded[None], 2)
    expected = float(np.round(models.target_to_inclination(mean[0, 0])))
    assert answer["inclinations"]["Group_0"]["model42"] == expected
    mean, _ = models.predict_views(loaded.network("model6-binary"), padded[None], 2)
    reported = answer["rejection_likelihood"]["model6-binary"]
    assert reported == round(reported, 2) and reported == pytest.approx(100 * mean[0, 1], abs=0.01)  # to 0.01 %
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert written == [answer]


def test_folders_and_catalogs(bundle, tmp_path):
    folder = tmp_path / "galaxies"
    folder.mkdir()
    for pgc in (11, 12):
        Image.fromarray(galaxy_image(40, 40, seed=pgc)).save(folder / f"pgc{pgc}_d25x2_rot_gri.sdss.jpg")
    (folder / "readme.txt").write_text("ignored in folders")
    catalog = tmp_path / "catalog.csv"
    write_catalog(catalog, [Galaxy(pgc=11, inc=70), Galaxy(pgc=12, inc=80), Galaxy(pgc=13, inc=60)])
    output = tmp_path / "out.jsonl"
    argv = [
        "--bundle",
        str(bundle),
        str(folder),
        "--catalog",
        str(catalog),
        "--data-path",
        str(folder),
        "--output",
        str(output),
        "-q",
    ]
    assert predict.main(argv) == 2  # pgc 13 has no image
    answers = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(answers) == 5
    assert [a["status"] for a in answers] == ["success"] * 4 + ["failed"]
    assert [a.get("pgc") for a in answers[2:]] == [11, 12, 13]
    assert answers[0]["inclinations"] == answers[2]["inclinations"]
    assert "pgc 13" in answers[4]["message"]


def test_bad_bundles_and_arguments(tmp_path, bundle, capsys):
    assert predict.main(["--bundle", str(tmp_path), "x.png", "-q"]) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert predict.main(["--bundle", str(bundle), "-q"]) == 2
    assert "nothing to predict" in capsys.readouterr().err
    assert predict.main(["--bundle", str(bundle), "--data-path", str(tmp_path), "x.png", "-q"]) == 2
    assert "--catalog" in capsys.readouterr().err


@pytest.fixture(scope="module")
def reference_bundle(bundle, tmp_path_factory):
    """The same members with a peer calibration, reject temperatures and an out-of-distribution reference."""
    import shutil

    from inclinet import peer, reliability

    root = tmp_path_factory.mktemp("reference")
    rng = np.random.default_rng(3)
    raws = [galaxy_image(64, 64, seed=int(seed)) for seed in rng.integers(0, 1000, 24)]
    images = np.stack([normalise_image(raw, SIZE) for raw in raws])
    measured = peer.measure(images)
    truth = np.full(len(images), 60.0)
    calibration = peer.fit_peer(measured, truth)
    manifest = json.loads((bundle / "manifest.json").read_text())
    members = [{**m, "path": bundle / m["file"]} for m in manifest["members"]]
    reference = reliability.reference_ranges(images, np.full(len(images), 0.5))
    model_bundle.write_bundle(
        root / "bundle",
        members,
        input_size=SIZE,
        seed=1,
        views=2,
        peer_calibration=calibration,
        reject_temperatures={"model4-binary": 2.0},
        ood_reference=reference,
    )
    shutil.rmtree(root / "unused", ignore_errors=True)
    return root / "bundle"


def test_answers_carry_peer_spread_and_out_of_distribution_warnings(reference_bundle, tmp_path):
    Image.fromarray(galaxy_image(64, 64, seed=5)).save(tmp_path / "galaxy.png")
    rng = np.random.default_rng(1)
    field = np.full((64, 64, 3), 10, np.uint8)
    for x, y in rng.integers(3, 61, size=(30, 2)):
        field[y - 1 : y + 2, x - 1 : x + 2] = 250
    Image.fromarray(field).save(tmp_path / "stars.png")
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(tmp_path / "blank.png")
    answers = predict.run(
        bundle=reference_bundle, inputs=[tmp_path / n for n in ("galaxy.png", "stars.png", "blank.png")]
    )
    galaxy, stars, blank = answers
    for answer in answers:
        assert answer["status"] == "success"
        assert set(answer) >= {"member_spread", "peer", "out_of_distribution", "warnings"}
        assert answer["peer"]["method"] in ("moments", "adaptive", "isophote")
    # The members disagree (untrained), so the spread rule fires everywhere; the star field and
    # the blank frame are also far from the test images' statistics or have no galaxy at all.
    assert [w for w in galaxy["warnings"] if "disagree" not in w] == []  # like the reference images
    assert any("disagree" in w for w in galaxy["warnings"]) and galaxy["out_of_distribution"]
    assert any("edge flux" in w for w in stars["warnings"]) and any("asymmetry" in w for w in stars["warnings"])
    assert any("no galaxy" in w for w in blank["warnings"])
    assert galaxy["peer"]["inclination"] is None or 45 <= galaxy["peer"]["inclination"] <= 90


def test_rejection_likelihood_uses_the_members_temperature(bundle, reference_bundle, tmp_path):
    Image.fromarray(galaxy_image(40, 40, seed=7)).save(tmp_path / "g.png")
    plain = predict.run(bundle=bundle, inputs=[tmp_path / "g.png"])[0]["rejection_likelihood"]
    warmed = predict.run(bundle=reference_bundle, inputs=[tmp_path / "g.png"])[0]["rejection_likelihood"]
    from inclinet.reliability import apply_temperature

    expected = 100 * apply_temperature(plain["model4-binary"] / 100, 2.0)
    assert warmed["model4-binary"] == pytest.approx(float(expected), abs=0.01)  # both reported to 0.01 %
    assert warmed["model6-binary"] == pytest.approx(plain["model6-binary"], abs=0.01)
