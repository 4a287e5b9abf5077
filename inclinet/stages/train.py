"""inclinet-train: train one model x flavour x task on augmented npz batches, resumable from a checkpoint.

One epoch is one pass over every ``--train`` batch file, streamed through ``tf.data``
(file order and rows permuted per epoch from ``--seed``; one file in memory at a time,
prefetched while the model trains). Validation runs after every epoch on a fixed set
built from the ``--validation`` samples: every colour image plus as many gray images
(pooled g, r, i, seeded shuffle), as the original's section 2.6 but without random
augmentation and without inverting half the gray images (the samples are normalised, so
every galaxy is bright on a dark sky).

Checkpointing: after every epoch (and on SIGTERM) the declared ``--checkpoint`` file is
replaced atomically. It is one zip holding ``model.keras`` (weights and optimizer state),
``best.weights.h5`` (best epoch so far), ``random.npz`` (the state of every random-number
generator of the model, i.e. the dropout seed generators, and of the running training
metrics of an interrupted epoch) and ``state.json`` (next epoch and step, history,
early-stopping state). Run again with the same arguments and training resumes from it,
ending bit-identical to a run that was never interrupted (weights and metrics; see
"Reproducibility" in docs/architecture.md).

Reproducibility: TensorFlow op determinism is enabled, the initial weights and dropout
draws come from a seed derived from ``--seed``, the model, the task and the member (the
``--output`` file name, so bagged members of one model start from different weights), and
the batch order from ``--seed`` and the epoch.

Exit codes: 0 done, 1 runtime failure, 2 bad input/flags, **3 interrupted by SIGTERM
(checkpoint saved; rerun the same command to resume)**.
"""

import argparse
import hashlib
import json
import logging
import math
import signal
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from inclinet import config
from inclinet import models as inclinet_models
from inclinet._helpers import derive_seed, require_positive, rng_for, versions
from inclinet.cli import add_common_arguments, run_main
from inclinet.errors import ConfigError, InputError, StageError, invalid
from inclinet.io import atomic_path, atomic_write_json, check_outputs, load_npz
from inclinet.npzstream import array_info, load_arrays

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 3
LR_SCHEDULES = config.setting("lr_schedule").choices
CHECKPOINT_FORMAT = 2
_MODEL_MEMBER = "model.keras"
_BEST_MEMBER = "best.weights.h5"
_STATE_MEMBER = "state.json"
_RANDOM_MEMBER = "random.npz"
#: Training batches read ahead of the model (a fixed tf.data prefetch; see BatchStream.dataset).
PREFETCH_BATCHES = 2


class TrainingInterrupted(StageError):
    """SIGTERM arrived: the checkpoint is saved and a rerun resumes (exit code 3)."""

    exit_code = EXIT_INTERRUPTED


# -- input files --------------------------------------------------------------------------


def inspect_batch_file(path, task):
    """Check a training batch file cheaply (images header + labels) -> (n_rows, image_size)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: training batch not found; run inclinet-augment first")
    shape, dtype = array_info(path, "images")
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or dtype != np.uint8:
        raise InputError(f"{path}: images must be uint8 (N, S, S, 3), found {dtype} {shape}")
    labels = load_arrays(path, ("labels",))["labels"]
    if len(labels) != shape[0]:
        raise InputError(f"{path}: {shape[0]} images but {len(labels)} labels")
    _check_labels(labels, task, path)
    return int(shape[0]), int(shape[1])


def _check_labels(labels, task, path):
    labels = np.asarray(labels)
    if task == "regression":
        bad = (labels < inclinet_models.INCLINATION_MIN) | (labels > inclinet_models.INCLINATION_MAX)
        what = "inclinations 45..90"
    else:
        bad = (labels != 0) & (labels != 1)
        what = "binary labels 0/1"
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{path}: row {row} has label {labels[row]}; a {task} file must hold {what} "
            "(was it made for the other task?)"
        )


def _targets(labels, task):
    if task == "regression":
        return inclinet_models.inclination_to_target(labels)
    return np.asarray(labels, dtype=np.int32)


def build_validation_set(paths, task, seed):
    """The fixed validation set: (images uint8, labels) as described in the module docstring."""
    colour, gray = [], []
    for path in paths:
        arrays = load_npz(path, required=("images", "labels", "pgcIDs", "band"))
        _check_labels(arrays["labels"], task, path)
        band = str(arrays["band"])
        (colour if band == "gri" else gray).append((arrays["images"], arrays["labels"]))
    if not colour and not gray:
        raise InputError("no validation samples given; pass the test_000 (or binary_test) file of every band")

    def stack(parts):
        if not parts:
            return np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0,), np.int32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    colour_images, colour_labels = stack(colour)
    gray_images, gray_labels = stack(gray)
    if len(gray_images):
        order = rng_for(seed, "validation", "gray").permutation(len(gray_images))
        keep = order[: len(colour_images)] if len(colour_images) else order
        gray_images, gray_labels = gray_images[keep], gray_labels[keep]
    if len(colour_images) and len(gray_images) and colour_images.shape[1:] != gray_images.shape[1:]:
        raise InputError("validation samples have different image sizes; pass the files of one size")
    parts = [(i, lab) for i, lab in ((colour_images, colour_labels), (gray_images, gray_labels)) if len(i)]
    images, labels = stack(parts)
    order = rng_for(seed, "validation", "order").permutation(len(images))
    return images[order], labels[order]


class BatchStream:
    """Deterministic per-epoch batches from the training files, one file in memory at a time."""

    def __init__(self, paths, task, batch_size, seed):
        self.paths = [Path(p) for p in paths]
        self.task = task
        self.seed = seed
        self.rows = []
        sizes = set()
        for path in self.paths:
            n_rows, size = inspect_batch_file(path, task)
            self.rows.append(n_rows)
            sizes.add(size)
        if len(sizes) != 1:
            raise InputError(f"training batches have different image sizes {sorted(sizes)}; pass one size")
        self.image_size = sizes.pop()
        self.n_images = sum(self.rows)
        if self.n_images == 0:
            raise InputError("the training batches hold no images")
        self.batch_size = min(int(batch_size), self.n_images)
        self.steps_per_epoch = self.n_images // self.batch_size

    def batches(self, epoch, start_step=0):
        """Yield (scaled images, targets) for the steps ``start_step..steps_per_epoch-1`` of ``epoch``."""
        # file_rows gives exactly the rows of these steps; batches may span two files.
        left_images = np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        left_targets = _targets(np.zeros(0, np.int32), self.task)
        for file_images, file_targets in self.file_rows(epoch, start_step):
            images = np.concatenate([left_images, file_images])
            targets = np.concatenate([left_targets, file_targets])
            n_full = len(targets) // self.batch_size
            for batch in range(n_full):
                rows = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
                yield inclinet_models.scale_pixels(images[rows]), targets[rows]
            left_images, left_targets = images[n_full * self.batch_size :], targets[n_full * self.batch_size :]

    def _file_plan(self, epoch, start_step=0):
        """``[(file index, row order)]`` of :meth:`file_rows`, without reading any file."""
        rng = rng_for(self.seed, "train-order", epoch)
        file_order = rng.permutation(len(self.paths))
        row_orders = [rng.permutation(self.rows[i]) for i in range(len(self.paths))]
        first_row = start_step * self.batch_size
        wanted = max(0, self.steps_per_epoch - start_step) * self.batch_size
        seen, plan = 0, []
        for index in file_order:
            if wanted <= 0:
                break
            if seen + self.rows[index] <= first_row:
                seen += self.rows[index]
                continue
            order = row_orders[index][max(0, first_row - seen) :][:wanted]
            seen += self.rows[index]
            wanted -= len(order)
            plan.append((int(index), order))
        return plan

    def _read_rows(self, index, order):
        arrays = load_npz(self.paths[index], required=("images", "labels"))
        return arrays["images"][order], _targets(arrays["labels"][order], self.task)

    def file_rows(self, epoch, start_step=0):
        """The rows of :meth:`batches` in the same order, one file's share at a time: (uint8 images, targets)."""
        for index, order in self._file_plan(epoch, start_step):
            yield self._read_rows(index, order)

    def dataset(self, epoch, start_step=0, *, prefetch=PREFETCH_BATCHES):
        """A ``tf.data.Dataset`` of the batches of :meth:`batches` (the same values), read ahead while the model
        trains.

        Python reads one file's rows at a time as uint8 and TensorFlow cuts them into
        batches and scales them (``x / 255`` in single precision, as :func:`inclinet.models.scale_pixels`):
        per step no Python runs, which at small batch sizes was most of the step time. The
        read-ahead is fixed (``prefetch`` batches) and tf.data's autotuning is off: with
        autotuning, ``fit`` sometimes waited after an epoch's last batch before returning
        (bench/bench_train_step.py, ``--tail-epochs``).
        """
        import tensorflow as tf

        size = self.image_size
        # One tf.py_function call per file share (tf.data.Dataset.from_generator, the same
        # reads, made every training step 25-35% slower on two free cores: see BENCHMARKS.md).
        plan = self._file_plan(epoch, start_step)
        target_type = tf.float32 if self.task == "regression" else tf.int32  # what _targets returns

        def read(position):
            return self._read_rows(*plan[int(position)])

        def typed(images, targets):
            return tf.ensure_shape(images, (None, size, size, 3)), tf.ensure_shape(targets, (None,))

        dataset = tf.data.Dataset.range(len(plan)).map(
            lambda position: tf.py_function(read, [position], (tf.uint8, target_type))
        )
        dataset = dataset.map(typed)
        scale = tf.constant(inclinet_models.PIXEL_SCALE, tf.float32)
        dataset = dataset.unbatch().batch(self.batch_size, drop_remainder=True)
        dataset = dataset.map(lambda images, targets: (tf.cast(images, tf.float32) / scale, targets))
        options = tf.data.Options()
        options.autotune.enabled = False
        return dataset.prefetch(prefetch).with_options(options)


# -- checkpoint ---------------------------------------------------------------------------


def _seed_variables(model):
    """The state variables of the model's random-number generators (dropout), in layer order."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights and v.path.endswith("seed_generator_state")]


def capture_random_state(model):
    """Everything random or running in ``model`` that ``model.save`` leaves out, as arrays."""
    import numpy as np

    arrays = {f"seed_{i:03d}": np.asarray(v.numpy()) for i, v in enumerate(_seed_variables(model))}
    arrays.update({f"metric_{i:03d}": np.asarray(v.numpy()) for i, v in enumerate(model.metrics_variables)})
    return arrays


def restore_random_state(model, arrays, *, metrics=True):
    """Assign what :func:`capture_random_state` captured; ``metrics=False`` restores the generators only."""
    seeds = _seed_variables(model)
    n_seeds = sum(1 for key in arrays if key.startswith("seed_"))
    if n_seeds != len(seeds):
        raise ValueError(f"{n_seeds} random generators saved, the model has {len(seeds)}")
    for i, variable in enumerate(seeds):
        variable.assign(arrays[f"seed_{i:03d}"])
    if metrics:
        variables = model.metrics_variables
        n_metrics = sum(1 for key in arrays if key.startswith("metric_"))
        if n_metrics != len(variables):
            raise ValueError(f"{n_metrics} metric variables saved, the model has {len(variables)}")
        for i, variable in enumerate(variables):
            variable.assign(arrays[f"metric_{i:03d}"])


def save_checkpoint(path, model, state, best_weights=None, random_state=None):
    """Write the checkpoint zip atomically (see the module docstring).

    ``random_state`` defaults to the model's generators and running metrics now.
    """
    with tempfile.TemporaryDirectory(prefix="inclinet-ckpt-") as work:
        work = Path(work)
        model.save(work / _MODEL_MEMBER)
        members = [(work / _MODEL_MEMBER, _MODEL_MEMBER)]
        if best_weights is not None:
            current = model.get_weights()
            model.set_weights(best_weights)
            model.save_weights(work / _BEST_MEMBER)
            model.set_weights(current)
            members.append((work / _BEST_MEMBER, _BEST_MEMBER))
        np.savez(work / _RANDOM_MEMBER, **(random_state if random_state is not None else capture_random_state(model)))
        members.append((work / _RANDOM_MEMBER, _RANDOM_MEMBER))
        with atomic_path(path) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
                for source, name in members:
                    archive.write(source, name)
                archive.writestr(_STATE_MEMBER, json.dumps(state, indent=1))


class Checkpoint(NamedTuple):
    """A loaded checkpoint: the model (optimizer and random generators restored), ``state.json``,
    the best weights so far (or None) and the saved arrays of :func:`capture_random_state`,
    whose running metrics are restored when the interrupted epoch starts again (``fit``
    resets metrics first)."""

    model: object
    state: dict
    best_weights: list | None
    random_state: dict


def load_checkpoint(path):
    """Read a checkpoint -> :class:`Checkpoint`."""
    keras = inclinet_models.import_keras()
    try:
        with tempfile.TemporaryDirectory(prefix="inclinet-ckpt-") as work:
            work = Path(work)
            with zipfile.ZipFile(path) as archive:
                # testzip reads every member and checks its CRC: a damaged checkpoint is named here.
                damaged = archive.testzip()
                if damaged is not None:
                    raise zipfile.BadZipFile(f"member {damaged} fails its CRC check")
                state = json.loads(archive.read(_STATE_MEMBER))
                if state.get("format") != CHECKPOINT_FORMAT:
                    raise InputError(
                        f"{path}: checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT} "
                        "(written by another version of inclinet); delete it to start training from scratch"
                    )
                archive.extract(_MODEL_MEMBER, work)
                archive.extract(_RANDOM_MEMBER, work)
                has_best = _BEST_MEMBER in archive.namelist()
                if has_best:
                    archive.extract(_BEST_MEMBER, work)
            model = keras.models.load_model(work / _MODEL_MEMBER, compile=True)
            with np.load(work / _RANDOM_MEMBER, allow_pickle=False) as saved:
                random_state = {key: saved[key] for key in saved.files}
            restore_random_state(model, random_state, metrics=False)
            best = None
            if has_best:
                current = model.get_weights()
                model.load_weights(work / _BEST_MEMBER)
                best = model.get_weights()
                model.set_weights(current)
    except InputError:
        raise
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, EOFError) as exc:
        raise InputError(
            f"{path}: unreadable training checkpoint ({exc}); delete it to start training from scratch"
        ) from None
    return Checkpoint(model, state, best, random_state)


# -- training -----------------------------------------------------------------------------


def enable_determinism():
    """Make TensorFlow pick deterministic kernels (same inputs and state -> same bits).

    Called before the model is built; idempotent. What this does and does not cover is in
    docs/architecture.md ("Reproducibility").
    """
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


class _StopFlag:
    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        self.requested = True
        logger.warning("signal %d received: stopping after the current step and saving the checkpoint", signum)


def _make_callback(keras, flag, counter, resume_metrics=None):
    class StepWatch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            # fit() has just reset the metrics: a resumed epoch continues its running means.
            if resume_metrics is not None:
                restore_random_state(self.model, resume_metrics)

        def on_train_batch_end(self, batch, logs=None):
            counter["steps"] += 1
            counter["logs"] = dict(logs or {})
            if flag.requested:
                self.model.stop_training = True

    return StepWatch()


def _compile(keras, model, task, learning_rate, lr_schedule="constant", total_steps=1):
    rate = learning_rate
    if lr_schedule == "cosine":
        # Decays to 5% of the initial rate over the whole budget; saved with the optimizer.
        rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, total_steps), alpha=0.05)
    if task == "regression":
        model.compile(optimizer=keras.optimizers.Adam(rate), loss="mse", metrics=["mae"])
    else:
        model.compile(
            optimizer=keras.optimizers.Adam(rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )


def _float_logs(logs):
    return {key: float(value) for key, value in logs.items()}


def _epoch_record(epoch, train_logs, val_logs, task, seconds, images):
    record = {"epoch": epoch + 1}
    record.update({key: float(value) for key, value in train_logs.items()})
    record.update({f"val_{key}": float(value) for key, value in val_logs.items()})
    if task == "regression":
        half = inclinet_models.INCLINATION_HALF_RANGE
        for prefix in ("", "val_"):
            if f"{prefix}loss" in record:
                record[f"{prefix}rms_deg"] = math.sqrt(max(record[f"{prefix}loss"], 0.0)) * half
            if f"{prefix}mae" in record:
                record[f"{prefix}mae_deg"] = record[f"{prefix}mae"] * half
    record["seconds"] = seconds
    record["images_per_second"] = images / seconds if seconds > 0 else None
    return record


def write_plot(path, history, task, title):
    """Loss and MAE (degrees) or accuracy per epoch, training and validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [r["epoch"] for r in history]
    second = ("mae_deg", "MAE [deg]") if task == "regression" else ("accuracy", "accuracy")
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for axis, (key, label) in zip(axes, (("loss", "loss"), second)):
        for prefix, style in (("", "o-"), ("val_", "s--")):
            values = [r.get(prefix + key, float("nan")) for r in history]
            axis.plot(epochs, values, style, label=("validation " if prefix else "training ") + label)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80)
    plt.close(figure)


def run(
    *,
    model,
    task,
    train,
    validation,
    output,
    checkpoint,
    metrics,
    plot,
    epochs=config.DEFAULTS.epochs,
    batch_size=config.DEFAULTS.batch_size,
    early_stopping=None,
    learning_rate=config.DEFAULTS.learning_rate,
    lr_schedule=config.DEFAULTS.lr_schedule,
    seed=config.DEFAULTS.seed,
    dropout=config.DEFAULTS.dropout,
    hpo_params=None,
    epoch_end=None,
    init_trunk=None,
):
    """Train ``model`` for ``task`` and write ``output`` (.keras), ``metrics`` (JSON) and ``plot`` (PNG).

    ``lr_schedule`` is ``constant`` (Adam at ``learning_rate``, as the original) or
    ``cosine`` (cosine decay from ``learning_rate`` to 5% of it over ``epochs``).
    ``hpo_params``: the best-parameters file of a hyper-parameter search
    (:func:`inclinet.hpo.training_params`); its learning rate, schedule, batch size and
    dropout replace the arguments. ``epoch_end(record, net)`` is called after every epoch
    with the epoch's metrics and the model (the search reports and prunes there; what it
    raises ends training). ``init_trunk`` (binary task only): a trained regression member
    of the same model and input size whose convolutional trunk the new member starts from,
    frozen (:func:`inclinet.models.adopt_trunk`); its dense layers and head learn. Resumes
    from ``checkpoint`` when it exists and was written with the same settings. Raises
    :class:`TrainingInterrupted` (exit code 3) after saving the checkpoint when a SIGTERM
    arrives. Returns the metrics dictionary.
    """
    searched = None
    if hpo_params is not None:
        from inclinet import hpo

        searched = hpo.training_params(hpo_params, model)
        learning_rate = searched["params"]["learning_rate"]
        lr_schedule = searched["params"]["lr_schedule"]
        batch_size = searched["params"]["batch_size"]
        dropout = searched["params"]["dropout"]
    if model not in inclinet_models.MODEL_NAMES:
        raise invalid("--model", model, "one of " + ", ".join(inclinet_models.MODEL_NAMES))
    if task not in inclinet_models.TASKS:
        raise invalid("--task", task, "one of " + ", ".join(inclinet_models.TASKS))
    require_positive("--epochs", epochs)
    require_positive("--batch-size", batch_size)
    require_positive("--learning-rate", learning_rate)
    config.check("dropout", dropout)
    if early_stopping is not None:
        require_positive("--early-stopping", early_stopping)
    if lr_schedule not in LR_SCHEDULES:
        raise invalid("--lr-schedule", lr_schedule, "one of " + ", ".join(LR_SCHEDULES))
    if not train:
        raise ConfigError("invalid --train: nothing given; must be one or more augmented batch files")
    if init_trunk is not None:
        if task != "binary":
            raise ConfigError(
                f"invalid --init-trunk: {str(init_trunk)!r} with --task {task}; must go with --task binary "
                "(a reject member on a regression member's trunk)"
            )
        if not Path(init_trunk).is_file():
            raise InputError(
                f"cannot read --init-trunk {str(init_trunk)!r}: no such file; train the regression member "
                "first (the workflow does) or leave --init-trunk out to train the reject member from scratch"
            )
    start_time = time.perf_counter()
    # The handler goes in before the slow start-up (reading batches, importing TensorFlow),
    # so that a SIGTERM then still ends the job with exit 3 (rerun, no retry used).
    flag = _StopFlag()
    try:
        previous_handler = signal.signal(signal.SIGTERM, flag)
    except ValueError:  # not the main thread: no signal handling, checkpoints still every epoch
        previous_handler = None
    try:
        return _train(
            flag=flag,
            model=model,
            task=task,
            train=train,
            validation=validation,
            output=output,
            checkpoint=checkpoint,
            metrics=metrics,
            plot=plot,
            epochs=epochs,
            batch_size=batch_size,
            early_stopping=early_stopping,
            learning_rate=learning_rate,
            lr_schedule=lr_schedule,
            seed=seed,
            dropout=dropout,
            searched=searched,
            epoch_end=epoch_end,
            start_time=start_time,
            init_trunk=init_trunk,
        )
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _train(
    *,
    flag,
    model,
    task,
    train,
    validation,
    output,
    checkpoint,
    metrics,
    plot,
    epochs,
    batch_size,
    early_stopping,
    learning_rate,
    lr_schedule,
    seed,
    dropout,
    searched,
    epoch_end,
    start_time,
    init_trunk,
):
    stream, val_images, val_labels = _read_inputs(model, task, train, validation, batch_size, seed)
    signature = {
        "model": model,
        "task": task,
        "train": [str(p) for p in train],
        "batch_size": stream.batch_size,
        "image_size": stream.image_size,
        "seed": int(seed),
        "lr_schedule": lr_schedule,
    }
    if lr_schedule != "constant":
        signature["epochs"] = int(epochs)
    if dropout != config.DEFAULTS.dropout:
        signature["dropout"] = float(dropout)
    if init_trunk is not None:
        # The trunk's bytes, not its name: a retrained regression member is another start.
        signature["init_trunk"] = hashlib.sha256(Path(init_trunk).read_bytes()).hexdigest()

    keras = inclinet_models.import_keras()
    enable_determinism()
    checkpoint = Path(checkpoint)
    # Seeds every generator the model draws from (initial weights, dropout): derived from
    # the member too, so that bagged members of one model start from different weights.
    keras.utils.set_random_seed(derive_seed(seed, "train", model, task, Path(output).stem))
    session = _start_or_resume(
        keras,
        checkpoint,
        signature,
        stream,
        val_images[:1],
        val_labels[:1],
        learning_rate=learning_rate,
        epochs=epochs,
        init_trunk=init_trunk,
    )
    validation_set = (inclinet_models.scale_pixels(val_images), _targets(val_labels, task))
    state = session.state
    while state["epoch"] < epochs and not state["stopped_early"]:
        _train_epoch(
            keras,
            session,
            stream,
            validation_set,
            flag=flag,
            checkpoint=checkpoint,
            epochs=epochs,
            early_stopping=early_stopping,
        )
        if epoch_end is not None:
            epoch_end(state["history"][-1], session.net)
    return _finish(
        session,
        stream,
        model=model,
        task=task,
        train=train,
        output=output,
        checkpoint=checkpoint,
        metrics=metrics,
        plot=plot,
        epochs=epochs,
        early_stopping=early_stopping,
        learning_rate=learning_rate,
        lr_schedule=lr_schedule,
        seed=seed,
        dropout=dropout,
        searched=searched,
        n_validation=len(val_images),
        start_time=start_time,
        init_trunk=init_trunk,
    )


def _read_inputs(model, task, train, validation, batch_size, seed):
    """The training stream and the validation set, checked against the model and each other."""
    stream = BatchStream(train, task, batch_size, seed)
    needed = inclinet_models.minimum_input_size(model)
    if stream.image_size < needed:
        raise ConfigError(
            f"invalid input size: {stream.image_size} px for {model}; must be at least {needed} px; "
            "use a larger --size or model4/model6 for small images"
        )
    val_images, val_labels = build_validation_set(validation, task, seed)
    if val_images.shape[1] != stream.image_size:
        raise InputError(f"validation images are {val_images.shape[1]} px but training batches {stream.image_size} px")
    return stream, val_images, val_labels


class _Session:
    """What the epoch loop carries: the model, ``state.json``'s dictionary, the best weights so far and the
    running metrics of an interrupted epoch (restored when it starts again, then dropped)."""

    def __init__(self, net, state, best_weights=None, resume_metrics=None):
        self.net = net
        self.state = state
        self.best_weights = best_weights
        self.resume_metrics = resume_metrics


def _load_trunk(keras, path, model, image_size):
    """The regression member at ``path``, checked to be ``model`` at ``image_size`` px."""
    try:
        source = keras.models.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        raise InputError(
            f"cannot read --init-trunk {str(path)!r} as a Keras model ({type(error).__name__}: {error}); "
            "give the .keras file of a trained regression member"
        ) from None
    expected = f"{model}_regression"
    shape = tuple(source.input_shape[1:]) if hasattr(source, "input_shape") else None
    if source.name != expected or shape != (image_size, image_size, 3):
        raise InputError(
            f"invalid --init-trunk {str(path)!r}: it is {source.name} for {shape} inputs; must be a {model} "
            f"regression member for {image_size} px images (the same --model and --size as this member)"
        )
    return source


def _start_or_resume(
    keras, checkpoint, signature, stream, probe_images, probe_labels, *, learning_rate, epochs, init_trunk=None
):
    """A :class:`_Session` from ``checkpoint`` when it holds one for this ``signature``, else a new model."""
    model, task, lr_schedule = signature["model"], signature["task"], signature["lr_schedule"]
    # An empty file is no checkpoint: Pegasus (condorio) stages an empty placeholder
    # before the first attempt, so that the file exists to be transferred back.
    resuming = checkpoint.exists() and checkpoint.stat().st_size > 0
    if resuming:
        net, state, best_weights, random_state = load_checkpoint(checkpoint)
        if state["signature"] != signature:
            raise ConfigError(
                f"invalid --checkpoint: {str(checkpoint)!r} was written by a run with other settings "
                f"({state['signature']}); must match this run, or delete it to start from scratch"
            )
        session = _Session(net, state, best_weights)
        if state["step"]:
            session.resume_metrics = random_state
            # Compiled metrics are built on first use; build them now (inference only, no
            # random draws) so that the interrupted epoch's running means can be restored.
            net.evaluate(inclinet_models.scale_pixels(probe_images), _targets(probe_labels, task), verbose=0)
        logger.info(
            "resuming from %s at epoch %d step %d (optimizer step %d)",
            checkpoint,
            state["epoch"] + 1,
            state["step"],
            int(keras.ops.convert_to_numpy(net.optimizer.iterations)),
        )
    else:
        net = inclinet_models.build_model(
            model, input_size=stream.image_size, task=task, dropout=signature.get("dropout", config.DEFAULTS.dropout)
        )
        if init_trunk is not None:
            copied = inclinet_models.adopt_trunk(net, _load_trunk(keras, init_trunk, model, stream.image_size))
            logger.info("starting from the trunk of %s (%d layers, frozen)", init_trunk, len(copied))
        _compile(keras, net, task, learning_rate, lr_schedule, epochs * stream.steps_per_epoch)
        session = _Session(
            net,
            {
                "format": CHECKPOINT_FORMAT,
                "signature": signature,
                "epoch": 0,
                "step": 0,
                "history": [],
                "best_epoch": None,
                "best_val_loss": None,
                "wait": 0,
                "stopped_early": False,
                "train_seconds": 0.0,
            },
        )
    session.state["resumed"] = session.state.get("resumed", 0) + (1 if resuming else 0)
    return session


def _train_epoch(keras, session, stream, validation_set, *, flag, checkpoint, epochs, early_stopping):
    """Train the rest of the current epoch, validate, keep the best weights and save the checkpoint.

    Raises :class:`TrainingInterrupted` after saving when a SIGTERM arrived.
    """
    net, state = session.net, session.state
    if flag.requested:
        # Stopped before a step of this attempt ran: the checkpoint on disk (if any)
        # is still the latest state, so nothing is lost and a rerun continues.
        raise TrainingInterrupted(
            f"interrupted by SIGTERM before training step {state['step']} of epoch {state['epoch'] + 1}; "
            f"nothing new to save; run the same command again to "
            f"{'resume' if state['epoch'] or state['step'] else 'start'}"
        )
    epoch, start_step = state["epoch"], state["step"]
    counter = {"steps": 0, "logs": {}}
    epoch_start = time.perf_counter()
    remaining = stream.steps_per_epoch - start_step
    if remaining > 0:
        net.fit(
            stream.dataset(epoch, start_step),
            epochs=1,
            steps_per_epoch=remaining,
            callbacks=[_make_callback(keras, flag, counter, session.resume_metrics)],
            shuffle=False,
            verbose=0,
        )
    session.resume_metrics = None
    seconds = time.perf_counter() - epoch_start
    state["train_seconds"] += seconds
    if flag.requested and start_step + counter["steps"] < stream.steps_per_epoch:
        done = start_step + counter["steps"]
        state.update(step=done)
        save_checkpoint(checkpoint, net, state, session.best_weights)
        raise TrainingInterrupted(
            f"interrupted by SIGTERM at epoch {epoch + 1} step {done}/{stream.steps_per_epoch}; "
            f"checkpoint saved to {checkpoint}; run the same command again to resume"
        )
    train_logs = _float_logs(counter["logs"])
    val_x, val_y = validation_set
    val_logs = net.evaluate(val_x, val_y, batch_size=stream.batch_size, verbose=0, return_dict=True)
    task = state["signature"]["task"]
    record = _epoch_record(epoch, train_logs, val_logs, task, seconds, remaining * stream.batch_size)
    state["history"].append(record)
    val_loss = record["val_loss"]
    if state["best_val_loss"] is None or val_loss < state["best_val_loss"]:
        state.update(best_val_loss=val_loss, best_epoch=epoch + 1, wait=0)
        session.best_weights = net.get_weights()
    else:
        state["wait"] += 1
        if early_stopping is not None and state["wait"] >= early_stopping:
            state["stopped_early"] = True
    state.update(epoch=epoch + 1, step=0)
    save_checkpoint(checkpoint, net, state, session.best_weights)
    _log_epoch(record, task, epochs)
    if flag.requested and state["epoch"] < epochs and not state["stopped_early"]:
        raise TrainingInterrupted(
            f"interrupted by SIGTERM after epoch {epoch + 1}; checkpoint saved to {checkpoint}; "
            "run the same command again to resume"
        )


def _finish(
    session,
    stream,
    *,
    model,
    task,
    train,
    output,
    checkpoint,
    metrics,
    plot,
    epochs,
    early_stopping,
    learning_rate,
    lr_schedule,
    seed,
    dropout,
    searched,
    n_validation,
    start_time,
    init_trunk=None,
):
    """Write the model (best epoch's weights with early stopping), the metrics JSON and the plot; log and
    return the metrics."""
    net, state = session.net, session.state
    if early_stopping is not None and session.best_weights is not None:
        net.set_weights(session.best_weights)
    with atomic_path(output) as tmp:
        net.save(tmp)
    history = state["history"]
    images_trained = sum((r["images_per_second"] or 0) * r["seconds"] for r in history)
    result = {
        "model": model,
        "task": task,
        "image_size": stream.image_size,
        "train_files": [str(p) for p in train],
        "train_images_per_epoch": stream.steps_per_epoch * stream.batch_size,
        "validation_images": int(n_validation),
        "batch_size": stream.batch_size,
        "learning_rate": float(learning_rate),
        "lr_schedule": lr_schedule,
        "dropout": float(dropout),
        "hpo": searched,
        "init_trunk": str(init_trunk) if init_trunk is not None else None,
        "trainable_parameters": int(sum(np.prod(v.shape) for v in net.trainable_weights)),
        "epochs_requested": int(epochs),
        "epochs_run": len(history),
        "early_stopping": early_stopping,
        "stopped_early": state["stopped_early"],
        "best_epoch": state["best_epoch"],
        "weights": "best epoch" if early_stopping is not None else "last epoch",
        "resumed": state["resumed"],
        "parameters": int(net.count_params()),
        "train_seconds": state["train_seconds"],
        "images_per_second": images_trained / state["train_seconds"] if state["train_seconds"] else None,
        "seed": int(seed),
        "versions": versions(),
        "history": history,
    }
    atomic_write_json(metrics, result)
    write_plot(plot, history, task, f"{Path(output).stem}: {model} {task}")
    check_outputs([output, metrics, plot, checkpoint])
    last = history[-1] if history else {}
    quality = (
        f"val MAE {last.get('val_mae_deg', float('nan')):.2f} deg"
        if task == "regression"
        else f"val accuracy {last.get('val_accuracy', float('nan')):.3f}"
    )
    logger.info(
        "train: %s %s, %d epoch(s) of %d images (best epoch %s), %s, %.0f images/s, %.1f s, seed %d",
        model,
        task,
        len(history),
        result["train_images_per_epoch"],
        state["best_epoch"],
        quality,
        result["images_per_second"] or 0.0,
        time.perf_counter() - start_time,
        seed,
    )
    return result


def _log_epoch(record, task, epochs):
    if task == "regression":
        logger.info(
            "epoch %d/%d: loss %.4f, MAE %.2f deg, val loss %.4f, val MAE %.2f deg, %.0f images/s",
            record["epoch"],
            epochs,
            record.get("loss", float("nan")),
            record.get("mae_deg", float("nan")),
            record["val_loss"],
            record.get("val_mae_deg", float("nan")),
            record["images_per_second"] or 0.0,
        )
    else:
        logger.info(
            "epoch %d/%d: loss %.4f, accuracy %.3f, val loss %.4f, val accuracy %.3f, %.0f images/s",
            record["epoch"],
            epochs,
            record.get("loss", float("nan")),
            record.get("accuracy", float("nan")),
            record["val_loss"],
            record.get("val_accuracy", float("nan")),
            record["images_per_second"] or 0.0,
        )


def add_arguments(parser):
    parser.add_argument("--model", required=True, choices=inclinet_models.MODEL_NAMES, help="architecture")
    parser.add_argument("--task", required=True, choices=inclinet_models.TASKS, help="regression or binary")
    parser.add_argument("--train", nargs="+", required=True, metavar="BATCH.npz", help="augmented batch files")
    parser.add_argument(
        "--validation",
        nargs="+",
        required=True,
        metavar="SAMPLE.npz",
        help="held-out samples of every band (test_000 or binary_test)",
    )
    parser.add_argument("--output", required=True, metavar="MODEL.keras", help="trained model")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint file (resumed if present)")
    parser.add_argument("--metrics", required=True, metavar="METRICS.json", help="per-epoch metrics")
    parser.add_argument("--plot", required=True, metavar="METRICS.png", help="plot of the metrics")
    config.add_argument(parser, "epochs", help="epoch budget")
    config.add_argument(parser, "batch_size", help="images per step")
    parser.add_argument(
        "--early-stopping",
        type=int,
        default=None,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs without a better validation loss and keep the best weights",
    )
    config.add_argument(parser, "learning_rate")
    config.add_argument(
        parser,
        "lr_schedule",
        help="constant (as the original) or cosine decay to 5%% of the rate over the epoch budget",
    )
    config.add_argument(parser, "dropout")
    parser.add_argument(
        "--hpo-params",
        metavar="BEST.json",
        help="best parameters of a hyper-parameter search (inclinet-hpo select): its learning rate, "
        "schedule, batch size and dropout for this --model replace the flags",
    )
    parser.add_argument(
        "--init-trunk",
        metavar="MEMBER.keras",
        help="binary task: start from the convolutional trunk of this trained regression member (same --model "
        "and image size), frozen; only the dense layers and the head learn",
    )
    add_common_arguments(parser)
    return parser


def _run_args(args):
    run(
        model=args.model,
        task=args.task,
        train=args.train,
        validation=args.validation,
        output=args.output,
        checkpoint=args.checkpoint,
        metrics=args.metrics,
        plot=args.plot,
        epochs=args.epochs,
        batch_size=args.batch_size,
        early_stopping=args.early_stopping,
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule,
        seed=args.seed,
        dropout=args.dropout,
        hpo_params=args.hpo_params,
        init_trunk=args.init_trunk,
    )


def build_parser():
    return add_arguments(
        argparse.ArgumentParser(
            prog="inclinet-train",
            description=__doc__.splitlines()[0],
            epilog="Exit codes: 0 done, 1 failure, 2 bad input, 3 interrupted (checkpoint saved; rerun to resume).",
        )
    )


def main(argv=None):
    return run_main(build_parser(), _run_args, argv)


if __name__ == "__main__":
    sys.exit(main())
