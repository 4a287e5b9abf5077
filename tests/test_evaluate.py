"""Tests of inclinet-evaluate: metrics helpers, the report files, the bundle."""

import csv
import json
import math

import numpy as np
import pytest
from conftest import ellipse_images

from inclinet import naming
from inclinet.errors import ConfigError, InputError
from inclinet.io import atomic_savez
from inclinet.models import build_model
from inclinet.stages import evaluate

SIZE = 32
BANDS = ("gri", "g", "r", "i")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    tests, binary_tests = [], []
    for k, band in enumerate(BANDS):
        images, inclinations = ellipse_images(8, SIZE, k, colour=band == "gri")
        pgc = np.arange(8, dtype=np.int32) + 100
        path = root / naming.sample(SIZE, band, "test", 0)
        atomic_savez(path, images=images, labels=inclinations, pgcIDs=pgc, band=np.array(band))
        tests.append(path)
        binary = root / naming.sample(SIZE, band, "binary_test")
        atomic_savez(
            binary, images=images, labels=(inclinations > 75).astype(np.int32), pgcIDs=pgc, band=np.array(band)
        )
        binary_tests.append(binary)
    models = []
    for model, subset, task in (
        ("model4", 0, "regression"),
        ("model4", 1, "regression"),
        ("model6", 0, "regression"),
        ("model4", "binary", "binary"),
    ):
        path = root / naming.trained_model(model, subset)
        path.parent.mkdir(parents=True, exist_ok=True)
        build_model(model, input_size=SIZE, task=task).save(path)
        models.append(path)
    return {"root": root, "tests": tests, "binary_tests": binary_tests, "models": models}


def _all_finite(obj):
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_all_finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def test_bias_fit_and_correction_recover_a_linear_bias():
    truth = np.linspace(45, 90, 46)
    m, b = 0.04, -2.5
    predicted = truth - (m * truth + b)  # delta = truth - predicted = m * truth + b
    predicted[3] = truth[3] - 30  # an outlier outside the |delta| < 10 window
    fit = evaluate.bias_fit(truth, predicted)
    assert fit["m"] == pytest.approx(m) and fit["b"] == pytest.approx(b) and fit["n_fit"] == 45
    corrected = evaluate.apply_calibration(predicted, fit)
    np.testing.assert_allclose(np.delete(corrected, 3), np.delete(truth, 3))


def test_regression_metrics_and_bins():
    truth = np.array([45, 50, 52, 88, 90], float)
    predicted = np.array([47, 50, 50, 90, 89], float)
    result = evaluate.regression_metrics(truth, predicted)
    delta = truth - predicted
    assert result["rms"] == pytest.approx(np.sqrt(np.mean(delta**2)))
    assert result["mae"] == pytest.approx(np.mean(np.abs(delta)))
    assert result["bias"] == pytest.approx(np.mean(delta))
    bins = {b["bin"]: b for b in result["bins"]}
    assert bins["45-50"]["n"] == 2 and bins["50-55"]["n"] == 1 and bins["85-90"]["n"] == 2
    assert bins["85-90"]["bias"] == pytest.approx(-0.5)
    assert bins["60-65"]["n"] == 0 and bins["60-65"]["rms"] is None
    with_missing = evaluate.regression_metrics(truth, np.array([47, np.nan, 50, 90, 89]))
    assert with_missing["n"] == 4 and with_missing["n_missing"] == 1


def test_binary_metrics_and_auc():
    labels = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.4, 0.6, 0.1, 0.8, 0.2])
    result = evaluate.binary_metrics(labels, scores)
    assert result["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}
    assert result["precision"] == pytest.approx(2 / 3) and result["recall"] == pytest.approx(2 / 3)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["auc"] == pytest.approx(8 / 9)
    assert evaluate.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert evaluate.roc_auc([1, 1], [0.2, 0.3]) is None


def test_member_names_from_model_files():
    assert evaluate.parse_model_file("models/Uset_000_model4.keras") == ("model4", 0)
    assert evaluate.parse_model_file("Uset_002_model5.keras") == ("model5", 2)
    assert evaluate.parse_model_file("Binary_model6.keras") == ("model6", "binary")
    with pytest.raises(InputError, match="Uset_<jjj>_<model>.keras"):
        evaluate.parse_model_file("my_model.keras")
    members = evaluate.describe_members(
        ["Binary_model4.keras", "Uset_001_model4.keras", "Uset_000_model6.keras", "Uset_000_model4.keras"]
    )
    assert [m["name"] for m in members] == ["model4", "model41", "model6", "model4-binary"]
    with pytest.raises(ConfigError, match="given twice"):
        evaluate.describe_members(["a/Uset_000_model4.keras", "b/Uset_000_model4.keras"])


def test_evaluation_writes_every_file_with_finite_numbers(setup, tmp_path):
    out, bundle = tmp_path / "evaluation", tmp_path / "bundle"
    argv = [
        "--models",
        *map(str, setup["models"]),
        "--test",
        *map(str, setup["tests"]),
        "--binary-test",
        *map(str, setup["binary_tests"]),
        "--output-dir",
        str(out),
        "--bundle-dir",
        str(bundle),
        "--seed",
        "4",
        "-q",
    ]
    assert evaluate.main(argv) == 0
    for name in naming.EVALUATION_FILES:
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert _all_finite(metrics)
    regression = metrics["regression"]
    for column in ("model4", "model41", "model6", "ensemble_mean", "ensemble_median", "model4_mean", "peer"):
        for band in ("all", "colour", "g", "r", "i"):
            entry = regression[column][band]
            assert entry["n"] == (32 if band == "all" else 8)
            assert {"rms", "mae", "bias", "fit", "rms_corrected", "bins"} <= set(entry)
    # The classical peer measures clean ellipses well; untrained CNNs cannot.
    assert regression["peer"]["all"]["rms"] < 6.0
    assert set(metrics["tta"]) == {"1", "2", "8"}
    assert set(metrics["binary"]) == {"model4-binary", "ensemble_mean", "ensemble_median"}
    assert 0.0 <= metrics["binary"]["model4-binary"]["all"]["accuracy"] <= 1.0

    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 32
    assert list(rows[0])[:6] == ["pgc", "band", "truth", "model4", "model41", "model6"]
    for row in rows:
        members = [float(row[name]) for name in ("model4", "model41", "model6")]
        assert float(row["ensemble_mean"]) == pytest.approx(np.mean(members), abs=1e-3)
        assert float(row["ensemble_median"]) == pytest.approx(np.median(members), abs=1e-3)
        assert float(row["ensemble_std"]) == pytest.approx(np.std(members), abs=1e-3)
        assert 45.0 <= float(row["peer"]) <= 90.0
    report = (out / "report.html").read_text()
    for image in ("predicted_vs_true.png", "residuals.png", "outliers.png", "confusion.png"):
        assert image in report

    manifest = json.loads((bundle / "manifest.json").read_text())
    for key in (
        "format_version",
        "members",
        "groups",
        "input_size",
        "pixel_scaling",
        "label_scaling",
        "calibration",
        "metrics",
        "versions",
        "seed",
        "views",
    ):
        assert key in manifest, key
    assert manifest["groups"] == {"Group_0": ["model4", "model41"], "Group_2": ["model6"], "binary": ["model4-binary"]}
    assert manifest["input_size"] == SIZE and manifest["seed"] == 4 and manifest["views"] == 8
    for member in manifest["members"]:
        assert (bundle / member["file"]).is_file()
    assert sorted(p.name for p in bundle.iterdir()) == sorted(
        ["manifest.json", "model4.keras", "model41.keras", "model6.keras", "model4-binary.keras"]
    )


def test_tta_views_change_predictions_and_one_view_matches_a_plain_call(setup, tmp_path):
    metrics = evaluate.run(
        models=setup["models"][:1],
        test=setup["tests"][:1],
        output_dir=tmp_path / "e",
        bundle_dir=tmp_path / "b",
        views=2,
    )
    assert set(metrics["tta"]) == {"1", "2"}
    keras = evaluate.inclinet_models.import_keras()
    model = keras.models.load_model(setup["models"][0])
    images = np.load(setup["tests"][0])["images"]
    direct = evaluate.inclinet_models.target_to_inclination(
        np.asarray(model(evaluate.inclinet_models.scale_pixels(images), training=False))[:, 0]
    )
    one_view_rms = metrics["tta"]["1"]["members"]["model4"]["rms"]
    truth = np.load(setup["tests"][0])["labels"]
    assert one_view_rms == pytest.approx(np.sqrt(np.mean((truth - direct) ** 2)), abs=1e-4)
    confusion = (tmp_path / "e" / "confusion.png").read_bytes()
    assert confusion[:8] == b"\x89PNG\r\n\x1a\n"
    assert metrics["binary"] == {}


def test_bad_inputs_are_clear_errors(setup, tmp_path, capsys):
    base = ["--output-dir", str(tmp_path / "e"), "--bundle-dir", str(tmp_path / "b"), "-q"]
    # Binary models need the binary test split.
    assert evaluate.main(["--models", *map(str, setup["models"]), "--test", *map(str, setup["tests"])] + base) == 2
    assert "--binary-test" in capsys.readouterr().err
    # A binary test file is not a regression test file.
    argv = ["--models", str(setup["models"][0]), "--test", str(setup["binary_tests"][0])] + base
    assert evaluate.main(argv) == 2
    assert "must hold inclinations" in capsys.readouterr().err
    bad_name = tmp_path / "final.keras"
    bad_name.write_bytes(setup["models"][0].read_bytes())
    assert evaluate.main(["--models", str(bad_name), "--test", str(setup["tests"][0])] + base) == 2
    assert "cannot tell the member" in capsys.readouterr().err
    assert not (tmp_path / "b" / "manifest.json").exists()
