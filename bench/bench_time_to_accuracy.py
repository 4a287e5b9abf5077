"""Time to accuracy: how long training takes to reach an ensemble RMS, by batch size and schedule.

Prepares one data set with the stages of ``bench/bench_accuracy.py`` (synth -> prep ->
compress -> split -> augment, kept under ``--work`` and reused), then trains the same
regression members (``--members``, e.g. two bagged model4) once per setting of the grid
``--batch-sizes`` x ``--schedules``, each for ``--epochs`` epochs, through the workflow's own
training stage (:func:`inclinet.stages.train.run`). After every epoch each member predicts
the held-out test galaxies (one view, every band), so the ensemble (mean of the members)
is scored after every epoch without retraining:

* per image: RMS of the ensemble's inclination against the truth;
* per galaxy: RMS of the median of a galaxy's four images (the accuracy preset's measure).

Time is the members' summed training seconds (what the stage reports per epoch: the
machine time a serial run spends, without this benchmark's own scoring). For every
setting and every target in ``--targets`` the report gives the first epoch and the time at
which the per-galaxy ensemble RMS reaches the target, and which setting gets there first.
A cosine schedule decays over the whole ``--epochs``, so its curve depends on that number:
compare settings at one ``--epochs``.

Usage::

    nice python bench/bench_time_to_accuracy.py --work /tmp/bench_tta \\
        [--n-train 1200 --n-test 300 --per-bin 100 --n-batches 4] \\
        [--batch-sizes 16 32 64] [--schedules constant cosine] [--epochs 8] \\
        [--targets 6 5 4] [--out bench/results/time_to_accuracy.json]

Prints a Markdown table; ``--out`` writes every curve as JSON. The prepared data under
``--work`` are reused; the trained members of a setting are not (each run trains anew).
"""

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

from inclinet import config, naming  # noqa: E402

logger = logging.getLogger("bench_time_to_accuracy")


def load_test(paths):
    """Test images, true inclinations and pgc ids of every band (regression test split)."""
    from inclinet.io import load_npz

    images, labels, pgcs = [], [], []
    for path in paths:
        arrays = load_npz(path, required=("images", "labels", "pgcIDs"))
        images.append(arrays["images"])
        labels.append(np.asarray(arrays["labels"], dtype=np.float64))
        pgcs.append(np.asarray(arrays["pgcIDs"]))
    return np.concatenate(images), np.concatenate(labels), np.concatenate(pgcs)


def ensemble_scores(predictions, truth, pgcs):
    """RMS per image and per galaxy (median of its images) of the members' mean prediction."""
    mean = np.mean(predictions, axis=0)
    per_image = float(np.sqrt(np.mean((mean - truth) ** 2)))
    order = np.argsort(pgcs, kind="stable")
    unique, first = np.unique(pgcs[order], return_index=True)
    groups = np.split(order, first[1:])
    galaxy_pred = np.array([np.median(mean[g]) for g in groups])
    galaxy_true = np.array([truth[g[0]] for g in groups])
    per_galaxy = float(np.sqrt(np.mean((galaxy_pred - galaxy_true) ** 2)))
    return per_image, per_galaxy, len(unique)


def train_setting(args, work, data, test, batch_size, schedule):
    """Train every member at one setting; returns per-member per-epoch seconds and predictions."""
    from bench_accuracy import train_member

    from inclinet import models

    images, _, _ = test
    folder = work / "settings" / f"b{batch_size}-{schedule}"
    # Every epoch must be trained (and scored) again: a checkpoint left by an earlier run
    # would resume past the epochs whose predictions the curve needs.
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    curves = []
    for model, subset in args.members:
        seconds, predictions = [], []

        def epoch_end(record, net, seconds=seconds, predictions=predictions):
            seconds.append(float(record["seconds"]))
            mean, _ = models.predict_views(net, images, 1)
            predictions.append(models.target_to_inclination(mean[:, 0]))

        train_member(
            args, folder, data, model, subset, batch_size=batch_size, lr_schedule=schedule, epoch_end=epoch_end
        )
        curves.append({"member": naming.member_name(model, subset), "seconds": seconds, "predictions": predictions})
    return curves


def summarise(curves, test, targets):
    """Per epoch: summed training seconds and ensemble RMS; per target: first epoch and time reaching it."""
    _, truth, pgcs = test
    epochs = min(len(c["seconds"]) for c in curves)
    rows = []
    for epoch in range(epochs):
        seconds = sum(sum(c["seconds"][: epoch + 1]) for c in curves)
        per_image, per_galaxy, n_galaxies = ensemble_scores([c["predictions"][epoch] for c in curves], truth, pgcs)
        rows.append(
            {
                "epoch": epoch + 1,
                "train_seconds": round(seconds, 1),
                "rms_image": round(per_image, 3),
                "rms_galaxy": round(per_galaxy, 3),
                "n_galaxies": n_galaxies,
            }
        )
    reached = {}
    for target in targets:
        hit = next((r for r in rows if r["rms_galaxy"] <= target), None)
        reached[f"{target:g}"] = None if hit is None else {"epoch": hit["epoch"], "train_seconds": hit["train_seconds"]}
    return {"curve": rows, "reached": reached, "best_rms_galaxy": min(r["rms_galaxy"] for r in rows)}


def markdown(results, targets):
    lines = [
        "| setting | "
        + " | ".join(f"to {t:g} deg: s (epoch)" for t in targets)
        + " | best RMS (epoch) | s per epoch |",
        "|---|" + "---:|" * (len(targets) + 2),
    ]
    for name, result in results.items():
        cells = []
        for target in targets:
            hit = result["reached"][f"{target:g}"]
            cells.append("not reached" if hit is None else f"{hit['train_seconds']:.0f} ({hit['epoch']})")
        curve = result["curve"]
        best = min(curve, key=lambda r: r["rms_galaxy"])
        per_epoch = curve[-1]["train_seconds"] / len(curve)
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {best['rms_galaxy']:.2f} ({best['epoch']}) | {per_epoch:.0f} |"
        )
    lines.append("")
    for target in targets:
        hits = [
            (r["reached"][f"{target:g}"]["train_seconds"], n) for n, r in results.items() if r["reached"][f"{target:g}"]
        ]
        lines.append(
            f"- to {target:g} deg: " + (f"fastest {min(hits)[1]} ({min(hits)[0]:.0f} s)" if hits else "no setting")
        )
    return "\n".join(lines)


def parse_args(argv=None):
    from bench_accuracy import parse_member

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_tta"))
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--raw-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes for synth/prep/augment")
    parser.add_argument(
        "--members", nargs="+", type=parse_member, default=[("model4", 0), ("model4", 1)], metavar="MODEL:SUBSET"
    )
    parser.add_argument("--n-subsamples", type=int, default=2)
    parser.add_argument("--n-batches", type=int, default=4)
    parser.add_argument("--per-bin", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--schedules", nargs="+", choices=["constant", "cosine"], default=["constant", "cosine"])
    parser.add_argument("--targets", type=float, nargs="+", default=[6.0, 5.0, 4.0], help="per-galaxy RMS, deg")
    parser.add_argument(
        "--regression-views",
        choices=config.setting("regression_views").choices,
        default=config.DEFAULTS.regression_views,
        help="how the members' training images are varied (inclinet-augment --regression-views)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    # What bench_accuracy.prepare_data reads besides the above: no reject member here.
    args.binary_model = ""
    return args


def main(argv=None):
    from bench_accuracy import prepare_data

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args, args.work)
    test = load_test(data["tests"])
    results = {}
    for schedule in args.schedules:
        for batch_size in args.batch_sizes:
            name = f"batch {batch_size}, {schedule}"
            start = time.perf_counter()
            curves = train_setting(args, args.work, data, test, batch_size, schedule)
            results[name] = summarise(curves, test, args.targets)
            results[name].update(
                batch_size=batch_size, schedule=schedule, wall_seconds=round(time.perf_counter() - start, 1)
            )
            logger.info("%s: %s", name, json.dumps(results[name]["reached"]))
    table = markdown(results, args.targets)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "n_test_images": int(len(test[0])),
            "results": results,
        }
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
