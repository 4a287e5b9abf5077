"""Accuracy benchmark: the CNN ensemble against the axial-ratio peer on a fixed synthetic universe.

Drives the real stages through their ``run`` functions: synth -> prep -> compress ->
split -> augment -> train -> evaluate. One universe of ``--n-train + --n-test`` galaxies
(seeded) is split by galaxy so that ``--n-test`` galaxies (all bands) are held out; the
regression test set is their accepted (45-90 deg) part, the training set the other
galaxies. Members train for a fixed number of epochs (no early stopping: the validation
set is the test split, as in the original, so it is only monitored). Also measures the
training throughput of the tf.data pipeline against the same model fed from in-memory
tensors.

Every stage's outputs are kept under ``--work`` and reused when present, so a rerun with
other training settings only retrains (delete the folder for a clean run).

Usage::

    nice python bench/bench_accuracy.py --work /tmp/bench_accuracy \
        [--members model4:0 model4:1 model4:2] [--epochs 8] [--size 64]

Prints a Markdown summary and writes ``results.json`` in the work folder.
"""

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inclinet import naming  # noqa: E402

logger = logging.getLogger("bench_accuracy")


def _synth(kwargs):
    from inclinet.stages import synth

    return synth.run(**kwargs)


def _prep(kwargs):
    from inclinet.stages import prep

    return prep.run(**kwargs)


def _augment(kwargs):
    from inclinet.stages import augment

    return augment.run(**kwargs)


def _done(*paths):
    return all(Path(p).exists() for p in paths)


def prepare_data(args, work):
    """synth -> prep -> compress -> split -> augment; returns the paths training needs."""
    from inclinet.stages import compress, split

    timings = {}
    raw = work / "raw"
    n_galaxies = args.n_train + args.n_test
    jobs = max(1, args.jobs)
    start = time.perf_counter()
    if not _done(raw / "catalog.csv", raw / ".rendered"):
        calls = [dict(n_galaxies=n_galaxies, output=raw, size=args.raw_size, seed=args.seed, catalog_only=True)]
        calls += [dict(n_galaxies=n_galaxies, output=raw, size=args.raw_size, seed=args.seed, shard=(k, jobs))
                  for k in range(1, jobs + 1)]
        with ProcessPoolExecutor(jobs) as pool:
            list(pool.map(_synth, calls))
        (raw / ".rendered").write_text("ok\n")
    timings["synth"] = time.perf_counter() - start

    start = time.perf_counter()
    parts = {band: work / naming.prep_part(args.size, band, 1, 1) for band in naming.BANDS}
    calls = [dict(data_dir=raw / "galaxies", catalog=raw / "catalog.csv", band=band, size=args.size, output=path)
             for band, path in parts.items() if not path.exists()]
    if calls:
        with ProcessPoolExecutor(jobs) as pool:
            list(pool.map(_prep, calls))
    timings["prep"] = time.perf_counter() - start

    start = time.perf_counter()
    compressed = {band: work / naming.compressed(args.size, band) for band in naming.BANDS}
    for band, path in compressed.items():
        if not path.exists():
            compress.run(inputs=[parts[band]], output=path)
    timings["compress"] = time.perf_counter() - start

    start = time.perf_counter()
    samples_dir = work / "samples"
    summary = work / naming.split_summary(args.size)
    if not summary.exists():
        split.run(inputs=list(compressed.values()), output_dir=samples_dir, size=args.size,
                  n_subsamples=args.n_subsamples, test_fraction=args.n_test / n_galaxies, seed=args.seed)
    timings["split"] = time.perf_counter() - start

    start = time.perf_counter()
    subsets = sorted({subset for _, subset in args.members})
    batches, calls = {}, []
    for subset in subsets:
        inputs = [work / naming.sample(args.size, band, "train", subset) for band in naming.BANDS]
        out_dir = work / naming.augmented_dir(subset)
        batches[subset] = [work / naming.augmented_batch(args.size, subset, b) for b in range(1, args.n_batches + 1)]
        if not _done(*batches[subset]):
            calls.append(dict(inputs=inputs, output_dir=out_dir, size=args.size, task="regression",
                              n_batches=args.n_batches, per_bin=args.per_bin, seed=args.seed))
    if calls:
        with ProcessPoolExecutor(jobs) as pool:
            list(pool.map(_augment, calls))
    timings["augment"] = time.perf_counter() - start
    tests = [work / naming.sample(args.size, band, "test", 0) for band in naming.BANDS]
    return {"batches": batches, "tests": tests, "timings": timings}


def train_members(args, work, data):
    from inclinet.stages import train

    results, timings = {}, {}
    for model, subset in args.members:
        stem = f"{work}/{naming.model_stem(model, subset)}"
        output = Path(naming.trained_model(model, subset))
        start = time.perf_counter()
        metrics = train.run(
            model=model, task="regression", train=data["batches"][subset], validation=data["tests"],
            output=work / output, checkpoint=work / naming.training_checkpoint(model, subset),
            metrics=f"{stem}.metrics.json",
            plot=f"{stem}.metrics.png", epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.learning_rate, lr_schedule=args.lr_schedule, seed=args.seed,
        )
        name = naming.member_name(model, subset)
        timings[name] = time.perf_counter() - start
        results[name] = {
            "epochs": metrics["epochs_run"],
            "images_per_epoch": metrics["train_images_per_epoch"],
            "images_per_second": metrics["images_per_second"],
            "final_val_mae_deg": metrics["history"][-1].get("val_mae_deg"),
            "path": str(work / output),
        }
    return results, timings


def throughput(args, data, n_steps=120):
    """Images/s of one training pass fed by the tf.data stream vs in-memory tensors (same steps)."""
    import numpy as np

    from inclinet import models
    from inclinet.stages.train import BatchStream

    keras = models.import_keras()
    model_name = args.members[0][0]
    stream = BatchStream(data["batches"][args.members[0][1]], "regression", args.batch_size, args.seed)
    steps = min(n_steps, stream.steps_per_epoch)
    memory_x, memory_y = [], []
    for index, (x, y) in enumerate(stream.batches(0)):
        if index >= steps:
            break
        memory_x.append(x)
        memory_y.append(y)
    memory_x, memory_y = np.concatenate(memory_x), np.concatenate(memory_y)
    net = models.build_model(model_name, input_size=stream.image_size)
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", metrics=["mae"])
    net.fit(memory_x[: 4 * args.batch_size], memory_y[: 4 * args.batch_size], batch_size=args.batch_size, verbose=0)
    rates = {"tf.data": [], "in-memory": []}
    for _ in range(2):  # interleaved, to share the machine's noise fairly
        start = time.perf_counter()
        net.fit(stream.dataset(1), steps_per_epoch=steps, epochs=1, verbose=0)
        rates["tf.data"].append(steps * stream.batch_size / (time.perf_counter() - start))
        start = time.perf_counter()
        net.fit(memory_x, memory_y, batch_size=stream.batch_size, epochs=1, shuffle=False, verbose=0)
        rates["in-memory"].append(steps * stream.batch_size / (time.perf_counter() - start))
    best = {key: max(values) for key, values in rates.items()}
    return {
        "model": model_name, "image_size": stream.image_size, "batch_size": stream.batch_size, "steps": steps,
        "images_per_second": best, "runs": rates,
        "pipeline_cost": 1.0 - best["tf.data"] / best["in-memory"],
    }


def evaluate_members(args, work, data, trained):
    from inclinet.stages import evaluate

    return evaluate.run(models=[t["path"] for t in trained.values()], test=data["tests"],
                        output_dir=work / "evaluation", bundle_dir=work / "bundle", views=args.views, seed=args.seed)


def markdown(results):
    metrics = results["metrics"]
    regression = metrics["regression"]
    lines = [
        f"Test set: {metrics['n_test']} images (accepted galaxies of the {results['args']['n_test']} held out), "
        f"{results['args']['size']} px, views {metrics['views']}.",
        "",
        "| predictor | RMS all | MAE all | bias | RMS colour | RMS g | RMS r | RMS i |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = [m["name"] for m in metrics["members"] if m["task"] == "regression"]
    for column in names + ["ensemble_mean", "ensemble_median", "peer"]:
        entry = regression[column]
        bands = [entry.get(b, {}).get("rms") for b in ("colour", "g", "r", "i")]
        lines.append(
            f"| {column} | {entry['all']['rms']:.2f} | {entry['all']['mae']:.2f} | {entry['all']['bias']:+.2f} | "
            + " | ".join("" if v is None else f"{v:.2f}" for v in bands) + " |"
        )
    lines += ["", "| views | ensemble RMS | ensemble MAE |", "|---|---|---|"]
    for views, entry in metrics["tta"].items():
        lines.append(f"| {views} | {entry['ensemble_mean']['all']['rms']:.2f} | "
                     f"{entry['ensemble_mean']['all']['mae']:.2f} |")
    ratio = regression["ensemble_mean"]["all"]["rms"] / regression["peer"]["all"]["rms"]
    lines += ["", f"Ensemble RMS / peer RMS = {ratio:.2f}.", ""]
    if results.get("throughput"):
        tp = results["throughput"]
        lines.append(
            f"Training throughput ({tp['model']}, {tp['image_size']} px, batch {tp['batch_size']}, {tp['steps']} "
            f"steps): tf.data {tp['images_per_second']['tf.data']:.0f} images/s, in-memory "
            f"{tp['images_per_second']['in-memory']:.0f} images/s; pipeline cost {100 * tp['pipeline_cost']:.1f}%."
        )
    lines.append("Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["timings"].items()))
    return "\n".join(lines)


def parse_member(text):
    model, _, subset = text.partition(":")
    return model, int(subset or 0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_accuracy"))
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--size", type=int, default=64, help="training image size (px)")
    parser.add_argument("--raw-size", type=int, default=128, help="size synth renders at before prep resizes")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes for synth/prep/augment")
    parser.add_argument("--members", nargs="+", type=parse_member, default=[("model4", 0), ("model4", 1),
                                                                              ("model4", 2)],
                        metavar="MODEL:SUBSET")
    parser.add_argument("--n-subsamples", type=int, default=2)
    parser.add_argument("--n-batches", type=int, default=8)
    parser.add_argument("--per-bin", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--lr-schedule", choices=["constant", "cosine"], default="cosine")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--stop-after", choices=["data", "train"], default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()
    data = prepare_data(args, work)
    timings = dict(data["timings"])
    if args.stop_after == "data":
        print(json.dumps(timings))
        return 0
    trained, train_times = train_members(args, work, data)
    timings.update({f"train {k}": v for k, v in train_times.items()})
    if args.stop_after == "train":
        print(json.dumps({"timings": timings, "trained": trained}, indent=1))
        return 0
    start = time.perf_counter()
    metrics = evaluate_members(args, work, data, trained)
    timings["evaluate"] = time.perf_counter() - start
    results = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "trained": trained, "metrics": {k: v for k, v in metrics.items() if k != "bundle"}}
    if not args.no_throughput:
        start = time.perf_counter()
        results["throughput"] = throughput(args, data)
        timings["throughput"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - total
    results["timings"] = timings
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
