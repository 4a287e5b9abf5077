"""Tests of inclinet.models: architectures, parameter counts, scalings and test-time views."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from inclinet import models
from inclinet.errors import ConfigError

EXPECTED_PARAMETERS = {"model4": 1_631_169, "model5": 2_522_705, "model6": 1_680_369}


@pytest.mark.parametrize("name", models.MODEL_NAMES)
@pytest.mark.parametrize("task", models.TASKS)
def test_parameter_counts_at_128(name, task):
    model = models.build_model(name, input_size=128, task=task)
    expected = EXPECTED_PARAMETERS[name] + (9 if task == "binary" else 0)
    assert model.count_params() == expected
    assert model.input_shape == (None, 128, 128, 3)
    assert model.output_shape == ((None, 1) if task == "regression" else (None, 2))
    assert model.layers[-1].name == "fc_out2"


def test_layer_structure_follows_the_reference():
    model = models.build_model("model4", input_size=128)
    shapes = {layer.name: layer.output.shape[1:] for layer in model.layers}
    assert tuple(shapes["conv1"]) == (126, 126, 16)
    assert tuple(shapes["conv4"]) == (58, 58, 32)
    assert tuple(shapes["flatten"]) == (6272,)
    bn = model.get_layer("bn_2")
    assert sum(int(np.prod(w.shape)) for w in bn.non_trainable_weights) == 64
    model5 = models.build_model("model5", input_size=128)
    assert tuple(model5.get_layer("flatten").output.shape[1:]) == (1024,)


def test_model5_below_76_px_is_a_clear_config_error():
    assert models.minimum_input_size("model5") == 76
    with pytest.raises(ConfigError, match="at least 76 px"):
        models.build_model("model5", input_size=75)
    assert models.build_model("model5", input_size=76).output_shape == (None, 1)


@pytest.mark.parametrize("name", ["model4", "model6"])
def test_small_inputs_for_model4_and_model6(name):
    model = models.build_model(name, input_size=32, task="binary")
    out = np.asarray(model(np.zeros((2, 32, 32, 3), np.float32), training=False))
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ConfigError, match="at least 20 px"):
        models.build_model(name, input_size=19)


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match="invalid model"):
        models.build_model("model7")
    with pytest.raises(ConfigError, match="invalid task"):
        models.build_model("model4", task="classify")


def test_scalings():
    assert models.scale_pixels(np.array([0, 255], np.uint8)).dtype == np.float32
    np.testing.assert_allclose(models.scale_pixels(np.array([0, 51, 255], np.uint8)), [0.0, 0.2, 1.0])
    np.testing.assert_allclose(models.inclination_to_target([45, 67.5, 90]), [-1.0, 0.0, 1.0])
    inclinations = np.arange(45, 91)
    np.testing.assert_allclose(
        models.target_to_inclination(models.inclination_to_target(inclinations)), inclinations, atol=1e-4
    )
    np.testing.assert_allclose(models.target_to_inclination([-1.5, 1.2]), [45.0, 90.0])


def test_tta_views_are_the_dihedral_group_in_a_nested_order():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 6, 6, 3), dtype=np.uint8)
    eight = models.tta_views(images, 8)
    assert eight.shape == (8, 3, 6, 6, 3)
    assert len({view[0].tobytes() for view in eight}) == 8
    for n in (1, 2, 4):
        np.testing.assert_array_equal(models.tta_views(images, n), eight[:n])
    np.testing.assert_array_equal(eight[0], images)
    np.testing.assert_array_equal(eight[1], images[:, ::-1, ::-1])  # the original's 180 degree view
    with pytest.raises(ConfigError, match="invalid views"):
        models.tta_views(images, 3)


def test_predict_views_averages_over_views():
    model = models.build_model("model4", input_size=32)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    mean, per_view = models.predict_views(model, images, 4, batch_size=3)
    assert per_view.shape == (4, 4, 1)
    direct = np.asarray(model(models.scale_pixels(np.rot90(images, 1, axes=(1, 2))), training=False))
    np.testing.assert_allclose(per_view[2], direct, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mean, per_view.mean(axis=0))


def test_importing_models_does_not_import_keras():
    code = "import sys, inclinet.models; assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the torch backend is not installed")
def test_models_run_under_the_torch_backend():
    code = (
        "import numpy as np, inclinet.models as m\n"
        "model = m.build_model('model4', input_size=32)\n"
        "assert model.count_params() > 0\n"
        "print(m.predict_views(model, np.zeros((2, 32, 32, 3), np.uint8), 2)[0].shape)\n"
    )
    env = dict(os.environ, KERAS_BACKEND="torch")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "(2, 1)" in result.stdout
