"""The reject probe's trunk pretraining (bench/reject_probe.py --pretrain): targets and the censored loss."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parent.parent / "bench" / "reject_probe.py"
_spec = importlib.util.spec_from_file_location("reject_probe", _PATH)
rp = importlib.util.module_from_spec(_spec)
# The probe pins its thread pools through the environment on import: keep this session's.
_environ = dict(os.environ)
_spec.loader.exec_module(rp)
os.environ.clear()
os.environ.update(_environ)


def _data():
    return {
        "labels": np.array(["A", "F", "J", "A", "F"]),
        "inclinations": np.array([45.0, 30.0, 60.0, 90.0, 10.0]),
    }


def test_narrow_targets_are_the_workflow_regression_on_accepted_galaxies():
    rows, target, bound = rp.pretrain_targets(_data(), "narrow")
    assert rows.tolist() == [True, False, False, True, False]
    np.testing.assert_allclose(target, [-1.0, 1.0])
    assert not bound.any()


def test_censored_targets_keep_only_an_upper_bound_for_face_on_galaxies():
    rows, target, bound = rp.pretrain_targets(_data(), "censored")
    assert rows.tolist() == [True, True, False, True, True]
    # Accepted at (inc - 45) / 45; face-on: bound 0 (45 deg), whatever the true inclination.
    np.testing.assert_allclose(target, [0.0, 0.0, 1.0, 0.0])
    assert bound.tolist() == [0.0, 1.0, 0.0, 1.0]


def test_wide_targets_use_the_true_inclination_of_face_on_galaxies():
    _, target, bound = rp.pretrain_targets(_data(), "wide")
    np.testing.assert_allclose(target, [0.0, -15.0 / 45.0, 1.0, -35.0 / 45.0])
    assert not bound.any()


def test_censored_loss_is_zero_below_the_bound_and_squared_above():
    pytest.importorskip("keras")
    y_true = np.array([[0.0, 1.0], [0.0, 1.0], [0.5, 0.0], [0.5, 0.0]], dtype=np.float32)
    y_pred = np.array([[-0.4], [0.3], [0.2], [0.9]], dtype=np.float32)
    loss = np.asarray(rp.censored_mse(y_true, y_pred))
    np.testing.assert_allclose(loss, [0.0, 0.09, 0.09, 0.16], atol=1e-6)


def test_several_training_folders_are_pooled_in_order():
    first = {"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.array(["A", "J"])}
    second = {"images": np.ones((1, 4, 4, 3), np.uint8), "labels": np.array(["F"])}
    pooled = rp.pool([first, second])
    assert pooled["images"].shape == (3, 4, 4, 3)
    assert pooled["images"][2].min() == 1
    assert pooled["labels"].tolist() == ["A", "J", "F"]


def test_pooled_reliability_counts_rejects_caught_and_the_calibration_error():
    scores = np.array([0.95, 0.85, 0.35, 0.15, 0.65])
    positive = np.array([True, True, True, False, False])
    result = rp.pooled_reliability(scores, positive, None)
    assert result["n"] == 5
    assert result["prevalence"] == 0.6
    assert result["rejects_caught"] == round(2 / 3, 3)
    # One image per bin: the ECE is the mean |p - label|.
    assert result["ece"] == round(float(np.mean(np.abs(scores - positive))), 3)
    assert "ece_temperature" not in result
    with_temperature = rp.pooled_reliability(scores, positive, 2.0)
    assert with_temperature["temperature"] == 2.0
    assert with_temperature["ece_temperature"] != result["ece"]


def test_aperture_sets_the_sky_level_outside_the_radius_only():
    images = np.full((2, rp.SIZE, rp.SIZE, 3), 200, dtype=np.uint8)
    masked = rp.aperture(images, 12)
    centre = rp.SIZE // 2
    assert (masked[:, centre, centre] == 200).all()
    assert (masked[:, centre, centre + 11] == 200).all()
    assert (masked[:, 0, 0] == 16).all() and (masked[:, centre, centre + 14] == 16).all()
    assert (images == 200).all()  # the input is left as it was
