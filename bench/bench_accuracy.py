"""Accuracy benchmark: the CNN ensemble against the strongest classical peer, on our universe and a foreign one.

Drives the real stages through their ``run`` functions: synth -> prep -> compress ->
split -> augment -> train -> evaluate. One universe of ``--n-train + --n-test`` galaxies
(seeded) is split by galaxy so that ``--n-test`` galaxies (all bands) are held out; the
regression test set is their accepted (45-90 deg) part, the training set the other
galaxies. Members train for a fixed number of epochs (no early stopping: the validation
set is the test split, as in the original, so it is only monitored). A binary (reject)
member trains on the binary split.

The trained members are then scored, per band and per galaxy (median of its four
images), on three sets the models were not trained on:

* **own**: the held-out galaxies of our universe;
* **foreign**: ``--n-foreign`` galaxies of the independent renderer
  (``bench/foreign_universe.py``: other profiles, PSF, stretch, colours and priors),
  normalised by the same prep stage;
* **real-look**: the 16 real SDSS cutouts (no labels): the spread of the predictions
  and how many the reject model rejects.

The peer is the strongest classical measurement we have (:mod:`inclinet.peer`): every
method measures the *raw* images at their full resolution, PSF-corrected with the known
PSF, calibrated (q0 and a linear correction) on ``--n-peer-train`` labelled galaxies of
the training split, and the best method on those is the peer. The reject member reports
its AUC and the fraction of accepted galaxies it rejects (P > 0.5, calibrated with the
temperature from evaluation), also by bin of true inclination (is it the face-on boundary?),
like the ensemble's RMS and bias. Also measures the training throughput of the tf.data
pipeline against the same model fed from in-memory tensors.

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

from inclinet import config, naming  # noqa: E402
from inclinet.stages.augment import BINARY_VIEWS, REGRESSION_VIEWS  # noqa: E402

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
        calls += [
            dict(n_galaxies=n_galaxies, output=raw, size=args.raw_size, seed=args.seed, shard=(k, jobs))
            for k in range(1, jobs + 1)
        ]
        with ProcessPoolExecutor(jobs) as pool:
            list(pool.map(_synth, calls))
        (raw / ".rendered").write_text("ok\n")
    timings["synth"] = time.perf_counter() - start

    start = time.perf_counter()
    parts = {band: work / naming.prep_part(args.size, band, 1, 1) for band in naming.BANDS}
    calls = [
        dict(data_dir=raw / "galaxies", catalog=raw / "catalog.csv", band=band, size=args.size, output=path)
        for band, path in parts.items()
        if not path.exists()
    ]
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
        split.run(
            inputs=list(compressed.values()),
            output_dir=samples_dir,
            size=args.size,
            n_subsamples=args.n_subsamples,
            test_fraction=args.n_test / n_galaxies,
            seed=args.seed,
        )
    timings["split"] = time.perf_counter() - start

    start = time.perf_counter()
    subsets = sorted({subset for _, subset in args.members})
    batches, calls = {}, []
    for subset in subsets:
        inputs = [work / naming.sample(args.size, band, "train", subset) for band in naming.BANDS]
        out_dir = work / naming.augmented_dir(subset)
        batches[subset] = [work / naming.augmented_batch(args.size, subset, b) for b in range(1, args.n_batches + 1)]
        if not _done(*batches[subset]):
            calls.append(
                dict(
                    inputs=inputs,
                    output_dir=out_dir,
                    size=args.size,
                    task="regression",
                    n_batches=args.n_batches,
                    per_bin=args.per_bin,
                    seed=args.seed,
                    regression_views=args.regression_views,
                )
            )
    if calls:
        with ProcessPoolExecutor(jobs) as pool:
            list(pool.map(_augment, calls))
    timings["augment"] = time.perf_counter() - start
    if args.binary_model:
        inputs = [work / naming.sample(args.size, band, "binary_train") for band in naming.BANDS]
        batches["binary"] = [
            work / naming.augmented_batch(args.size, "binary", b) for b in range(1, args.n_batches + 1)
        ]
        if not _done(*batches["binary"]):
            from inclinet.stages import augment

            augment.run(
                inputs=inputs,
                output_dir=work / naming.augmented_dir("binary"),
                size=args.size,
                task="binary",
                n_batches=args.n_batches,
                per_bin=args.per_bin * 9 // 2,
                seed=args.seed,
                binary_views=args.binary_views,
            )
        timings["augment binary"] = time.perf_counter() - start
    tests = [work / naming.sample(args.size, band, "test", 0) for band in naming.BANDS]
    binary_tests = [work / naming.sample(args.size, band, "binary_test") for band in naming.BANDS]
    return {"batches": batches, "tests": tests, "binary_tests": binary_tests, "timings": timings}


def train_member(args, folder, data, model, subset, *, batch_size, lr_schedule, epoch_end=None):
    """Train one member (``subset`` "binary": the reject member) with the training stage into ``folder``.

    Epochs, learning rate and seed come from ``args``; returns the stage's metrics.
    """
    from inclinet.stages import train

    task = "binary" if subset == "binary" else "regression"
    stem = Path(folder) / naming.model_stem(model, subset)
    trunk = None
    if task == "binary" and args.binary_trunk == "regression":
        # As the workflow: the trunk of this model's first regression member (subset 0 there).
        subsets = sorted(s for m, s in args.members if m == model)
        trunk = Path(folder) / naming.trained_model(model, subsets[0])
    return train.run(
        model=model,
        task=task,
        train=data["batches"][subset],
        validation=data["binary_tests"] if task == "binary" else data["tests"],
        output=Path(folder) / naming.trained_model(model, subset),
        checkpoint=Path(folder) / naming.training_checkpoint(model, subset),
        metrics=f"{stem}.metrics.json",
        plot=f"{stem}.metrics.png",
        epochs=args.epochs,
        batch_size=batch_size,
        learning_rate=args.binary_learning_rate if task == "binary" else args.learning_rate,
        lr_schedule=lr_schedule,
        seed=args.seed,
        epoch_end=epoch_end,
        init_trunk=trunk,
    )


def train_members(args, work, data):
    results, timings = {}, {}
    members = list(args.members) + ([(args.binary_model, "binary")] if args.binary_model else [])
    for model, subset in members:
        start = time.perf_counter()
        metrics = train_member(
            args, work, data, model, subset, batch_size=args.batch_size, lr_schedule=args.lr_schedule
        )
        name = naming.member_name(model, subset)
        timings[name] = time.perf_counter() - start
        results[name] = {
            "epochs": metrics["epochs_run"],
            "images_per_epoch": metrics["train_images_per_epoch"],
            "images_per_second": metrics["images_per_second"],
            "final_val_mae_deg": metrics["history"][-1].get("val_mae_deg"),
            "path": str(work / naming.trained_model(model, subset)),
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
        "model": model_name,
        "image_size": stream.image_size,
        "batch_size": stream.batch_size,
        "steps": steps,
        "images_per_second": best,
        "runs": rates,
        "pipeline_cost": 1.0 - best["tf.data"] / best["in-memory"],
    }


def evaluate_members(args, work, data, trained):
    from inclinet.stages import evaluate

    binary = any(name.endswith("-binary") for name in trained)
    return evaluate.run(
        models=[t["path"] for t in trained.values()],
        test=data["tests"],
        binary_test=data["binary_tests"] if binary else (),
        output_dir=work / "evaluation",
        bundle_dir=work / "bundle",
        views=args.views,
        seed=args.seed,
    )


# -- scoring on our universe, the foreign universe and the real-look galaxies -----------------

BAND_LABELS = {"gri": "colour", "g": "g", "r": "r", "i": "i"}
#: Bins of true inclination (deg) for the breakdowns of the ensemble and the reject member.
INCLINATION_BINS = ((45, 55), (55, 65), (65, 75), (75, 91))


def _read_truth(path):
    import csv

    with open(path, newline="") as handle:
        return {int(row["pgc"]): row for row in csv.DictReader(handle)}


def _prep_set(raw, out_dir, size, jobs):
    """Normalised npz of every band of a raw universe (the prep stage), reused when present."""
    paths = {band: out_dir / f"{naming.band_tag(band)}.npz" for band in naming.BANDS}
    calls = [
        dict(data_dir=raw / "galaxies", catalog=raw / "catalog.csv", band=band, size=size, output=path)
        for band, path in paths.items()
        if not path.exists()
    ]
    if calls:
        out_dir.mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor(max(1, jobs)) as pool:
            list(pool.map(_prep, calls))
    import numpy as np

    return {band: dict(np.load(path)) for band, path in paths.items()}


def _psf_pixels(truth_row, raw_size):
    """PSF FWHM in pixels of a raw image, from the truth table (field of view or pixel scale)."""
    fwhm = float(truth_row["psf_fwhm"])
    if truth_row.get("pixel_scale"):
        return fwhm / float(truth_row["pixel_scale"])
    if truth_row.get("fov_arcsec"):
        return fwhm * raw_size / float(truth_row["fov_arcsec"])
    return fwhm * raw_size / (2.0 * float(truth_row["d25"]) * 60.0)


def _raw_images(raw, pgcs, band):
    import numpy as np

    from inclinet.images import load_image

    return np.stack([load_image(raw / naming.raw_image(pgc, band)) for pgc in pgcs])


def fit_strong_peer(args, work):
    """The peer calibrated on labelled training galaxies of our universe (raw images, known PSF)."""
    import numpy as np

    from inclinet import peer
    from inclinet.catalog import read_catalog

    raw = work / "raw"
    truth = _read_truth(raw / "truth.csv")
    test_pgcs = set(np.load(work / naming.sample(args.size, "r", "test", 0))["pgcIDs"].tolist())
    accepted = [
        g.pgc
        for g in read_catalog(raw / "catalog.csv")
        if g.inc_flg == 0 and 45 <= g.inc <= 90 and g.pgc not in test_pgcs
    ][: args.n_peer_train]
    inclinations = np.array([float(truth[p]["true_inc"]) for p in accepted])
    psf = np.array([_psf_pixels(truth[p], args.raw_size) for p in accepted])
    calibrations = {}
    for band in naming.BANDS:
        measured = peer.measure(_raw_images(raw, accepted, band), psf_fwhm_pixels=psf)
        calibrations[band] = peer.fit_peer(measured, inclinations)
        logger.info(
            "peer %s: best %s on %d training galaxies (%s)",
            band,
            calibrations[band].best,
            len(accepted),
            ", ".join(f"{m} {c.rms:.2f}" for m, c in calibrations[band].methods.items()),
        )
    return calibrations


def _scores(predicted, truth):
    import numpy as np

    predicted, truth = np.asarray(predicted, float), np.asarray(truth, float)
    ok = np.isfinite(predicted) & np.isfinite(truth)
    if not ok.any():
        return {"n": 0}
    error = predicted[ok] - truth[ok]
    return {
        "n": int(ok.sum()),
        "rms": float(np.sqrt(np.mean(error**2))),
        "bias": float(np.mean(error)),
        "mae": float(np.mean(np.abs(error))),
        "coverage": float(ok.mean()),
    }


def _auc(labels, scores):
    from inclinet.stages.evaluate import roc_auc

    return roc_auc(labels, scores)


def _inclination_bins(inclinations, rows=None):
    """``(name, selection)`` for each bin of :data:`INCLINATION_BINS`: boolean masks over ``inclinations``.

    Only galaxies within ``rows`` (a boolean mask) are selected when it is given.
    """
    import numpy as np

    inclinations = np.asarray(inclinations, dtype=float)
    within = np.ones(len(inclinations), dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    for low, high in INCLINATION_BINS:
        yield f"{low}-{min(high, 90)}", within & (inclinations >= low) & (inclinations < high)


def score_universe(name, raw, sets, networks, manifest, calibrations, args):
    """Metrics of every member, the ensemble, the peer and the reject member on one labelled universe."""
    import numpy as np

    from inclinet import models, peer
    from inclinet.reliability import apply_temperature

    truth_table = _read_truth(raw / "truth.csv")
    regression = [m["name"] for m in manifest["members"] if m["task"] == "regression"]
    binary = [m["name"] for m in manifest["members"] if m["task"] == "binary"]
    temperatures = manifest.get("reject_temperatures") or {}
    result = {"bands": {}, "galaxy": {}}
    per_galaxy = {}
    for band, arrays in sets.items():
        labels, pgcs, images = arrays["labels"], arrays["pgcIDs"], arrays["images"]
        accepted = labels >= 45
        truth = labels.astype(float)
        entry = {"n_accepted": int(accepted.sum()), "n": int(len(labels))}
        predictions = {}
        for member in regression:
            mean, _ = models.predict_views(networks[member], images[accepted], args.views)
            predictions[member] = models.target_to_inclination(mean[:, 0])
            entry[member] = _scores(predictions[member], truth[accepted])
        ensemble = np.mean(np.stack([predictions[m] for m in regression]), axis=0)
        entry["ensemble"] = _scores(ensemble, truth[accepted])
        entry["ensemble_by_inclination"] = {
            name: _scores(ensemble[rows], truth[accepted][rows]) for name, rows in _inclination_bins(truth[accepted])
        }
        # Peer: raw images at full resolution with the known PSF, calibrated on our training galaxies.
        accepted_pgcs = pgcs[accepted].tolist()
        psf = np.array([_psf_pixels(truth_table[p], args.raw_size) for p in accepted_pgcs])
        measured = peer.measure(_raw_images(raw, accepted_pgcs, band), psf_fwhm_pixels=psf)
        calibration = calibrations[band]
        peer_values = calibration.apply(measured)
        entry["peer"] = {**_scores(peer_values[calibration.best], truth[accepted]), "method": calibration.best}
        entry["peer_methods"] = {m: _scores(v, truth[accepted]) for m, v in peer_values.items()}
        for pgc, true_value, cnn, classical in zip(
            accepted_pgcs, truth[accepted], ensemble, peer_values[calibration.best]
        ):
            record = per_galaxy.setdefault(pgc, {"truth": true_value, "cnn": [], "peer": []})
            record["cnn"].append(cnn)
            record["peer"].append(classical)
        if binary:
            probabilities = []
            for member in binary:
                mean, _ = models.predict_views(networks[member], images, args.views)
                probabilities.append(apply_temperature(mean[:, 1], temperatures.get(member, 1.0)))
            reject = np.mean(probabilities, axis=0)
            binary_labels = (labels < 10).astype(int)
            entry["reject"] = {
                "auc": _auc(binary_labels, reject) if 0 < binary_labels.sum() < len(binary_labels) else None,
                "rejected_accepted": float((reject[binary_labels == 0] > 0.5).mean()),
                "rejected_rejects": float((reject[binary_labels == 1] > 0.5).mean()) if binary_labels.any() else None,
                # Where the accepted galaxies it rejects lie: near the face-on boundary (45 deg) or not.
                "rejected_accepted_by_inclination": {
                    name: {"n": int(rows.sum()), "rejected": float((reject[rows] > 0.5).mean()) if rows.any() else None}
                    for name, rows in _inclination_bins(truth, accepted)
                },
            }
        result["bands"][BAND_LABELS[band]] = entry
        logger.info(
            "%s %s: ensemble RMS %.2f bias %+.2f, peer (%s) RMS %.2f",
            name,
            BAND_LABELS[band],
            entry["ensemble"].get("rms", float("nan")),
            entry["ensemble"].get("bias", float("nan")),
            calibration.best,
            entry["peer"].get("rms", float("nan")),
        )
    truth = np.array([r["truth"] for r in per_galaxy.values()])
    result["galaxy"] = {
        "ensemble": _scores([np.median(r["cnn"]) for r in per_galaxy.values()], truth),
        "peer": _scores(
            [np.nanmedian(r["peer"]) if np.isfinite(r["peer"]).any() else np.nan for r in per_galaxy.values()], truth
        ),
    }
    return result


def score_real_look(args, networks, manifest):
    """Predictions on the real SDSS cutouts (no labels): their spread and the rejection rate."""
    import glob

    import numpy as np

    from inclinet import models
    from inclinet.normalise import load_normalised
    from inclinet.reliability import apply_temperature

    folder = Path(args.real_look)
    files = sorted(glob.glob(str(folder / "*_r.png"))) + sorted(glob.glob(str(folder / "*_gri.sdss.jpg")))
    if not files:
        return None
    images = np.stack([load_normalised(f, args.size) for f in files])
    regression = [m["name"] for m in manifest["members"] if m["task"] == "regression"]
    binary = [m["name"] for m in manifest["members"] if m["task"] == "binary"]
    temperatures = manifest.get("reject_temperatures") or {}
    ensemble = np.mean(
        [
            models.target_to_inclination(models.predict_views(networks[m], images, args.views)[0][:, 0])
            for m in regression
        ],
        axis=0,
    )
    result = {
        "n_images": len(files),
        "files": [Path(f).name for f in files],
        "ensemble": [round(float(v), 1) for v in ensemble],
        "min": float(ensemble.min()),
        "max": float(ensemble.max()),
        "std": float(ensemble.std()),
    }
    if binary:
        reject = np.mean(
            [
                apply_temperature(
                    models.predict_views(networks[m], images, args.views)[0][:, 1], temperatures.get(m, 1.0)
                )
                for m in binary
            ],
            axis=0,
        )
        result["reject"] = [round(float(v), 3) for v in reject]
        result["rejected_fraction"] = float((reject > 0.5).mean())
    return result


def score_all(args, work, manifest):
    import numpy as np

    from inclinet import models

    keras = models.import_keras()
    bundle = work / "bundle"
    networks = {m["name"]: keras.models.load_model(bundle / m["file"], compile=False) for m in manifest["members"]}
    calibrations = fit_strong_peer(args, work)
    own = {}
    for band in naming.BANDS:
        own[band] = dict(np.load(work / naming.sample(args.size, band, "test", 0)))
    # The binary test split has the rejects; score them on the held-out accepted + binary test together.
    for band in naming.BANDS:
        extra = dict(np.load(work / naming.sample(args.size, band, "binary_test")))
        # Binary samples hold binary labels (1 = reject): add the rejects as numeric class 0 (J).
        keep = ~np.isin(extra["pgcIDs"], own[band]["pgcIDs"]) & (extra["labels"] == 1)
        extra["labels"] = np.where(extra["labels"] == 1, 0, extra["labels"])
        for key in ("images", "labels", "pgcIDs"):
            own[band][key] = np.concatenate([own[band][key], extra[key][keep]])
    scores = {"own": score_universe("own", work / "raw", own, networks, manifest, calibrations, args)}
    if args.n_foreign:
        sys.path.insert(0, str(ROOT / "bench"))
        from foreign_universe import render_universe

        foreign_raw = work / "foreign"
        if not (foreign_raw / ".rendered").exists():
            render_universe(
                foreign_raw, n_galaxies=args.n_foreign, size=args.raw_size, seed=args.seed + 1, jobs=args.jobs
            )
            (foreign_raw / ".rendered").write_text("ok\n")
        foreign_sets = _prep_set(foreign_raw, work / "foreign_npz", args.size, args.jobs)
        scores["foreign"] = score_universe("foreign", foreign_raw, foreign_sets, networks, manifest, calibrations, args)
    scores["real_look"] = score_real_look(args, networks, manifest)
    scores["peer_training"] = {band: c.as_dict() for band, c in calibrations.items()}
    return scores


def markdown_universes(scores):
    lines = []
    for name in ("own", "foreign"):
        if name not in scores:
            continue
        universe = scores[name]
        lines += [
            "",
            f"**{name} universe** (accepted galaxies per band; peer = calibrated classical method on the raw images):",
            "",
            "| band | N | ensemble RMS | bias | MAE | peer RMS (method) | peer bias | ratio | members RMS | "
            "reject AUC | accepted rejected |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for band, entry in universe["bands"].items():
            members = ", ".join(
                f"{k} {v['rms']:.2f}"
                for k, v in entry.items()
                if isinstance(v, dict) and "rms" in v and k not in ("ensemble", "peer")
            )
            ratio = entry["ensemble"]["rms"] / entry["peer"]["rms"] if entry["peer"].get("rms") else float("nan")
            reject = entry.get("reject", {})
            auc = reject.get("auc")
            lines.append(
                f"| {band} | {entry['n_accepted']} | {entry['ensemble']['rms']:.2f} | {entry['ensemble']['bias']:+.2f} "
                f"| {entry['ensemble']['mae']:.2f} | {entry['peer'].get('rms', float('nan')):.2f} "
                f"({entry['peer']['method']}) | {entry['peer'].get('bias', float('nan')):+.2f} | {ratio:.2f} | "
                f"{members} | {'' if auc is None else f'{auc:.3f}'} | "
                f"{reject.get('rejected_accepted', float('nan')):.2f} |"
            )
        galaxy = universe["galaxy"]
        lines.append(
            f"| per galaxy (median of 4) | {galaxy['ensemble']['n']} | {galaxy['ensemble']['rms']:.2f} | "
            f"{galaxy['ensemble']['bias']:+.2f} | {galaxy['ensemble']['mae']:.2f} | "
            f"{galaxy['peer']['rms']:.2f} | {galaxy['peer']['bias']:+.2f} | "
            f"{galaxy['ensemble']['rms'] / galaxy['peer']['rms']:.2f} | | | |"
        )
    real = scores.get("real_look")
    if real:
        lines += [
            "",
            f"**real-look** ({real['n_images']} images, r and colour of 16 galaxies): ensemble predictions "
            f"{real['min']:.0f}-{real['max']:.0f} deg (std {real['std']:.1f}); rejected at 50%: "
            f"{real.get('rejected_fraction', float('nan')):.2f}.",
        ]
    return "\n".join(lines)


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
            + " | ".join("" if v is None else f"{v:.2f}" for v in bands)
            + " |"
        )
    lines += ["", "| views | ensemble RMS | ensemble MAE |", "|---|---|---|"]
    for views, entry in metrics["tta"].items():
        lines.append(
            f"| {views} | {entry['ensemble_mean']['all']['rms']:.2f} | {entry['ensemble_mean']['all']['mae']:.2f} |"
        )
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
    if results.get("universes"):
        lines.append(markdown_universes(results["universes"]))
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
    parser.add_argument(
        "--members",
        nargs="+",
        type=parse_member,
        default=[("model4", 0), ("model4", 1), ("model4", 2)],
        metavar="MODEL:SUBSET",
    )
    parser.add_argument("--n-subsamples", type=int, default=2)
    parser.add_argument("--n-batches", type=int, default=8)
    parser.add_argument("--per-bin", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--lr-schedule", choices=["constant", "cosine"], default="cosine")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--binary-model", default="model4", help="reject member's model ('' for none)")
    parser.add_argument(
        "--binary-views",
        choices=BINARY_VIEWS,
        default=BINARY_VIEWS[0],
        help="how the reject member's batches vary the images (inclinet-augment --binary-views)",
    )
    parser.add_argument(
        "--regression-views",
        choices=REGRESSION_VIEWS,
        default=config.DEFAULTS.regression_views,
        help="how the regression members' batches vary the images (inclinet-augment --regression-views)",
    )
    parser.add_argument(
        "--binary-learning-rate",
        type=float,
        default=None,
        help="the reject member's learning rate (default: --learning-rate, as the presets were measured)",
    )
    parser.add_argument(
        "--binary-trunk",
        choices=config.setting("binary_trunk").choices,
        default="scratch",
        help="the reject member from scratch (default, as the presets were measured) or on the frozen trunk of "
        "its model's first regression member (regression: the workflow's default, run_workflow.py --binary-trunk)",
    )
    parser.add_argument("--n-foreign", type=int, default=500, help="galaxies of the foreign universe (0: none)")
    parser.add_argument(
        "--n-peer-train", type=int, default=600, help="labelled training galaxies the classical peer is calibrated on"
    )
    parser.add_argument("--real-look", default=str(ROOT.parent / "shared" / "reference" / "real-look"))
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--stop-after", choices=["data", "train"], default=None)
    args = parser.parse_args(argv)
    if args.binary_learning_rate is None:
        args.binary_learning_rate = args.learning_rate
    regression_models = {model for model, _ in args.members}
    if args.binary_model and args.binary_trunk == "regression" and args.binary_model not in regression_models:
        parser.error(f"--binary-trunk regression needs a regression member of {args.binary_model} in --members")
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
    results = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "trained": trained,
        "metrics": {k: v for k, v in metrics.items() if k != "bundle"},
    }
    start = time.perf_counter()
    results["universes"] = score_all(args, work, metrics["bundle"])
    timings["score universes"] = time.perf_counter() - start
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
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
