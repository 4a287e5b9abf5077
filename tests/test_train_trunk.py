"""inclinet-train --init-trunk: a reject member on a regression member's frozen convolutional trunk."""

import json

import numpy as np
import pytest
from test_train import argv, outputs, stop_at_step, write_batch, write_sample

from inclinet.stages import train

QUICK = ["--batch-size", "8", "-q"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model4 regression member and the binary data to put a reject member on it."""
    root = tmp_path_factory.mktemp("trunk")
    regression = {
        "samples": [write_sample(root / f"{b}_test.npz", b, 6, k) for k, b in enumerate(["gri", "g", "r", "i"])],
        "batches": [write_batch(root / f"aug_{k:02d}.npz", 20, k) for k in (1, 2)],
        "dir": root,
    }
    assert train.main(argv(regression, extra=["--epochs", "1", "--seed", "3", *QUICK])) == 0
    binary = {
        "samples": [write_sample(root / f"{b}_bt.npz", b, 8, k, binary=True) for k, b in enumerate(["gri", "r"])],
        "batches": [write_batch(root / f"b{k:02d}.npz", 24, k, binary=True) for k in (1, 2)],
    }
    return {"member": outputs(root)["--output"], "binary": binary}


def binary_run(trained, folder, extra=()):
    data = dict(trained["binary"], dir=folder)
    return argv(data, "model4", "binary", ["--epochs", "2", "--seed", "5", *QUICK, *extra], stem="Binary_model4")


def layers_by_kind(path):
    keras = train.inclinet_models.import_keras()
    model = keras.models.load_model(path)
    dense = {layer.name for layer in model.layers if isinstance(layer, keras.layers.Dense)}
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}, dense


def test_reject_member_keeps_the_regression_trunk_and_learns_its_dense_layers(trained, tmp_path):
    trunk = ["--init-trunk", str(trained["member"])]
    assert train.main(binary_run(trained, tmp_path / "trunk", trunk)) == 0
    assert train.main(binary_run(trained, tmp_path / "scratch")) == 0
    source, _ = layers_by_kind(trained["member"])
    on_trunk, dense = layers_by_kind(outputs(tmp_path / "trunk", "Binary_model4")["--output"])
    scratch, _ = layers_by_kind(outputs(tmp_path / "scratch", "Binary_model4")["--output"])
    convolutional = [name for name in on_trunk if name not in dense]
    assert convolutional and dense and "fc_out2" in dense
    for name in convolutional:  # copied and frozen: bit-identical, batch-norm statistics included
        for ours, theirs in zip(on_trunk[name], source[name]):
            np.testing.assert_array_equal(ours, theirs)
    for name in dense - {"fc_out2"}:  # the regression member's dense layers are not taken over
        assert not any(np.array_equal(a, b) for a, b in zip(on_trunk[name], source[name]))
    assert any(not np.array_equal(on_trunk[name][0], scratch[name][0]) for name in convolutional)
    metrics = json.loads(outputs(tmp_path / "trunk", "Binary_model4")["--metrics"].read_text())
    assert metrics["init_trunk"] == str(trained["member"])
    assert 0 < metrics["trainable_parameters"] < metrics["parameters"]
    plain = json.loads(outputs(tmp_path / "scratch", "Binary_model4")["--metrics"].read_text())
    assert plain["init_trunk"] is None and plain["parameters"] == metrics["parameters"]
    # From scratch everything but the batch normalisations' moving statistics learns.
    assert metrics["trainable_parameters"] < plain["trainable_parameters"] < plain["parameters"]


def test_a_reject_member_on_a_trunk_resumes_bit_identically(trained, tmp_path, monkeypatch):
    trunk = ["--init-trunk", str(trained["member"])]
    assert train.main(binary_run(trained, tmp_path / "whole", trunk)) == 0
    stop_step = int(np.random.default_rng().integers(1, 6))  # 6 steps per epoch, 2 epochs
    with monkeypatch.context() as patch:
        stop_at_step(patch, stop_step)
        assert train.main(binary_run(trained, tmp_path / "resumed", trunk)) == train.EXIT_INTERRUPTED
    assert train.main(binary_run(trained, tmp_path / "resumed", trunk)) == 0
    whole, _ = layers_by_kind(outputs(tmp_path / "whole", "Binary_model4")["--output"])
    resumed, _ = layers_by_kind(outputs(tmp_path / "resumed", "Binary_model4")["--output"])
    for name in whole:
        for a, b in zip(whole[name], resumed[name]):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}, stopped at step {stop_step}")


def test_a_checkpoint_from_another_trunk_is_not_resumed(trained, tmp_path, monkeypatch, capsys):
    trunk = ["--init-trunk", str(trained["member"])]
    with monkeypatch.context() as patch:
        stop_at_step(patch, 2)
        assert train.main(binary_run(trained, tmp_path, trunk)) == train.EXIT_INTERRUPTED
    assert train.main(binary_run(trained, tmp_path)) == 2  # the checkpoint was started on the trunk
    assert "written by a run with other settings" in capsys.readouterr().err


def test_bad_trunks_exit_2_with_a_clear_message(trained, tmp_path, capsys):
    assert train.main(binary_run(trained, tmp_path, ["--init-trunk", str(tmp_path / "none.keras")])) == 2
    assert "none.keras" in capsys.readouterr().err
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a model")
    assert train.main(binary_run(trained, tmp_path, ["--init-trunk", str(broken)])) == 2
    assert "cannot read --init-trunk" in capsys.readouterr().err
    # A binary member is no regression trunk, and a regression member takes no trunk.
    assert train.main(binary_run(trained, tmp_path / "plain")) == 0
    other = outputs(tmp_path / "plain", "Binary_model4")["--output"]
    assert train.main(binary_run(trained, tmp_path, ["--init-trunk", str(other)])) == 2
    assert "must be a model4 regression member" in capsys.readouterr().err
    regression = dict(trained["binary"], dir=tmp_path / "r")
    args = argv(regression, extra=["--epochs", "1", *QUICK, "--init-trunk", str(trained["member"])])
    assert train.main(args) == 2
    assert "must go with --task binary" in capsys.readouterr().err
