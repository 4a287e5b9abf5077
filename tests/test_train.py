"""Tests of inclinet-train: outputs, input checks, deterministic streaming, kill-and-resume."""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from conftest import ellipse_images

from inclinet.io import atomic_savez
from inclinet.stages import train

SIZE = 32


def write_sample(path, band, n, seed, *, binary=False):
    images, inclinations = ellipse_images(n, SIZE, seed, colour=band == "gri", major=0.35)
    labels = (inclinations > 80).astype(np.int32) if binary else inclinations
    atomic_savez(
        path, images=images, labels=labels, pgcIDs=np.arange(n, dtype=np.int32) + 1000 * seed, band=np.array(band)
    )
    return path


def write_batch(path, n, seed, *, binary=False):
    images, inclinations = ellipse_images(n, SIZE, seed, colour=seed % 2 == 0)
    labels = (inclinations > 80).astype(np.int32) if binary else inclinations
    atomic_savez(
        path,
        images=images,
        labels=labels,
        pgcIDs=np.arange(n, dtype=np.int32),
        filter=np.array([b"c" if seed % 2 == 0 else b"g"] * n, dtype="S1"),
        inverted=np.zeros(n, bool),
    )
    return path


@pytest.fixture
def data(tmp_path):
    samples = [
        write_sample(tmp_path / f"{tag}_test.npz", band, 6, k)
        for k, (band, tag) in enumerate([("gri", "RGB"), ("g", "g"), ("r", "r"), ("i", "i")])
    ]
    batches = [write_batch(tmp_path / f"aug_{k:02d}.npz", 20, k) for k in (1, 2)]
    return {"samples": samples, "batches": batches, "dir": tmp_path}


def outputs(tmp_path, stem="Uset_000_model4"):
    return {
        "--output": tmp_path / f"models/{stem}.keras",
        "--checkpoint": tmp_path / f"models/{stem}.ckpt.zip",
        "--metrics": tmp_path / f"models/{stem}.metrics.json",
        "--plot": tmp_path / f"models/{stem}.metrics.png",
    }


def argv(data, model="model4", task="regression", extra=(), stem="Uset_000_model4", batches=None, samples=None):
    args = [
        "--model",
        model,
        "--task",
        task,
        "--train",
        *map(str, batches or data["batches"]),
        "--validation",
        *map(str, samples or data["samples"]),
    ]
    for flag, path in outputs(data["dir"], stem).items():
        args += [flag, str(path)]
    return args + list(extra)


def test_tiny_training_run_writes_every_output(data):
    assert train.main(argv(data, extra=["--epochs", "1", "--batch-size", "8", "-q"])) == 0
    paths = outputs(data["dir"])
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    metrics = json.loads(paths["--metrics"].read_text())
    assert metrics["epochs_run"] == 1 and len(metrics["history"]) == 1
    epoch = metrics["history"][0]
    for key in ("loss", "mae", "val_loss", "val_mae", "mae_deg", "val_mae_deg", "val_rms_deg"):
        assert np.isfinite(epoch[key]), key
    assert epoch["val_mae_deg"] == pytest.approx(epoch["val_mae"] * 22.5)
    assert metrics["train_images_per_epoch"] == 40 and metrics["validation_images"] == 12
    assert paths["--plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keras = train.inclinet_models.import_keras()
    model = keras.models.load_model(paths["--output"])
    assert model.input_shape == (None, SIZE, SIZE, 3)
    with zipfile.ZipFile(paths["--checkpoint"]) as archive:
        state = json.loads(archive.read("state.json"))
    assert state["epoch"] == 1 and state["step"] == 0


def test_empty_checkpoint_placeholder_means_start_from_scratch(data, tmp_path):
    # Pegasus with condorio stages an empty checkpoint file before the first attempt.
    run = dict(data, dir=tmp_path)
    checkpoint = outputs(tmp_path)["--checkpoint"]
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(b"")
    assert train.main(argv(run, extra=["--epochs", "1", "--batch-size", "8", "-q"])) == 0
    with zipfile.ZipFile(checkpoint) as archive:
        assert json.loads(archive.read("state.json"))["epoch"] == 1


def test_binary_training_with_early_stopping_keeps_the_best_epoch(tmp_path):
    samples = [
        write_sample(tmp_path / f"{band}_bt.npz", band, 8, k, binary=True) for k, band in enumerate(["gri", "r"])
    ]
    batches = [write_batch(tmp_path / "b01.npz", 24, 2, binary=True)]
    data = {"samples": samples, "batches": batches, "dir": tmp_path}
    extra = ["--epochs", "3", "--batch-size", "8", "--early-stopping", "1", "--learning-rate", "0.01", "-q"]
    assert train.main(argv(data, "model6", "binary", extra, stem="Binary_model6")) == 0
    metrics = json.loads(outputs(tmp_path, "Binary_model6")["--metrics"].read_text())
    assert metrics["task"] == "binary" and metrics["weights"] == "best epoch"
    history = metrics["history"]
    assert all(0.0 <= r["val_accuracy"] <= 1.0 for r in history)
    best = min(range(len(history)), key=lambda i: history[i]["val_loss"])
    assert metrics["best_epoch"] == best + 1
    keras = train.inclinet_models.import_keras()
    model = keras.models.load_model(outputs(tmp_path, "Binary_model6")["--output"])
    assert model.output_shape == (None, 2)


def test_bad_inputs_exit_2_with_a_clear_message(data, capsys):
    extra = ["--epochs", "1", "-q"]
    binary_batch = write_batch(data["dir"] / "bin.npz", 10, 1, binary=True)
    assert train.main(argv(data, extra=extra, batches=[binary_batch])) == 2
    assert "bin.npz: row" in capsys.readouterr().err
    assert train.main(argv(data, extra=extra, batches=[data["dir"] / "missing.npz"])) == 2
    assert "missing.npz" in capsys.readouterr().err
    (data["dir"] / "corrupt.npz").write_bytes(b"PK\x03\x04 not really")
    assert train.main(argv(data, extra=extra, batches=[data["dir"] / "corrupt.npz"])) == 2
    assert "corrupt.npz" in capsys.readouterr().err
    assert train.main(argv(data, model="model5", extra=extra)) == 2
    assert "at least 76 px" in capsys.readouterr().err
    assert train.main(argv(data, extra=["--epochs", "0"])) == 2
    assert not outputs(data["dir"])["--output"].exists()


def test_batch_stream_is_deterministic_and_resumable(data):
    stream = train.BatchStream(data["batches"], "regression", 6, seed=3)
    assert stream.steps_per_epoch == 40 // 6
    first = list(stream.batches(0))
    again = list(train.BatchStream(data["batches"], "regression", 6, seed=3).batches(0))
    assert len(first) == stream.steps_per_epoch
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    other_epoch = list(stream.batches(1))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other_epoch))
    tail = list(stream.batches(0, start_step=4))
    assert len(tail) == stream.steps_per_epoch - 4
    for (x1, y1), (x2, y2) in zip(first[4:], tail):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert first[0][0].dtype == np.float32 and first[0][0].max() <= 1.0


def test_validation_set_pairs_colour_and_gray_without_inverting(data):
    images, labels = train.build_validation_set(data["samples"], "regression", seed=0)
    assert len(images) == 12 and len(labels) == 12
    # These test samples keep their raw look (gray dark-on-white): none is inverted any more,
    # since real samples are normalised (bright on dark) by prep already.
    dark_border = images[:, 0, 0, 0] < 128
    assert dark_border.sum() == 6  # the 6 colour images
    again, _ = train.build_validation_set(data["samples"], "regression", seed=0)
    np.testing.assert_array_equal(images, again)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_a_rerun_resumes(tmp_path):
    samples = [write_sample(tmp_path / f"{band}_test.npz", band, 4, k) for k, band in enumerate(["gri", "g"])]
    batches = [write_batch(tmp_path / f"aug_{k:02d}.npz", 160, k) for k in (1, 2)]
    data = {"samples": samples, "batches": batches, "dir": tmp_path}
    epochs = 12
    args = argv(data, extra=["--epochs", str(epochs), "--batch-size", "8", "--seed", "5"])
    checkpoint = outputs(tmp_path)["--checkpoint"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "inclinet.stages.train", *args]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "training finished before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    log, _ = process.communicate(timeout=120)
    assert process.returncode == train.EXIT_INTERRUPTED, log
    assert "interrupted by SIGTERM" in log
    with zipfile.ZipFile(checkpoint) as archive:
        state = json.loads(archive.read("state.json"))
    done_steps = state["epoch"] * 40 + state["step"]
    assert 1 <= state["epoch"] < epochs and 40 <= done_steps < epochs * 40
    assert not outputs(tmp_path)["--output"].exists()

    result = subprocess.run(command + ["-v"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resuming from {checkpoint} at epoch {state['epoch'] + 1} step {state['step']}" in result.stderr
    assert f"(optimizer step {done_steps})" in result.stderr
    metrics = json.loads(outputs(tmp_path)["--metrics"].read_text())
    assert metrics["resumed"] == 1 and metrics["epochs_run"] == epochs
    assert [r["epoch"] for r in metrics["history"]] == list(range(1, epochs + 1))
    model, final_state, _, _ = train.load_checkpoint(checkpoint)
    assert int(model.optimizer.iterations.numpy()) == epochs * 40
    assert final_state["epoch"] == epochs


def test_cosine_schedule_decays_and_is_kept_in_the_checkpoint(data):
    extra = ["--epochs", "2", "--batch-size", "8", "--lr-schedule", "cosine", "-q"]
    assert train.main(argv(data, extra=extra)) == 0
    metrics = json.loads(outputs(data["dir"])["--metrics"].read_text())
    assert metrics["lr_schedule"] == "cosine"
    model, state, _, _ = train.load_checkpoint(outputs(data["dir"])["--checkpoint"])
    assert state["signature"]["lr_schedule"] == "cosine" and state["signature"]["epochs"] == 2
    rate = float(np.asarray(model.optimizer.learning_rate))
    assert rate == pytest.approx(0.05e-3, rel=1e-3)  # fully decayed after the whole budget
    # Another budget changes the schedule: the checkpoint refuses it instead of resuming silently.
    assert train.main(argv(data, extra=["--epochs", "3", "--batch-size", "8", "--lr-schedule", "cosine", "-q"])) == 2


#: Metrics that measure time, not training: they differ between any two runs.
TIMING_KEYS = ("seconds", "images_per_second", "train_seconds", "resumed")


def comparable(metrics):
    """A metrics dict without its timing fields (and the resume count)."""
    kept = {k: v for k, v in metrics.items() if k not in TIMING_KEYS}
    kept["history"] = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in metrics["history"]]
    return kept


def assert_same_model(path_a, path_b):
    keras = train.inclinet_models.import_keras()
    weights_a = keras.models.load_model(path_a).get_weights()
    weights_b = keras.models.load_model(path_b).get_weights()
    assert len(weights_a) == len(weights_b)
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)


def stop_at_step(monkeypatch, stop_step):
    """Make the next training run behave as if SIGTERM arrived during global step ``stop_step``."""
    original = train._make_callback
    seen = {"steps": 0}

    def make(keras, flag, counter, resume_metrics=None):
        callback = original(keras, flag, counter, resume_metrics)
        inner = callback.on_train_batch_end

        def on_train_batch_end(batch, logs=None):
            seen["steps"] += 1
            if seen["steps"] == stop_step:
                flag.requested = True
            inner(batch, logs)

        callback.on_train_batch_end = on_train_batch_end
        return callback

    monkeypatch.setattr(train, "_make_callback", make)


def test_resume_at_a_random_step_is_bit_identical(data, tmp_path, monkeypatch):
    """Interrupted at a random step (mid-epoch), resumed: the same weights and metrics, bit for bit."""
    extra = ["--epochs", "3", "--batch-size", "8", "--seed", "11", "--lr-schedule", "cosine", "-q"]
    assert train.main(argv(data, extra=extra)) == 0
    reference = outputs(data["dir"])
    stop_step = int(np.random.default_rng().integers(1, 15))  # 5 steps per epoch, 3 epochs
    other = dict(data, dir=tmp_path / "resumed")
    with monkeypatch.context() as patch:
        stop_at_step(patch, stop_step)
        assert train.main(argv(other, extra=extra)) == train.EXIT_INTERRUPTED, stop_step
    assert train.main(argv(other, extra=extra)) == 0
    resumed = outputs(other["dir"])
    assert_same_model(reference["--output"], resumed["--output"])
    metrics_a = json.loads(reference["--metrics"].read_text())
    metrics_b = json.loads(resumed["--metrics"].read_text())
    assert metrics_b["resumed"] == 1
    a, b = comparable(metrics_a), comparable(metrics_b)
    differing = [
        (i, k, r[k], b["history"][i].get(k))
        for i, r in enumerate(a["history"])
        for k in r
        if r[k] != b["history"][i].get(k)
    ]
    assert not differing, f"stopped at step {stop_step}: {differing}"
    assert a == b


def test_bagged_members_start_from_different_weights(data, monkeypatch):
    """The initial weights depend on the member (output name), not only on model and task."""
    extra = ["--epochs", "1", "--batch-size", "8", "-q"]
    initial = {}
    original = train.inclinet_models.build_model

    def build(*args, **kwargs):
        net = original(*args, **kwargs)
        initial[len(initial)] = [w.copy() for w in net.get_weights()]
        return net

    monkeypatch.setattr(train.inclinet_models, "build_model", build)
    assert train.main(argv(data, extra=extra, stem="Uset_000_model4")) == 0
    assert train.main(argv(data, extra=extra, stem="Uset_001_model4")) == 0
    assert train.main(argv(data, extra=extra + ["--epochs", "1"], stem="Uset_000_model4x")) == 0
    assert not np.array_equal(initial[0][0], initial[1][0])


def test_same_seed_same_metrics(data, tmp_path):
    """Two runs from scratch with one seed agree exactly (op determinism, seeded generators)."""
    extra = ["--epochs", "2", "--batch-size", "8", "--seed", "4", "-q"]
    assert train.main(argv(data, extra=extra)) == 0
    other = dict(data, dir=tmp_path / "again")
    assert train.main(argv(other, extra=extra)) == 0
    assert_same_model(outputs(data["dir"])["--output"], outputs(other["dir"])["--output"])
    metrics = [json.loads(outputs(d)["--metrics"].read_text()) for d in (data["dir"], other["dir"])]
    assert comparable(metrics[0]) == comparable(metrics[1])


def test_sigterm_during_start_up_exits_3_without_a_checkpoint(data):
    """A SIGTERM before the first step ends the job with exit 3 (rerun, no retry) and writes nothing."""
    flag_class = train._StopFlag

    class EarlyFlag(flag_class):
        def __init__(self):
            super().__init__()
            self.requested = True

    original, train._StopFlag = train._StopFlag, EarlyFlag
    try:
        assert train.main(argv(data, extra=["--epochs", "1", "--batch-size", "8", "-q"])) == train.EXIT_INTERRUPTED
    finally:
        train._StopFlag = original
    assert not outputs(data["dir"])["--checkpoint"].exists()
    assert not outputs(data["dir"])["--output"].exists()


def test_damaged_checkpoint_is_named(data):
    checkpoint = outputs(data["dir"])["--checkpoint"]
    assert train.main(argv(data, extra=["--epochs", "1", "--batch-size", "8", "-q"])) == 0
    raw = bytearray(checkpoint.read_bytes())
    middle = len(raw) // 3
    raw[middle : middle + 64] = bytes(255 - b for b in raw[middle : middle + 64])
    checkpoint.write_bytes(bytes(raw))
    with pytest.raises(train.InputError, match="ckpt.zip: unreadable training checkpoint"):
        train.load_checkpoint(checkpoint)


def test_dataset_gives_exactly_the_batches_of_the_stream(data):
    """The tf.data pipeline (rows per file, batched and scaled by TensorFlow) yields the bits of ``batches``."""
    for batch_size, start_step in ((6, 0), (6, 3), (7, 2), (40, 0)):  # 7: batches that span both files
        stream = train.BatchStream(data["batches"], "regression", batch_size, seed=3)
        expected = list(stream.batches(0, start_step=start_step))
        got = [(x.numpy(), y.numpy()) for x, y in stream.dataset(0, start_step)]
        assert len(got) == len(expected) == stream.steps_per_epoch - start_step
        for (x1, y1), (x2, y2) in zip(expected, got):
            assert x2.dtype == x1.dtype and y2.dtype == y1.dtype
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)
