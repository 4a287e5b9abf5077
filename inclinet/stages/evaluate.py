"""inclinet-evaluate: score every trained model and their ensembles on the test split, and publish the bundle.

The join job of the workflow. Per model and per band (g, r, i, colour and all): RMS, MAE,
signed bias of delta = true - predicted, the original's linear bias fit (m, b) on rows
with |delta| < 10 and the corrected RMS of i_pc = (i_p + b) / (1 - m), and residuals by
5-degree bin. Ensembles: mean and median per model family and over all members, with the
per-galaxy population standard deviation as the uncertainty. Predictions average the
regression outputs over ``--views`` exact rotations/flips (1 and 2 views are reported
too). The classical axial-ratio inclination of the same images is the peer every table
shows. Binary (accept/reject) members get precision, recall, accuracy (positive =
reject) and ROC AUC on the binary test split.

Writes ``naming.EVALUATION_FILES`` under ``--output-dir`` and the model bundle
(``manifest.json`` + ``<member>.keras``) under ``--bundle-dir``.
"""

import argparse
import csv
import html
import io
import logging
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from inclinet import config, naming, reliability
from inclinet import models as inclinet_models
from inclinet.bundle import write_bundle
from inclinet.cli import add_common_arguments, run_main
from inclinet.errors import ConfigError, InputError, invalid
from inclinet.io import atomic_path, atomic_write_json, atomic_write_text, check_outputs, load_npz

logger = logging.getLogger(__name__)

FIT_WINDOW = 10.0
BIN_EDGES = tuple(range(45, 95, 5))
BAND_NAMES = {"gri": "colour", "g": "g", "r": "r", "i": "i"}
N_OUTLIERS = 12
_MODEL_FILE = re.compile(r"^(?:Uset_(?P<subset>\d{3})|(?P<binary>Binary))_(?P<model>model[0-9]+)\.keras$")


# -- members ------------------------------------------------------------------------------


def parse_model_file(path):
    """``Uset_001_model5.keras`` -> ("model5", 1); ``Binary_model4.keras`` -> ("model4", "binary")."""
    match = _MODEL_FILE.match(Path(path).name)
    if not match or match["model"] not in inclinet_models.MODEL_NAMES:
        raise InputError(
            f"{path}: cannot tell the member from the file name; trained models are named "
            "Uset_<jjj>_<model>.keras or Binary_<model>.keras (naming.trained_model)"
        )
    subset = "binary" if match["binary"] else int(match["subset"])
    return match["model"], subset


def describe_members(paths, identities=None):
    """Member records sorted as the API lists them: regression by family and subset, then binary.

    ``identities`` are ``model:subset`` strings (:func:`inclinet.naming.member_id`), one per
    path, as the workflow passes them; without them each identity is read from the file name.
    """
    if identities is not None and len(identities) != len(paths):
        raise invalid("--members", " ".join(identities), f"one model:subset per --models file ({len(paths)})")
    members = []
    for position, path in enumerate(paths):
        if identities is None:
            model, subset = parse_model_file(path)
        else:
            try:
                model, subset = naming.parse_member_id(identities[position])
            except ValueError:
                raise invalid(
                    "--members", identities[position], "model:subset, e.g. model4:0, model5:2 or model4:binary"
                ) from None
            if model not in inclinet_models.MODEL_NAMES:
                raise invalid("--members", identities[position], "a model of " + ", ".join(inclinet_models.MODEL_NAMES))
        task = "binary" if subset == "binary" else "regression"
        members.append(
            {
                "name": naming.member_name(model, subset),
                "model": model,
                "task": task,
                "subset": subset,
                "path": Path(path),
            }
        )
    names = [m["name"] for m in members]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"invalid --models: member(s) {', '.join(duplicates)} given twice; must be unique")
    members.sort(key=lambda m: (m["task"] == "binary", m["model"], -1 if m["subset"] == "binary" else m["subset"]))
    return members


# -- statistics ---------------------------------------------------------------------------


def _finite(value):
    value = float(value)
    return value if math.isfinite(value) else None


def bias_fit(truth, predicted, window=FIT_WINDOW):
    """The original's linear bias model: delta = m * truth + b fitted on rows with |delta| < window."""
    truth = np.asarray(truth, dtype=np.float64)
    delta = truth - np.asarray(predicted, dtype=np.float64)
    use = np.isfinite(delta) & (np.abs(delta) < window)
    if use.sum() < 2 or np.ptp(truth[use]) == 0:
        return {"m": 0.0, "b": 0.0, "n_fit": int(use.sum())}
    slope, intercept = np.polyfit(truth[use], delta[use], 1)
    return {"m": float(slope), "b": float(intercept), "n_fit": int(use.sum())}


def apply_calibration(predicted, fit):
    """i_pc = (i_p + b) / (1 - m)."""
    return (np.asarray(predicted, dtype=np.float64) + fit["b"]) / (1.0 - fit["m"])


def regression_metrics(truth, predicted):
    """RMS, MAE, bias, linear bias fit with corrected RMS/MAE, and 5-degree bins."""
    truth = np.asarray(truth, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    valid = np.isfinite(predicted)
    truth_v, predicted_v = truth[valid], predicted[valid]
    delta = truth_v - predicted_v
    result = {"n": int(valid.sum()), "n_missing": int((~valid).sum())}
    if not len(delta):
        return result
    fit = bias_fit(truth_v, predicted_v)
    corrected = truth_v - apply_calibration(predicted_v, fit)
    result.update(
        rms=float(np.sqrt(np.mean(delta**2))),
        mae=float(np.mean(np.abs(delta))),
        bias=float(np.mean(delta)),
        fit=fit,
        rms_corrected=float(np.sqrt(np.mean(corrected**2))),
        mae_corrected=float(np.mean(np.abs(corrected))),
        outliers_over_10=int((np.abs(delta) > 10).sum()),
    )
    bins = []
    for low, high in zip(BIN_EDGES[:-1], BIN_EDGES[1:]):
        inside = (truth_v > low) & (truth_v <= high) if low > BIN_EDGES[0] else (truth_v >= low) & (truth_v <= high)
        part = delta[inside]
        bins.append(
            {
                "bin": f"{low}-{high}",
                "n": int(len(part)),
                "bias": _finite(part.mean()) if len(part) else None,
                "rms": _finite(np.sqrt(np.mean(part**2))) if len(part) else None,
                "mae": _finite(np.mean(np.abs(part))) if len(part) else None,
            }
        )
    result["bins"] = bins
    return result


def roc_auc(labels, scores):
    """Area under the ROC curve (probability a positive outranks a negative; ties count half)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):
        stop = start
        while stop + 1 < len(scores) and sorted_scores[stop + 1] == sorted_scores[start]:
            stop += 1
        ranks[order[start : stop + 1]] = 0.5 * (start + stop) + 1
        start = stop + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(labels, reject_probability, votes=None):
    """Precision, recall, accuracy (positive = reject, threshold 0.5), ROC AUC and confusion counts."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(reject_probability, dtype=np.float64)
    predicted = (scores > 0.5) if votes is None else np.asarray(votes, dtype=bool)
    tp = int((predicted & labels).sum())
    fp = int((predicted & ~labels).sum())
    fn = int((~predicted & labels).sum())
    tn = int((~predicted & ~labels).sum())
    return {
        "n": int(len(labels)),
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "accuracy": (tp + tn) / len(labels) if len(labels) else None,
        "auc": roc_auc(labels, scores),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


# -- data ---------------------------------------------------------------------------------


def load_test_files(paths, *, binary):
    """Read sample files -> list of {band, images, labels, pgc, path}; checks labels and sizes."""
    sets = []
    for path in paths:
        arrays = load_npz(path, required=("images", "labels", "pgcIDs", "band"))
        band = str(arrays["band"])
        if band not in BAND_NAMES:
            raise InputError(f"{path}: unknown band {band!r}; must be one of g, r, i, gri")
        labels = np.asarray(arrays["labels"])
        if binary:
            bad = (labels != 0) & (labels != 1)
        else:
            bad = (labels < inclinet_models.INCLINATION_MIN) | (labels > inclinet_models.INCLINATION_MAX)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            expected = "binary labels 0/1 (binary_test)" if binary else "inclinations 45..90 (test_000)"
            raise InputError(f"{path}: row {row} has label {labels[row]}; must hold {expected}")
        images = arrays["images"]
        if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3:
            raise InputError(f"{path}: images must be (N, S, S, 3), found {images.shape}")
        if any(s["band"] == band for s in sets):
            raise InputError(f"{path}: a second test file for band {band}; pass one file per band")
        sets.append(
            {
                "band": band,
                "images": images,
                "labels": labels.astype(np.int32),
                "pgc": np.asarray(arrays["pgcIDs"]).astype(np.int64),
                "path": Path(path),
            }
        )
    sizes = {s["images"].shape[1] for s in sets}
    if len(sizes) > 1:
        raise InputError(f"test files have different image sizes {sorted(sizes)}; pass files of one size")
    order = {band: i for i, band in enumerate(BAND_NAMES)}
    sets.sort(key=lambda s: order[s["band"]])
    return sets


def strong_peer(test_sets):
    """The strongest classical peer on the test images, honestly calibrated.

    Every method of :mod:`inclinet.peer` measures every test image; each method's ``q0`` and
    linear correction are fitted 2-fold across galaxies (pgc parity: each half is
    calibrated on the other half, never on itself), and the method with the lowest RMS is
    "the peer". Returns ``(method, inclinations of every method, calibration fitted on all
    test galaxies for the bundle or None)``.
    """
    from inclinet import peer

    truth = np.concatenate([s["labels"] for s in test_sets]).astype(np.float64)
    pgc = np.concatenate([s["pgc"] for s in test_sets])
    measurements = {}
    for test_set in test_sets:
        for method, q in peer.measure(test_set["images"]).items():
            measurements.setdefault(method, []).append(q)
    measurements = {method: np.concatenate(parts) for method, parts in measurements.items()}
    fold = (pgc % 2).astype(bool)
    values = {method: np.full(len(truth), np.nan) for method in measurements}
    for part in (False, True):
        train, apply = fold != part, fold == part
        try:
            calibration = peer.fit_peer({m: q[train] for m, q in measurements.items()}, truth[train])
            fitted = calibration.apply({m: q[apply] for m, q in measurements.items()})
        except ValueError:  # too few galaxies to fit: the fixed q0
            fitted = {m: peer.peer_inclination(q[apply]) for m, q in measurements.items()}
        for method, inclinations in fitted.items():
            values[method][apply] = inclinations
    name = _best_cross_fitted(peer, values, truth)
    try:
        full = peer.fit_peer(measurements, truth)
        full = peer.PeerCalibration(methods=full.methods, best=name)
    except ValueError:
        full = None
    return name, values, full


def _best_cross_fitted(peer, values, truth):
    """The method whose cross-fitted inclinations have the lowest RMS (among those measuring 90%)."""
    table = {m: peer.scores(v, truth) for m, v in values.items()}
    return peer.best_method({m: (t["rms"], t["coverage"]) for m, t in table.items()})


# -- the job ------------------------------------------------------------------------------


def _view_counts(views):
    return [n for n in inclinet_models.TTA_VIEW_COUNTS if n <= views and n in (1, 2, views)]


def _load_models(members, size):
    """Load every member's network; each must take the test images' ``size x size x 3``."""
    keras = inclinet_models.import_keras()
    loaded = {}
    for member in members:
        try:
            loaded[member["name"]] = keras.models.load_model(member["path"], compile=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{member['path']}: not a readable Keras model ({exc}); re-run its training job") from None
    for member in members:
        expected = tuple(loaded[member["name"]].input_shape[1:])
        if expected != (size, size, 3):
            raise InputError(f"{member['path']}: model expects inputs {expected}, test images are {size}x{size}x3")
    return loaded


def _read_search(hpo_summary):
    """The hyper-parameter search summary (``hpo/search.json``), or None without one."""
    if hpo_summary is None:
        return None
    from inclinet import hpo

    return hpo.read_summary(hpo_summary)


def _split_members(models, identities, views, binary_test):
    """Check the options and describe the members: ``(all members, regression members, binary members)``."""
    if views not in inclinet_models.TTA_VIEW_COUNTS:
        raise invalid("--views", views, "one of " + ", ".join(map(str, inclinet_models.TTA_VIEW_COUNTS)))
    if not models:
        raise ConfigError("invalid --models: nothing given; must be one or more trained .keras files")
    members = describe_members(models, identities)
    regression = [m for m in members if m["task"] == "regression"]
    binary = [m for m in members if m["task"] == "binary"]
    if not regression:
        raise ConfigError("invalid --models: no regression member (Uset_<jjj>_<model>.keras); must give at least one")
    if binary and not binary_test:
        raise ConfigError("invalid --binary-test: nothing given; must be the binary_test files when binary models are")
    return members, regression, binary


def _load_test_data(test, binary_test, *, binary):
    """Read the regression test files and, with binary members, the binary ones: ``(test_sets, binary_sets)``."""
    test_sets = load_test_files(test, binary=False)
    if not test_sets:
        raise ConfigError("invalid --test: nothing given; must be the test_000 sample of every band")
    binary_sets = load_test_files(binary_test, binary=True) if binary else []
    if binary_test and not binary:
        logger.warning("--binary-test given without binary models: ignored")
    size = test_sets[0]["images"].shape[1]
    if binary_sets and binary_sets[0]["images"].shape[1] != size:
        raise InputError("binary test images and regression test images have different sizes")
    return test_sets, binary_sets


def _metrics_header(members, test_sets, views, seed, search):
    """The run's description; the tables (regression, tta, binary) are filled in by the later steps."""
    metrics = {
        "views": views,
        "seed": int(seed),
        "members": [{k: m[k] for k in ("name", "model", "task", "subset")} for m in members],
        "n_test": {BAND_NAMES[s["band"]]: int(len(s["labels"])) for s in test_sets},
        "regression": {},
        "tta": {},
        "binary": {},
    }
    if search is not None:
        metrics["hpo"] = {
            key: search[key] for key in ("search", "jobs", "best", "by_model", "importances", "importance_note")
        }
    return metrics


def _regression_tables(rows, names, columns, bands):
    """Full regression metrics of every member, ensemble column and the peer, per band."""
    band_of_row = rows["band_name"]
    tables = {}
    for column in names + list(columns["order"]) + ["peer"]:
        values = columns["values"].get(column, rows.get(column))
        tables[column] = {
            band: regression_metrics(rows["truth"][_select(band_of_row, band)], values[_select(band_of_row, band)])
            for band in bands
        }
    return tables


def _tta_tables(rows, names, view_counts, bands):
    """Short metrics of the ensemble mean (per band) and of each member for every number of views."""
    band_of_row = rows["band_name"]
    tables = {}
    for n_views in view_counts:
        per_view = rows["views"][n_views]
        ensemble = np.mean(np.stack([per_view[name] for name in names]), axis=0)
        tables[str(n_views)] = {
            "ensemble_mean": {
                band: _short(
                    regression_metrics(rows["truth"][_select(band_of_row, band)], ensemble[_select(band_of_row, band)])
                )
                for band in bands
            },
            "members": {name: _short(regression_metrics(rows["truth"], per_view[name])) for name in names},
        }
    return tables


def _peer_table(rows):
    """The classical peer: the chosen method, how it was calibrated, and every method's short metrics."""
    return {
        "method": rows["peer_method"],
        "calibration": "q0 and a linear inclination correction per method, fitted 2-fold across galaxies "
        "(each half calibrated on the other); the method with the lowest RMS is the peer",
        "methods": {
            method: _short(regression_metrics(rows["truth"], values)) for method, values in rows["peer_methods"].items()
        },
    }


def _evaluate_binary(binary, networks, binary_sets, views, batch_size, metrics):
    """Score the binary members and calibrate P(reject); fills ``metrics``, returns ``(rows, temperatures)``.

    Without binary members: ``(None, {})`` and ``metrics`` unchanged.
    """
    if not binary:
        return None, {}
    binary_rows = _binary_predictions(binary, networks, binary_sets, views, batch_size)
    binary_names = [m["name"] for m in binary]
    metrics["binary"] = _binary_metrics(binary_rows, binary_names)
    metrics["reject_calibration"], temperatures = _calibrate_rejection(binary_rows, binary_names)
    return binary_rows, temperatures


def _write_evaluation_files(output_dir, rows, names, columns, metrics, test_sets, binary_rows, view_counts, search):
    """Write ``naming.EVALUATION_FILES`` (predictions, metrics, plots, report) in ``output_dir``; returns the paths."""
    output_dir = Path(output_dir)
    paths = {Path(name).name: output_dir / Path(name).name for name in naming.EVALUATION_FILES}
    _write_predictions(paths["predictions.csv"], rows, names, columns)
    atomic_write_json(paths["metrics.json"], metrics)
    _write_plots(paths, rows, columns, metrics, test_sets, binary_rows)
    _write_html(paths["report.html"], metrics, names, columns["order"], view_counts, search)
    return list(paths.values())


def _log_summary(metrics, rows, test_sets, bundle_dir, elapsed):
    """One line: what was evaluated, the ensemble and peer scores, where the bundle went, how long it took."""
    overall = metrics["regression"]["ensemble_mean"]["all"]
    peer = metrics["regression"]["peer"]["all"]
    logger.info(
        "evaluate: %d member(s) (%d binary) on %d test image(s) in %d band(s), %d view(s): ensemble RMS %.2f "
        "MAE %.2f deg, peer (%s) RMS %s deg; bundle %s; %.1f s, seed %d",
        len(metrics["members"]),
        sum(member["task"] == "binary" for member in metrics["members"]),
        len(rows["truth"]),
        len(test_sets),
        metrics["views"],
        overall.get("rms", float("nan")),
        overall.get("mae", float("nan")),
        rows["peer_method"],
        f"{peer['rms']:.2f}" if "rms" in peer else "n/a",
        bundle_dir,
        elapsed,
        metrics["seed"],
    )


def run(
    *,
    models,
    test,
    output_dir,
    bundle_dir,
    binary_test=(),
    views=config.DEFAULTS.views,
    seed=config.DEFAULTS.seed,
    batch_size=256,
    members=None,
    hpo_summary=None,
):
    """Evaluate ``models`` on ``test`` (and binary members on ``binary_test``); write the report and bundle.

    ``members``: the ``model:subset`` identity of each model file (:func:`naming.member_id`),
    as the workflow passes it; None reads it from the file names. ``hpo_summary``: the
    summary of a hyper-parameter search (``hpo/search.json``), shown in the report and
    recorded in the metrics. Returns the metrics dictionary that is also written to
    ``metrics.json``.
    """
    start = time.perf_counter()
    search = _read_search(hpo_summary)
    members, regression, binary = _split_members(models, members, views, binary_test)
    test_sets, binary_sets = _load_test_data(test, binary_test, binary=bool(binary))
    size = test_sets[0]["images"].shape[1]
    networks = _load_models(members, size)

    view_counts = _view_counts(views)
    rows = _regression_predictions(regression, networks, test_sets, views, view_counts, batch_size)
    names = [m["name"] for m in regression]
    columns = _ensemble_columns(rows, names, sorted({m["model"] for m in regression}), regression)

    metrics = _metrics_header(members, test_sets, views, seed, search)
    bands = ["all"] + [BAND_NAMES[s["band"]] for s in test_sets]
    metrics["regression"] = _regression_tables(rows, names, columns, bands)
    metrics["tta"] = _tta_tables(rows, names, view_counts, bands)
    metrics["peer"] = _peer_table(rows)
    binary_rows, temperatures = _evaluate_binary(binary, networks, binary_sets, views, batch_size, metrics)
    ood_reference = reliability.reference_ranges(
        np.concatenate([s["images"] for s in test_sets]), columns["values"]["ensemble_std"]
    )

    files = _write_evaluation_files(
        output_dir, rows, names, columns, metrics, test_sets, binary_rows, view_counts, search
    )
    manifest = write_bundle(
        bundle_dir,
        members,
        input_size=size,
        metrics=metrics,
        seed=seed,
        views=views,
        peer_calibration=rows["peer_calibration"],
        reject_temperatures=temperatures,
        ood_reference=ood_reference,
    )
    check_outputs(files + [Path(bundle_dir) / "manifest.json"])
    _log_summary(metrics, rows, test_sets, Path(bundle_dir), time.perf_counter() - start)
    metrics["bundle"] = manifest
    return metrics


def _select(band_of_row, band):
    return np.ones(len(band_of_row), bool) if band == "all" else band_of_row == band


def _short(metrics):
    return {key: metrics.get(key) for key in ("n", "rms", "mae", "bias")}


def _regression_predictions(members, networks, test_sets, views, view_counts, batch_size):
    """Per-image rows of every test set: identity, truth, each member's inclination per view count, the peer."""
    rows = {
        "pgc": np.concatenate([s["pgc"] for s in test_sets]),
        "band": np.concatenate([np.full(len(s["labels"]), s["band"]) for s in test_sets]),
        "band_name": np.concatenate([np.full(len(s["labels"]), BAND_NAMES[s["band"]]) for s in test_sets]),
        "truth": np.concatenate([s["labels"] for s in test_sets]).astype(np.float64),
        "images": [(s, i) for s in test_sets for i in range(len(s["labels"]))],
        "views": {n: {} for n in view_counts},
    }
    for member in members:
        per_band_views = []
        for test_set in test_sets:
            _, per_view = inclinet_models.predict_views(
                networks[member["name"]], test_set["images"], views, batch_size=batch_size
            )
            per_band_views.append(per_view[:, :, 0])
        per_view = np.concatenate(per_band_views, axis=1)
        for n_views in view_counts:
            rows["views"][n_views][member["name"]] = inclinet_models.target_to_inclination(
                per_view[:n_views].mean(axis=0)
            )
        rows[member["name"]] = rows["views"][views][member["name"]]
        logger.info("evaluated %s on %d images x %d views", member["name"], per_view.shape[1], views)
    rows["peer_method"], rows["peer_methods"], rows["peer_calibration"] = strong_peer(test_sets)
    rows["peer"] = rows["peer_methods"][rows["peer_method"]]
    return rows


def _ensemble_columns(rows, names, families, members):
    """Ensemble columns (mean, median, std over all members; mean and median per family; per-galaxy median)."""
    stack = np.stack([rows[name] for name in names])
    values = {
        "ensemble_mean": stack.mean(axis=0),
        "ensemble_median": np.median(stack, axis=0),
        "ensemble_std": stack.std(axis=0),
    }
    for family in families:
        family_stack = np.stack([rows[m["name"]] for m in members if m["model"] == family])
        values[f"{family}_mean"] = family_stack.mean(axis=0)
        values[f"{family}_median"] = np.median(family_stack, axis=0)
    # All images of a galaxy (g, r, i, colour): the median of their ensemble means.
    galaxy_median = np.empty(len(rows["pgc"]))
    for pgc in np.unique(rows["pgc"]):
        same = rows["pgc"] == pgc
        galaxy_median[same] = np.median(values["ensemble_mean"][same])
    values["galaxy_median"] = galaxy_median
    order = ["ensemble_mean", "ensemble_median", "galaxy_median"] + [
        f"{f}_{k}" for f in families for k in ("mean", "median")
    ]
    return {"values": values, "order": order}


def _binary_predictions(members, networks, binary_sets, views, batch_size):
    """Per-image rows of the binary test sets: identity, label and each binary member's P(reject)."""
    rows = {
        "pgc": np.concatenate([s["pgc"] for s in binary_sets]),
        "band_name": np.concatenate([np.full(len(s["labels"]), BAND_NAMES[s["band"]]) for s in binary_sets]),
        "truth": np.concatenate([s["labels"] for s in binary_sets]),
    }
    for member in members:
        probabilities = []
        for binary_set in binary_sets:
            mean, _ = inclinet_models.predict_views(
                networks[member["name"]], binary_set["images"], views, batch_size=batch_size
            )
            probabilities.append(mean[:, 1])
        rows[member["name"]] = np.concatenate(probabilities)
    return rows


def _calibrate_rejection(rows, names):
    """Temperatures of the binary members and the reliability of raw and (cross-fitted) calibrated P(reject)."""
    truth = rows["truth"]
    calibrated = {name: reliability.cross_fitted(rows[name], truth, rows["pgc"]) for name in names}
    rows["calibrated"] = calibrated
    raw_mean = np.mean(np.stack([rows[name] for name in names]), axis=0)
    calibrated_mean = np.mean(np.stack([calibrated[name] for name in names]), axis=0)
    raw_table, raw_ece = reliability.reliability_table(raw_mean, truth)
    calibrated_table, calibrated_ece = reliability.reliability_table(calibrated_mean, truth)
    temperatures = {name: reliability.fit_temperature(rows[name], truth) for name in names}
    accepted = truth == 0
    summary_metrics = {
        "temperatures": temperatures,
        "ece_raw": raw_ece,
        "ece_calibrated": calibrated_ece,
        "rejection_rate_of_accepted_raw": float((raw_mean[accepted] > 0.5).mean()) if accepted.any() else None,
        "rejection_rate_of_accepted_calibrated": (
            float((calibrated_mean[accepted] > 0.5).mean()) if accepted.any() else None
        ),
        "reliability_raw": raw_table,
        "reliability_calibrated": calibrated_table,
        "calibrated_ensemble": binary_metrics(truth, calibrated_mean),
    }
    return summary_metrics, temperatures


def _binary_metrics(rows, names):
    """Binary metrics of each member per band, and of the mean and median ensembles (all bands)."""
    result = {}
    bands = ["all"] + sorted(set(rows["band_name"]))
    for name in names:
        result[name] = {
            band: binary_metrics(
                rows["truth"][_select(rows["band_name"], band)], rows[name][_select(rows["band_name"], band)]
            )
            for band in bands
        }
    probabilities = np.stack([rows[name] for name in names])
    votes = probabilities > 0.5
    result["ensemble_mean"] = {
        "all": binary_metrics(rows["truth"], probabilities.mean(axis=0), votes=votes.mean(axis=0) > 0.5)
    }
    result["ensemble_median"] = {
        "all": binary_metrics(rows["truth"], np.median(probabilities, axis=0), votes=np.median(votes, axis=0) > 0.5)
    }
    return result


# -- outputs ------------------------------------------------------------------------------


def _write_predictions(path, rows, names, columns):
    header = ["pgc", "band", "truth"] + names + list(columns["order"]) + ["ensemble_std", "peer"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    values = {**{name: rows[name] for name in names}, **columns["values"], "peer": rows["peer"]}
    for index in range(len(rows["truth"])):
        writer.writerow(
            [int(rows["pgc"][index]), str(rows["band"][index]), int(rows["truth"][index])]
            + [_csv_number(values[column][index]) for column in header[3:]]
        )
    atomic_write_text(path, buffer.getvalue())


def _csv_number(value):
    return "" if not np.isfinite(value) else f"{float(value):.4f}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _save(figure, path):
    plt = _pyplot()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80)
    plt.close(figure)


def _write_plots(paths, rows, columns, metrics, test_sets, binary_rows):
    """Draw the four figures of the report: predicted vs true, residuals, outlier gallery, binary confusion."""
    plt = _pyplot()
    ensemble = columns["values"]["ensemble_mean"]
    _save(_plot_predicted_vs_true(plt, rows, ensemble, metrics), paths["predicted_vs_true.png"])
    _save(_plot_residuals(plt, rows["truth"], ensemble, metrics), paths["residuals.png"])
    _save(_plot_outliers(plt, rows, ensemble), paths["outliers.png"])
    _save(_plot_binary(plt, metrics, binary_rows), paths["confusion.png"])


def _plot_predicted_vs_true(plt, rows, ensemble, metrics):
    """Ensemble mean and classical peer against the true inclination, side by side, one colour per band."""
    truth, peer, band_names = rows["truth"], rows["peer"], rows["band_name"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 5), sharey=True)
    peer_title = f"classical peer ({metrics['peer']['method']})"
    for axis, values, title in ((axes[0], ensemble, "CNN ensemble (mean)"), (axes[1], peer, peer_title)):
        for band in sorted(set(band_names)):
            keep = band_names == band
            axis.plot(truth[keep], values[keep], ".", alpha=0.6, label=band)
        axis.plot([45, 90], [45, 90], "k-", lw=1)
        rms = metrics["regression"]["ensemble_mean" if values is ensemble else "peer"]["all"].get("rms")
        axis.set_title(f"{title}: RMS {rms:.2f} deg" if rms is not None else title)
        axis.set_xlabel("true inclination [deg]")
        axis.set_xlim(44, 91)
        axis.set_ylim(44, 91)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    axes[0].set_ylabel("predicted inclination [deg]")
    return figure


def _plot_residuals(plt, truth, ensemble, metrics):
    """True - ensemble mean against the true inclination, with the linear bias fit and its window."""
    figure, axis = plt.subplots(figsize=(7, 5))
    delta = truth - ensemble
    axis.plot(truth, delta, ".", alpha=0.5, label="true - ensemble mean")
    fit = metrics["regression"]["ensemble_mean"]["all"].get("fit", {"m": 0.0, "b": 0.0})
    line_x = np.array([45.0, 90.0])
    axis.plot(line_x, fit["m"] * line_x + fit["b"], "r-", label=f"bias fit m={fit['m']:.3f} b={fit['b']:.2f}")
    axis.axhline(0, color="k", lw=1)
    axis.axhspan(-FIT_WINDOW, FIT_WINDOW, color="0.9", zorder=0, label=f"|delta| < {FIT_WINDOW:g} (fit window)")
    axis.set_xlabel("true inclination [deg]")
    axis.set_ylabel("true - predicted [deg]")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return figure


def _plot_outliers(plt, rows, ensemble):
    """The ``N_OUTLIERS`` images with the largest |true - ensemble mean|, titled with truth, CNN and peer."""
    truth, peer, band_names = rows["truth"], rows["peer"], rows["band_name"]
    worst = np.argsort(-np.abs(truth - ensemble), kind="mergesort")[:N_OUTLIERS]
    columns_n = 4
    n_rows = max(1, math.ceil(len(worst) / columns_n))
    figure, axes = plt.subplots(n_rows, columns_n, figsize=(3 * columns_n, 3.7 * n_rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, index in zip(axes.ravel(), worst):
        test_set, row = rows["images"][index]
        axis.imshow(test_set["images"][row])
        peer_text = f"{peer[index]:.0f}" if np.isfinite(peer[index]) else "n/a"
        axis.set_title(
            f"pgc{rows['pgc'][index]} {band_names[index]}\ntrue {truth[index]:.0f}, CNN {ensemble[index]:.1f}, "
            f"peer {peer_text}",
            fontsize=8,
        )
    figure.suptitle(f"{len(worst)} worst galaxies by |true - ensemble mean|")
    figure.tight_layout()
    return figure


def _plot_binary(plt, metrics, binary_rows):
    """Confusion matrix of the binary ensemble and reliability of P(reject); a note when none was evaluated."""
    figure, (axis, reliability_axis) = plt.subplots(1, 2, figsize=(10, 4.5))
    if binary_rows is None:
        axis.axis("off")
        reliability_axis.axis("off")
        axis.text(0.5, 0.5, "no binary (accept/reject) models\nwere evaluated", ha="center", va="center", fontsize=12)
    else:
        _plot_reliability(reliability_axis, metrics["reject_calibration"])
        counts = metrics["binary"]["ensemble_mean"]["all"]["confusion"]
        matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
        axis.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            axis.text(j, i, str(value), ha="center", va="center", fontsize=14)
        axis.set_xticks([0, 1], ["accept", "reject"])
        axis.set_yticks([0, 1], ["accept", "reject"])
        axis.set_xlabel("predicted (ensemble mean vote)")
        axis.set_ylabel("true")
        axis.set_title("binary confusion matrix")
    figure.tight_layout()
    return figure


def _plot_reliability(axis, calibration):
    """Observed fraction rejected against predicted P(reject), raw and calibrated."""
    for key, label in (
        ("reliability_raw", f"raw (ECE {calibration['ece_raw']:.3f})"),
        ("reliability_calibrated", f"calibrated (ECE {calibration['ece_calibrated']:.3f})"),
    ):
        table = [row for row in calibration[key] if row[2]]
        axis.plot([r[3] for r in table], [r[4] for r in table], "o-", label=label)
    axis.plot([0, 1], [0, 1], "k--", lw=1)
    axis.set_xlabel("predicted P(reject), ensemble mean")
    axis.set_ylabel("observed fraction rejected")
    axis.set_title("reliability (calibrated: 2-fold cross-fit)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)


def _fmt(value, digits=2):
    return "" if value is None else f"{value:.{digits}f}"


def _write_html(path, metrics, names, ensemble_order, view_counts, search=None):
    """The evaluation report: one page of tables (regression, peer, TTA, bins, binary) and the four figures."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>inclinet evaluation</title>",
        "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #aaa;padding:2px 6px;text-align:right}</style></head><body>",
        "<h1>inclinet evaluation</h1>",
        f"<p>{len(names)} regression member(s), {metrics['views']} test-time view(s), seed {metrics['seed']}; "
        f"test images per band: {html.escape(str(metrics['n_test']))}. delta = true - predicted (deg).</p>",
    ]
    parts += _html_regression(metrics["regression"], names + list(ensemble_order) + ["peer"])
    parts += _html_peer(metrics["peer"])
    parts += _html_tta_and_bins(metrics, view_counts)
    parts += _html_binary(metrics)
    for image, caption in (
        ("predicted_vs_true.png", "Predicted vs true"),
        ("residuals.png", "Residuals with the linear bias fit"),
        ("outliers.png", "Outlier gallery"),
        ("confusion.png", "Binary confusion matrix and reliability"),
    ):
        parts.append(f"<h2>{caption}</h2><img src='{image}' alt='{caption}'>")
    if search is not None:
        from inclinet import hpo

        parts.append(hpo.html_section(search))
    parts.append("</body></html>\n")
    atomic_write_text(path, "\n".join(parts))


def _html_regression(regression, columns):
    """RMS and MAE per band, bias, linear fit and corrected RMS of every column (table left open)."""
    bands = list(next(iter(regression.values())).keys())
    parts = ["<h2>RMS / MAE / bias by band</h2><table><tr><th>column</th>"]
    parts += [f"<th>RMS {b}</th><th>MAE {b}</th>" for b in bands]
    parts.append("<th>bias</th><th>m</th><th>b</th><th>RMS corrected</th></tr>")
    for column in columns:
        entry = regression[column]
        cells = "".join(f"<td>{_fmt(entry[b].get('rms'))}</td><td>{_fmt(entry[b].get('mae'))}</td>" for b in bands)
        fit = entry["all"].get("fit", {})
        parts.append(
            f"<tr><th>{html.escape(column)}</th>{cells}<td>{_fmt(entry['all'].get('bias'))}</td>"
            f"<td>{_fmt(fit.get('m'), 4)}</td><td>{_fmt(fit.get('b'))}</td>"
            f"<td>{_fmt(entry['all'].get('rms_corrected'))}</td></tr>"
        )
    return parts


def _html_peer(peer):
    """The classical peer's method, its calibration and the scores of every method (table left open)."""
    parts = [
        f"</table><h2>The classical peer: {html.escape(peer['method'])}</h2>"
        f"<p>{html.escape(peer['calibration'])}.</p><table><tr><th>method</th><th>RMS</th><th>MAE</th>"
        "<th>bias</th><th>N</th></tr>"
    ]
    for method, entry in peer["methods"].items():
        parts.append(
            f"<tr><th>{html.escape(method)}</th><td>{_fmt(entry.get('rms'))}</td>"
            f"<td>{_fmt(entry.get('mae'))}</td><td>{_fmt(entry.get('bias'))}</td><td>{entry.get('n')}</td></tr>"
        )
    return parts


def _html_tta_and_bins(metrics, view_counts):
    """Ensemble-mean scores by number of test-time views, then its residuals by 5-degree bin."""
    parts = [
        "</table><h2>Test-time augmentation (ensemble mean, all bands)</h2><table><tr><th>views</th>"
        "<th>RMS</th><th>MAE</th></tr>"
    ]
    for n_views in view_counts:
        entry = metrics["tta"][str(n_views)]["ensemble_mean"]["all"]
        parts.append(f"<tr><td>{n_views}</td><td>{_fmt(entry['rms'])}</td><td>{_fmt(entry['mae'])}</td></tr>")
    parts.append(
        "</table><h2>Residuals of the ensemble mean by 5-degree bin</h2><table>"
        "<tr><th>bin</th><th>N</th><th>bias</th><th>RMS</th><th>MAE</th></tr>"
    )
    for entry in metrics["regression"]["ensemble_mean"]["all"].get("bins", []):
        parts.append(
            f"<tr><td>{entry['bin']}</td><td>{entry['n']}</td><td>{_fmt(entry['bias'])}</td>"
            f"<td>{_fmt(entry['rms'])}</td><td>{_fmt(entry['mae'])}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _html_binary(metrics):
    """Precision, recall, accuracy and AUC of the binary members and ensembles, and the reject calibration."""
    if not metrics["binary"]:
        return ["<p>No binary models were evaluated.</p>"]
    parts = [
        "<h2>Binary (positive = reject)</h2><table><tr><th>member</th><th>precision</th>"
        "<th>recall</th><th>accuracy</th><th>AUC</th></tr>"
    ]
    for name, entry in metrics["binary"].items():
        entry = entry["all"]
        parts.append(
            f"<tr><th>{html.escape(name)}</th><td>{_fmt(entry['precision'], 3)}</td>"
            f"<td>{_fmt(entry['recall'], 3)}</td><td>{_fmt(entry['accuracy'], 3)}</td>"
            f"<td>{_fmt(entry['auc'], 3)}</td></tr>"
        )
    parts.append("</table>")
    calibration = metrics.get("reject_calibration")
    if calibration:
        rate_raw = calibration["rejection_rate_of_accepted_raw"]
        rate_cal = calibration["rejection_rate_of_accepted_calibrated"]
        parts.append(
            f"<p>Calibration of P(reject) by a temperature per member: expected calibration error "
            f"{_fmt(calibration['ece_raw'], 3)} raw, {_fmt(calibration['ece_calibrated'], 3)} calibrated "
            f"(2-fold cross-fit); accepted galaxies rejected at 50%: {_fmt(rate_raw, 3)} raw, "
            f"{_fmt(rate_cal, 3)} calibrated. Temperatures: "
            + html.escape(", ".join(f"{k} {v:.2f}" for k, v in calibration["temperatures"].items()))
            + ".</p>"
        )
    return parts


def add_arguments(parser):
    parser.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="MODEL.keras",
        help="trained models named Uset_<jjj>_<model>.keras or Binary_<model>.keras",
    )
    parser.add_argument(
        "--members",
        nargs="+",
        default=None,
        metavar="MODEL:SUBSET",
        help="identity of each --models file, in the same order: model4:0 (full set), model4:2 "
        "(subsample 2), model4:binary (the workflow passes them; default: from the file names)",
    )
    parser.add_argument(
        "--test",
        nargs="+",
        required=True,
        metavar="SAMPLE.npz",
        help="test_000 sample of every band (inclination labels)",
    )
    parser.add_argument(
        "--binary-test",
        nargs="+",
        default=[],
        metavar="SAMPLE.npz",
        help="binary_test sample of every band (needed with binary models)",
    )
    parser.add_argument("--output-dir", required=True, help="folder for the evaluation files")
    parser.add_argument("--bundle-dir", required=True, help="folder for the model bundle")
    config.add_argument(parser, "views", help="test-time views: rotations by 90 deg and flips")
    # Not the training batch size: its own dest, so it is never mistaken for that setting.
    parser.add_argument(
        "--batch-size",
        dest="prediction_batch_size",
        type=int,
        default=256,
        metavar="BATCH_SIZE",
        help="images per prediction call (default 256)",
    )
    parser.add_argument(
        "--hpo-summary",
        metavar="SEARCH.json",
        help="summary of the hyper-parameter search (inclinet-hpo select): adds its section to the report",
    )
    add_common_arguments(parser)
    return parser


def _run_args(args):
    run(
        models=args.models,
        test=args.test,
        binary_test=args.binary_test,
        output_dir=args.output_dir,
        bundle_dir=args.bundle_dir,
        views=args.views,
        seed=args.seed,
        batch_size=args.prediction_batch_size,
        members=args.members,
        hpo_summary=args.hpo_summary,
    )


def build_parser():
    return add_arguments(argparse.ArgumentParser(prog="inclinet-evaluate", description=__doc__.splitlines()[0]))


def main(argv=None):
    return run_main(build_parser(), _run_args, argv)


if __name__ == "__main__":
    sys.exit(main())
