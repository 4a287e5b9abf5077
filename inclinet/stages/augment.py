"""Augment one training subset into shuffled, balanced npz batches written one at a time.

Regression: nine 5-degree inclination bins ([45, 50], (50, 55], ..., (85, 90]), each
filled in every batch with ``per_bin`` colour and ``per_bin`` grayscale images (the gray
band g, r or i drawn with equal probability). Binary: the same with the two classes accept
(0) and reject (1) in place of the bins. Each image is turned by a random multiple of 90
degrees and flipped, nothing resampled (``--regression-views dihedral`` and
``--binary-views dihedral``, the defaults: the canonical images as evaluation and predict see
them), or with ``chain`` sent through the augmentation chain and the canonical
normalisation again. Galaxies of
a bin are used in turn (a fresh permutation each pass), so all are used about equally.
Each batch is seeded by ``derive_seed(seed, subset, batch)``: batches are independent and
memory holds one batch, whatever the number of galaxies or batches.
"""

import argparse
import contextlib
import logging
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from inclinet import config, naming
from inclinet._helpers import rng_for
from inclinet.augmentation import augment_batch, dihedral_views
from inclinet.cli import add_common_arguments, run_main
from inclinet.errors import InputError, invalid
from inclinet.io import check_outputs
from inclinet.npzstream import NpzRows, NpzWriter, read_band_file
from inclinet.report import SkipReport

logger = logging.getLogger(__name__)

BIN_EDGES = tuple(range(45, 95, 5))  # 45, 50, ..., 90: nine bins
N_BINS = len(BIN_EDGES) - 1
BINARY_CLASSES = (0, 1)
#: How the binary task's images are varied (``--binary-views``); the first is the default.
BINARY_VIEWS = ("dihedral", "chain")
#: How the regression task's images are varied (``--regression-views``; default :mod:`inclinet.config`'s).
REGRESSION_VIEWS = config.setting("regression_views").choices


def inclination_bin(inclination):
    """Bin index 0..8 of an inclination in [45, 90]: [45, 50] -> 0, (50, 55] -> 1, ..., (85, 90] -> 8."""
    inclination = np.asarray(inclination)
    index = np.ceil((inclination - 45) / 5.0).astype(np.int64) - 1
    return np.clip(index, 0, N_BINS - 1)


def _group_keys(task):
    return list(range(N_BINS)) if task == "regression" else list(BINARY_CLASSES)


def _group_of(task, labels):
    if task == "regression":
        valid = (labels >= BIN_EDGES[0]) & (labels <= BIN_EDGES[-1])
        return np.where(valid, inclination_bin(np.clip(labels, 45, 90)), -1), valid
    valid = np.isin(labels, BINARY_CLASSES)
    return np.where(valid, labels, -1), valid


def subset_name(inputs, output_dir):
    """The subset a job augments (``Uset_001``, ``Binary``), read from the sample file names."""
    for path in inputs:
        name = Path(path).name
        match = re.search(r"_train_(\d+)\.npz$", name)
        if match:
            return naming.uset(int(match.group(1)))
        if name.endswith("_binary_train.npz"):
            return naming.uset("binary")
    return Path(output_dir).name.removesuffix("_npz")


def _balanced_draw(rows, count, rng):
    """``count`` items of ``rows``, cycling through fresh permutations so each is used about equally."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    passes = math.ceil(count / len(rows))
    return np.concatenate([rng.permutation(rows) for _ in range(passes)])[:count]


def _read_sample(path, size, task, skips):
    band, labels, pgcs, _ = read_band_file(path, size, hint="re-run the earlier stages at this size")
    groups, valid = _group_of(task, labels)
    allowed = "45..90" if task == "regression" else "0 or 1"
    for pgc, label in zip(pgcs[~valid].tolist(), labels[~valid].tolist()):
        skips.skip(pgc, f"label {label} out of range for the {task} task ({allowed})", band=band, file=path)
    return {"path": Path(path), "band": band, "labels": labels, "pgcs": pgcs, "groups": groups}


def plan_batch(pools, task, per_bin, rng):
    """Choose the rows of one batch: a list of ``(band, row)``.

    ``pools`` maps group key -> {"c": rows of the colour band, gray band -> rows}. Every
    active group contributes ``per_bin`` colour and ``per_bin`` gray entries; the gray band
    of each gray entry is drawn uniformly from the bands that have galaxies in the group.
    """
    entries = []
    for key in _group_keys(task):
        pool = pools.get(key)
        if pool is None:
            continue
        entries += [("gri", int(row)) for row in _balanced_draw(pool["c"], per_bin, rng)]
        gray_bands = sorted(band for band in pool if band != "c")
        choice = rng.integers(0, len(gray_bands), size=per_bin)
        for band_index, band in enumerate(gray_bands):
            count = int((choice == band_index).sum())
            entries += [(band, int(row)) for row in _balanced_draw(pool[band], count, rng)]
    return entries


def run(
    *,
    inputs,
    output_dir,
    size,
    task="regression",
    n_batches=config.DEFAULTS.n_batches,
    per_bin=config.DEFAULTS.per_bin,
    seed=config.DEFAULTS.seed,
    subset=None,
    report=None,
    scratch_dir=None,
    aug_scale=config.DEFAULTS.aug_scale,
    aug_noise=config.DEFAULTS.aug_noise,
    hpo_params=None,
    binary_views="dihedral",
    regression_views=config.DEFAULTS.regression_views,
):
    """Write ``n_batches`` augmented batches of one subset into ``output_dir``; returns a summary dict.

    ``inputs``: the subset's sample file of every band (the colour band ``gri`` and at
    least one of g, r, i). Rows with labels outside the task's range are recorded in the
    report (default ``<output_dir>.report.csv``), as are galaxies missing from some band.
    ``aug_scale`` and ``aug_noise`` scale the chains' scale range and noise level
    (:func:`inclinet.hpo.chain_parameters`); ``hpo_params``, the best-parameters file of a
    hyper-parameter search, replaces both with the search's values. ``binary_views``: how the
    binary task's images are varied, ``dihedral`` (the default: a random turn by a multiple
    of 90 degrees and flip, no resampling, so the reject member trains on canonical images
    as it is later shown them) or ``chain`` (the regression's chains and re-normalisation).
    ``regression_views``: the same choice for the regression task (default: the setting's).
    """
    from inclinet import hpo

    start = time.perf_counter()
    _check_arguments(inputs, size, task, n_batches, per_bin)
    if hpo_params is not None:
        aug_scale, aug_noise = hpo.augmentation_params(hpo_params)
    chains = hpo.chain_parameters(config.check("aug_scale", aug_scale), config.check("aug_noise", aug_noise))
    if binary_views not in BINARY_VIEWS:
        raise invalid("binary views", binary_views, " or ".join(BINARY_VIEWS))
    config.check("regression_views", regression_views)
    if (binary_views if task == "binary" else regression_views) == "dihedral":
        chains = None  # dihedral views, see _write_batch
    output_dir = Path(output_dir)
    subset = subset or subset_name(inputs, output_dir)
    report_path = Path(report) if report else Path(naming.report_for(output_dir))
    skips = SkipReport("augment")

    samples = _read_samples(inputs, size, task, skips)
    _report_missing_rows(samples, skips)
    pools, empty_groups = _pools(samples, task, inputs)
    if empty_groups:
        names = [_group_label(task, key) for key in empty_groups]
        logger.warning(
            "augment %s: no colour or no gray galaxies in %s; those groups are left out of the batches",
            subset,
            ", ".join(names),
        )

    outputs = _write_batches(
        output_dir,
        Path(scratch_dir) if scratch_dir else output_dir,
        samples,
        pools,
        task,
        n_batches,
        per_bin,
        seed,
        subset,
        size,
        chains,
    )
    skips.write(report_path)
    check_outputs(outputs + [report_path])
    per_batch = 2 * per_bin * len(pools)
    summary = {
        "subset": subset,
        "task": task,
        "batches": n_batches,
        "images_per_batch": per_batch,
        "groups": len(pools),
        "empty_groups": [_group_label(task, k) for k in empty_groups],
        "skipped": len(skips),
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 2),
    }
    logger.info(
        "augment %s (%s): %d batch(es) of %d images (%d groups), %d report row(s), seed %d, %.1f s -> %s",
        subset,
        task,
        n_batches,
        per_batch,
        len(pools),
        len(skips),
        seed,
        summary["seconds"],
        output_dir,
    )
    return summary


def _check_arguments(inputs, size, task, n_batches, per_bin):
    if task not in naming.TASKS:
        raise invalid("--task", task, "one of " + ", ".join(naming.TASKS))
    if n_batches < 1:
        raise invalid("--n-batches", n_batches, "a positive integer")
    if per_bin < 1:
        raise invalid("--per-bin", per_bin, "a positive integer")
    if size < 1:
        raise invalid("--size", size, "a positive number of pixels")
    if not inputs:
        raise invalid("--input", [], "the subset's sample file of every band")


def _read_samples(inputs, size, task, skips):
    """The sample of every band (band -> :func:`_read_sample` dict), checked: one file per band,
    the colour band and at least one gray band, usable galaxies in each."""
    samples = {}
    for path in inputs:
        sample = _read_sample(path, size, task, skips)
        if sample["band"] in samples:
            raise InputError(
                f"band {sample['band']} given twice ({samples[sample['band']]['path']} and {path}); "
                "give one sample file per band"
            )
        samples[sample["band"]] = sample
    if "gri" not in samples or not any(band in samples for band in naming.GRAY_BANDS):
        raise InputError(
            f"augment needs the colour (gri/RGB) sample and at least one of g, r, i; got bands "
            f"{', '.join(sorted(samples)) or 'none'} from {', '.join(map(str, inputs))}"
        )
    for band, sample in samples.items():
        if not (sample["groups"] >= 0).any():
            raise InputError(
                f"{sample['path']}: no usable galaxies for the {task} task in band {band}; "
                "check the split report (is this the right subset/task?)"
            )
    return samples


def _report_missing_rows(samples, skips):
    """Record every galaxy that some band's sample lacks (it is used from the other bands)."""
    union = set().union(*(set(s["pgcs"].tolist()) for s in samples.values()))
    for band, sample in samples.items():
        for pgc in sorted(union - set(sample["pgcs"].tolist())):
            skips.skip(
                pgc, "missing from this band's sample; used from the other bands only", band=band, file=sample["path"]
            )


def _pools(samples, task, inputs):
    """Rows per group and band (see :func:`plan_batch`) and the groups left out (no colour or no gray rows)."""
    gray_bands = [band for band in naming.GRAY_BANDS if band in samples]
    pools, empty_groups = {}, []
    for key in _group_keys(task):
        pool = {"c": np.flatnonzero(samples["gri"]["groups"] == key)}
        for band in gray_bands:
            rows = np.flatnonzero(samples[band]["groups"] == key)
            if len(rows):
                pool[band] = rows
        if len(pool["c"]) and len(pool) > 1:
            pools[key] = pool
        else:
            empty_groups.append(key)
    if not pools:
        raise InputError(f"no {task} group has both colour and grayscale galaxies in {', '.join(map(str, inputs))}")
    return pools, empty_groups


def _write_batches(output_dir, scratch, samples, pools, task, n_batches, per_bin, seed, subset, size, chains):
    """Write the batches one at a time (rows read through a scratch copy of each sample); returns their paths."""
    scratch.mkdir(parents=True, exist_ok=True)
    outputs = []
    with contextlib.ExitStack() as stack:
        readers = {
            band: stack.enter_context(NpzRows(sample["path"], scratch_dir=scratch)) for band, sample in samples.items()
        }
        for batch in range(1, n_batches + 1):
            path = output_dir / Path(naming.augmented_batch(size, 0, batch)).name
            _write_batch(path, batch, samples, readers, pools, task, per_bin, seed, subset, size, chains)
            outputs.append(path)
            logger.debug("augment %s: batch %d/%d written", subset, batch, n_batches)
    return outputs


def _group_label(task, key):
    if task == "regression":
        low, high = BIN_EDGES[key], BIN_EDGES[key + 1]
        return f"[{low}, {high}]" if key == 0 else f"({low}, {high}]"
    return "reject" if key == 1 else "accept"


def _write_batch(path, batch, samples, readers, pools, task, per_bin, seed, subset, size, chains):
    rng = rng_for(seed, subset, batch)
    entries = plan_batch(pools, task, per_bin, rng)
    # Shuffle the plan, not the images: the batch is built in its final order (no copy).
    order = rng.permutation(len(entries))
    entries = [entries[i] for i in order]
    images = np.empty((len(entries), size, size, 3), dtype=np.uint8)
    by_band = {}
    for position, (band, row) in enumerate(entries):
        by_band.setdefault(band, []).append((row, position))
    for band, pairs in by_band.items():
        pairs.sort()
        rows = readers[band].read([row for row, _ in pairs])
        images[[position for _, position in pairs]] = rows
    labels = np.array([samples[band]["labels"][row] for band, row in entries], dtype=np.int32)
    pgcs = np.array([samples[band]["pgcs"][row] for band, row in entries], dtype=np.int32)
    filters = np.array([naming.filter_code(band) for band, _ in entries], dtype="S1")
    if chains is None:
        dihedral_views(images, rng, out=images)
    else:
        augment_batch(images, filters, rng, colour_params=chains[0], gray_params=chains[1], out=images)
    with NpzWriter(path, (size, size, 3), n_rows=len(entries)) as writer:
        writer.append(images)
        writer.set(labels=labels, pgcIDs=pgcs, filter=filters)


def add_arguments(parser):
    parser.add_argument(
        "-i",
        "--input",
        nargs="+",
        required=True,
        metavar="SAMPLE.npz",
        help="the subset's sample file of every band (samples/<TAG>_<S>x<S>_train_<jjj>.npz)",
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUT_DIR", help="folder of the batches (augmented/Uset_<jjj>_npz)"
    )
    config.add_argument(parser, "size", "-s", required=True, help="image size in pixels (checked)")
    parser.add_argument("--task", choices=naming.TASKS, default="regression", help="regression (default) or binary")
    config.add_argument(parser, "n_batches", "-b", help="number of batches")
    config.add_argument(
        parser, "per_bin", "-z", help="colour images per bin (per class for binary) per batch; as many gray"
    )
    parser.add_argument(
        "--subset",
        default=None,
        help="subset name used in the batch seeds, e.g. Uset_001 or Binary (the workflow passes it; "
        "default: read from the input names)",
    )
    parser.add_argument("--report", default=None, help="skip report CSV (default: OUT_DIR.report.csv)")
    config.add_argument(parser, "aug_scale")
    config.add_argument(parser, "aug_noise")
    parser.add_argument(
        "--binary-views",
        choices=BINARY_VIEWS,
        default=BINARY_VIEWS[0],
        help="binary task: 'dihedral' (default) turns each image by a random multiple of 90 degrees and "
        "flips it, without resampling (canonical images stay canonical); 'chain' uses the regression's "
        "augmentation chains and re-normalisation, whose smoothing made the reject member reject sharper "
        "canonical images",
    )
    config.add_argument(parser, "regression_views")
    parser.add_argument(
        "--hpo-params",
        metavar="BEST.json",
        help="best parameters of a hyper-parameter search (inclinet-hpo select): its augmentation "
        "scale and noise replace --aug-scale and --aug-noise",
    )
    add_common_arguments(parser)
    return parser


def build_parser():
    return add_arguments(
        argparse.ArgumentParser(
            prog="inclinet-augment", description="Augment one training subset into balanced, shuffled npz batches."
        )
    )


def main(argv=None):
    parser = build_parser()

    def _run(args):
        run(
            inputs=args.input,
            output_dir=args.output,
            size=args.size,
            task=args.task,
            n_batches=args.n_batches,
            per_bin=args.per_bin,
            seed=args.seed,
            subset=args.subset,
            report=args.report,
            aug_scale=args.aug_scale,
            aug_noise=args.aug_noise,
            hpo_params=args.hpo_params,
            binary_views=args.binary_views,
            regression_views=args.regression_views,
        )

    return run_main(parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
