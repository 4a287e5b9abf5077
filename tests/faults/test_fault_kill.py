"""Training killed at a random moment (SIGKILL or SIGTERM), then resumed: the result is bit-identical."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import ellipse_images  # noqa: E402

from inclinet.io import atomic_savez  # noqa: E402
from inclinet.stages import train  # noqa: E402

SIZE = 32
EPOCHS = 6
TIMING_KEYS = ("seconds", "images_per_second", "train_seconds", "resumed")


def _data(folder):
    folder.mkdir()
    samples = []
    for k, band in enumerate(["gri", "g"]):
        images, inclinations = ellipse_images(6, SIZE, 10 + k, colour=band == "gri")
        path = folder / f"{band}_test.npz"
        atomic_savez(path, images=images, labels=inclinations, pgcIDs=np.arange(6, dtype=np.int32), band=np.array(band))
        samples.append(path)
    batches = []
    for k in (1, 2):
        images, inclinations = ellipse_images(40, SIZE, k, colour=k == 2)
        path = folder / f"aug_{k:02d}.npz"
        atomic_savez(
            path,
            images=images,
            labels=inclinations,
            pgcIDs=np.arange(40, dtype=np.int32),
            filter=np.array([b"c"] * 40, dtype="S1"),
            inverted=np.zeros(40, bool),
        )
        batches.append(path)
    return samples, batches


def _command(folder, samples, batches, out):
    return [
        sys.executable,
        "-m",
        "inclinet.stages.train",
        "--model",
        "model4",
        "--task",
        "regression",
        "--train",
        *map(str, batches),
        "--validation",
        *map(str, samples),
        "--output",
        str(out / "m.keras"),
        "--checkpoint",
        str(out / "m.ckpt.zip"),
        "--metrics",
        str(out / "m.metrics.json"),
        "--plot",
        str(out / "m.metrics.png"),
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "8",
        "--seed",
        "3",
        "-q",
    ]


def _comparable(path):
    metrics = json.loads(Path(path).read_text())
    kept = {k: v for k, v in metrics.items() if k not in TIMING_KEYS}
    kept["history"] = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in metrics["history"]]
    return kept


def test_random_kill_then_resume_ends_bit_identical(tmp_path):
    env = dict(
        os.environ,
        CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="3",
        TF_NUM_INTRAOP_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
        OMP_NUM_THREADS="1",
    )
    samples, batches = _data(tmp_path / "data")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert subprocess.run(_command(tmp_path, samples, batches, reference), env=env, timeout=300).returncode == 0

    rng = np.random.default_rng()
    how = signal.SIGKILL if rng.random() < 0.5 else signal.SIGTERM
    delay = float(rng.uniform(0.0, 1.0))
    process = subprocess.Popen(
        _command(tmp_path, samples, batches, killed),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    checkpoint = killed / "m.ckpt.zip"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    assert process.poll() is None, "training ended before it could be killed; lengthen EPOCHS"
    process.send_signal(how)
    log, _ = process.communicate(timeout=120)
    assert process.returncode == (-signal.SIGKILL if how == signal.SIGKILL else train.EXIT_INTERRUPTED), log
    assert not (killed / "m.keras").exists()

    resumed = subprocess.run(
        _command(tmp_path, samples, batches, killed), env=env, timeout=300, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    keras = train.inclinet_models.import_keras()
    for a, b in zip(
        keras.models.load_model(reference / "m.keras").get_weights(),
        keras.models.load_model(killed / "m.keras").get_weights(),
    ):
        np.testing.assert_array_equal(a, b, err_msg=f"{how.name} after {delay:.2f} s")
    assert _comparable(reference / "m.metrics.json") == _comparable(killed / "m.metrics.json"), (
        f"{how.name} after {delay:.2f} s"
    )
    assert json.loads((killed / "m.metrics.json").read_text())["resumed"] == 1
