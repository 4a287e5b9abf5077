"""Training step time of inclinet-train against a plain in-memory fit of the same model, in one run.

Each configuration runs in its own process (thread and oneDNN settings must be set before
TensorFlow starts) on the same synthetic arrays (uniform random pixels, regression
labels 45..90; the step time does not depend on the values):

* ``inclinet``: our path, batch files streamed by ``BatchStream.dataset`` into the model
  and compile of inclinet-train (determinism on, as in a training job);
* ``keras3``: ``model.fit`` of the same model on in-memory arrays (Keras 3, TensorFlow);
* ``tf_keras``: the same model built with tf_keras (Keras 2, as the original pipeline),
  fitted on the same arrays; needs ``pip install --no-deps "tf-keras==<TensorFlow's
  version>"`` (a plain install would pull the full ``tensorflow`` package beside
  ``tensorflow-cpu``); left out with a note when it is missing;
* variants of ours: ``+jit`` (XLA, ``jit_compile=True``; Keras turns XLA off while
  TensorFlow's op determinism is on, so this variant runs without it, which inclinet-train
  cannot do), ``threads=N`` (TensorFlow's intra- and inter-op pools), ``onednn=0`` (oneDNN
  kernels off), ``+nodet`` (TensorFlow's op determinism off); ``keras3+det`` is the in-memory
  fit with op determinism on.

The step time is the median gap between consecutive ends of training batches after
``--warmup`` steps (tracing and first-call costs left out). ``--tail-epochs N`` instead
checks the end of epochs: N short epochs through ``BatchStream.dataset`` with the old
read-ahead (``prefetch(AUTOTUNE)``, autotuning on) and with ours (fixed prefetch,
autotuning off), alternating, and reports how long ``fit`` took to return after each
epoch's last batch.

    nice -n 10 .venv/bin/python bench/bench_train_step.py --sizes 64 128 --batch-sizes 3 32 64
    nice -n 10 .venv/bin/python bench/bench_train_step.py --tail-epochs 60
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = (
    "tf_keras",
    "keras3",
    "inclinet",
    "inclinet+jit",
    "inclinet threads=1",
    "inclinet threads=2",
    "inclinet onednn=0",
)


def synthetic(n_images, size, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8)
    labels = rng.integers(45, 91, size=n_images).astype(np.int32)
    return images, labels


def write_batch_files(folder, images, labels, n_files=2):
    from inclinet.npzstream import NpzWriter

    paths = []
    for index, rows in enumerate(np.array_split(np.arange(len(images)), n_files)):
        path = Path(folder) / f"{images.shape[1]}x{images.shape[1]}_train_aug_{index + 1:02d}.npz"
        with NpzWriter(path, images.shape[1:], n_rows=len(rows)) as writer:
            writer.append(images[rows])
            writer.set(
                labels=labels[rows],
                pgcIDs=np.arange(len(rows), dtype=np.int32),
                filter=np.array(["c"] * len(rows), dtype="S1"),
            )
        paths.append(path)
    return paths


def tf_keras_model(keras, name, size):
    """The architecture of ``inclinet.models.build_model`` (regression) built with another Keras."""
    from inclinet import models

    inputs = keras.Input(shape=(size, size, 3))
    x = inputs
    for kind, arg in models._BODIES[name]:
        if kind == "conv":
            x = keras.layers.Conv2D(arg, 3, padding="valid", activation="relu")(x)
        elif kind == "pool":
            x = keras.layers.MaxPooling2D(pool_size=arg, strides=arg)(x)
        elif kind == "dropout":
            x = keras.layers.Dropout(models.DROPOUT)(x)
        else:
            x = keras.layers.BatchNormalization(axis=-1)(x)
    x = keras.layers.Flatten()(x)
    for _, units in models._DENSE[name]:
        x = keras.layers.Dense(units, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="tanh")(x))


def step_timer(keras, stamps):
    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            stamps.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            stamps.append(("end", time.perf_counter()))

    return Timer()


def worker_steps(config, model_name, size, batch_size, steps, warmup):
    """Median step time (ms) of one configuration, in this process."""
    from inclinet import models
    from inclinet.stages import train

    n_images = batch_size * (steps + warmup)
    images, labels = synthetic(n_images, size)
    stamps = []
    if config == "tf_keras":
        import tf_keras as keras

        keras.utils.set_random_seed(0)
        net = tf_keras_model(keras, model_name, size)
        net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", metrics=["mae"])
        net.fit(
            models.scale_pixels(images),
            models.inclination_to_target(labels),
            batch_size=batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[step_timer(keras, stamps)],
        )
    else:
        keras = models.import_keras()
        keras.utils.set_random_seed(0)
        if (config.startswith("inclinet") and "+jit" not in config and "+nodet" not in config) or "+det" in config:
            train.enable_determinism()
        net = models.build_model(model_name, input_size=size, task="regression")
        train._compile(keras, net, "regression", 1e-3)
        if "+jit" in config:
            net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", metrics=["mae"], jit_compile=True)
            if not net.jit_compile:
                raise RuntimeError("Keras refused XLA for this model")
        if config.startswith("keras3"):
            net.fit(
                models.scale_pixels(images),
                models.inclination_to_target(labels),
                batch_size=batch_size,
                epochs=1,
                shuffle=False,
                verbose=0,
                callbacks=[step_timer(keras, stamps)],
            )
        else:
            with tempfile.TemporaryDirectory() as folder:
                stream = train.BatchStream(write_batch_files(folder, images, labels), "regression", batch_size, 0)
                net.fit(
                    stream.dataset(0),
                    epochs=1,
                    steps_per_epoch=stream.steps_per_epoch,
                    shuffle=False,
                    verbose=0,
                    callbacks=[step_timer(keras, stamps)],
                )
    ends = [s for s in stamps if not isinstance(s, tuple)]
    gaps = np.diff(ends[warmup - 1 :]) if warmup >= 1 else np.diff(ends)
    return {"ms": 1e3 * float(np.median(gaps)), "steps": len(gaps)}


def worker_tail(epochs, size, batch_size, steps_per_epoch):
    """Seconds from each epoch's last batch to fit's return, old read-ahead against ours, alternating."""
    import tensorflow as tf

    from inclinet import models
    from inclinet.stages import train

    keras = models.import_keras()
    keras.utils.set_random_seed(0)
    train.enable_determinism()
    images, labels = synthetic(batch_size * steps_per_epoch, size)
    tails = {"autotune": [], "fixed": []}
    with tempfile.TemporaryDirectory() as folder:
        stream = train.BatchStream(write_batch_files(folder, images, labels), "regression", batch_size, 0)
        net = models.build_model("model4", input_size=size, task="regression")
        train._compile(keras, net, "regression", 1e-3)

        def old_dataset(epoch):
            label_spec = tf.TensorSpec((None,), tf.float32)
            dataset = tf.data.Dataset.from_generator(
                lambda: stream.batches(epoch),
                output_signature=(tf.TensorSpec((None, size, size, 3), tf.float32), label_spec),
            )
            return dataset.prefetch(tf.data.AUTOTUNE)

        for epoch in range(2 * epochs):
            mode = ("autotune", "fixed")[epoch % 2]
            dataset = old_dataset(epoch) if mode == "autotune" else stream.dataset(epoch)
            stamps = []
            net.fit(
                dataset,
                epochs=1,
                steps_per_epoch=stream.steps_per_epoch,
                shuffle=False,
                verbose=0,
                callbacks=[step_timer(keras, stamps)],
            )
            returned = time.perf_counter()
            tails[mode].append(returned - [s for s in stamps if not isinstance(s, tuple)][-1])
    return tails


def run_worker(config, args, extra):
    env = dict(os.environ)
    for setting in config.split()[1:]:
        key, value = setting.split("=")
        if key == "threads":
            env["INCLINET_BENCH_THREADS"] = value
        elif key == "onednn":
            env["TF_ENABLE_ONEDNN_OPTS"] = value
    command = [sys.executable, __file__, "--worker", config, *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="model4")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[3, 32, 64])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=15, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--tail-epochs",
        type=int,
        default=0,
        help="instead of step times: this many short epochs per read-ahead (see above)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        threads = os.environ.get("INCLINET_BENCH_THREADS")
        if threads:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(int(threads))
        if args.worker == "tail":
            print(json.dumps(worker_tail(args.tail_epochs, args.size, args.batch_size, args.steps)))
        else:
            print(
                json.dumps(worker_steps(args.worker, args.model, args.size, args.batch_size, args.steps, args.warmup))
            )
        return

    if args.tail_epochs:
        size, batch_size, steps = args.sizes[0], args.batch_sizes[0], args.steps
        tails = run_worker(
            "tail",
            args,
            [
                "--tail-epochs",
                str(args.tail_epochs),
                "--size",
                str(size),
                "--batch-size",
                str(batch_size),
                "--steps",
                str(steps),
            ],
        )
        if "error" in tails:
            sys.exit(f"tail check failed: {tails['error']}")
        print(
            f"{args.tail_epochs} epochs per read-ahead ({steps} steps of {batch_size} images, {size} px, "
            "model4), alternating\n"
        )
        print("| read-ahead | epochs | median s | max s | epochs with > 1 s |")
        print("|---|---|---|---|---|")
        for mode, values in tails.items():
            print(
                f"| {mode} | {len(values)} | {statistics.median(values):.3f} | {max(values):.3f} | "
                f"{sum(v > 1.0 for v in values)} |"
            )
        return

    print(
        f"{args.model}, median ms per step after {args.warmup} warm-up steps ({args.steps} timed), "
        "one process per cell; configurations alternate within each cell\n"
    )
    header = [f"{size} px, batch {batch}" for size in args.sizes for batch in args.batch_sizes]
    table = {}
    for size in args.sizes:
        for batch in args.batch_sizes:
            for config in args.configs:
                started = time.perf_counter()
                result = run_worker(
                    config,
                    args,
                    [
                        "--model",
                        args.model,
                        "--size",
                        str(size),
                        "--batch-size",
                        str(batch),
                        "--steps",
                        str(args.steps),
                        "--warmup",
                        str(args.warmup),
                    ],
                )
                table[config, size, batch] = result.get("ms")
                if "error" in result:
                    table[config, size, batch, "error"] = result["error"]
                print(
                    f"  [{config} {size} px batch {batch}: {result.get('ms') or result.get('error')} "
                    f"({time.perf_counter() - started:.0f} s)]",
                    file=sys.stderr,
                    flush=True,
                )

    def step_cell(config, size, batch):
        ms = table[config, size, batch]
        return f"{ms:.1f}" if ms else f"n/a ({table[config, size, batch, 'error'][:60]})"

    _print_grid(args, header, step_cell)
    base = "tf_keras" if any(table.get(("tf_keras", s, b)) for s in args.sizes for b in args.batch_sizes) else None
    if base:
        print(f"\nThroughput relative to {base} (its step time / this one's; > 1 is faster):\n")

        def ratio_cell(config, size, batch):
            ours, theirs = table.get((config, size, batch)), table.get((base, size, batch))
            return f"{theirs / ours:.2f}" if ours and theirs else "n/a"

        _print_grid(args, header, ratio_cell)


def _print_grid(args, header, cell):
    """A Markdown table: one row per configuration, one column per (size, batch size)."""
    print("| configuration | " + " | ".join(header) + " |")
    print("|---|" + "---|" * len(header))
    for config in args.configs:
        cells = [cell(config, size, batch) for size in args.sizes for batch in args.batch_sizes]
        print(f"| {config} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
