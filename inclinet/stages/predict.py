"""inclinet-predict: inclinations and rejection likelihoods of galaxy images from a model bundle.

Prints one JSON object per image, as the original web API's ``/api/file`` answer::

    {"status": "success", "filename": ...,
     "inclinations": {"Group_0": {"model4": 72.0, "model41": ...}, "Group_1": {...}, "Group_2": {...},
                      "summary": {"mean": ..., "median": ..., "stdev": ...}},
     "rejection_likelihood": {"model4-binary": 12.3, ..., "summary": {...}}}

Regression values are degrees rounded to integers (half to even, as ``np.round``), the
binary values are P(reject) in percent to 0.01 (float32 outputs can differ in their last
place with the batch they ran in; rounding keeps answers independent of it), after the
member's calibration temperature from evaluation (:mod:`inclinet.reliability`); ``stdev`` is
the population standard deviation. Groups (and ``rejection_likelihood``) appear only for members in the bundle.
Beyond the original's keys every answer carries ``member_spread`` (standard deviation of the
regression members, deg), ``peer`` (``{"method", "inclination"}``: the bundle's calibrated
classical axial-ratio measurement of the same normalised image), ``out_of_distribution``
(bool) and ``warnings`` (why the image looks unlike the training data: see
:func:`inclinet.reliability.warnings_for`); each warning is also logged.
Images may be PNG, JPEG or GIF, gray or colour, of any size and either polarity: they go
through the same canonical normalisation as the training data
(:func:`inclinet.normalise.normalise_image`) at the bundle's input size. A file that cannot be read gets
``{"status": "failed", "filename": ..., "message": ...}`` while the others are still
predicted, and the command exits 2 at the end.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from inclinet import reliability

# Bundle and summary are re-exported: inclinet.stages.predict.Bundle is where callers used to find them.
from inclinet.bundle import Bundle, summary  # noqa: F401
from inclinet.cli import add_common_arguments, run_main
from inclinet.errors import ConfigError, InputError
from inclinet.io import atomic_write_text
from inclinet.normalise import image_statistics, load_normalised, normalise_image

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif")
CHUNK = 256


def collect_inputs(inputs=(), *, catalog=None, data_path=None):
    """Expand images and folders (PNG/JPEG/GIF files, sorted) and catalog galaxies -> [(path, extra)]."""
    items = []
    for entry in inputs:
        entry = Path(entry)
        # A directory named like an image is a mistake, not a folder to expand: it is
        # passed on as an input, fails to load ("is a directory") and is counted as failed.
        if entry.is_dir() and entry.suffix.lower() not in IMAGE_SUFFIXES:
            # Anything named like an image is taken (a FIFO or a directory among them then
            # fails with its reason) rather than skipped silently.
            files = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                logger.warning("%s: no PNG/JPEG/GIF files in this folder", entry)
            items.extend((p, {}) for p in files)
        else:
            items.append((entry, {}))
    if catalog is not None:
        from inclinet.catalog import find_raw_image, read_catalog

        if data_path is None:
            raise ConfigError("invalid --data-path: None; must be the folder of the catalog's images with --catalog")
        for galaxy in read_catalog(catalog):
            found = find_raw_image(data_path, galaxy.pgc, "gri")
            items.append((found, {"pgc": int(galaxy.pgc)}) if found else (None, {"pgc": int(galaxy.pgc)}))
    return items


def run(*, bundle, inputs=(), catalog=None, data_path=None, output=None, stream=None):
    """Predict every input; write JSON lines to ``output`` (or ``stream``); return the answers.

    Each answer is a dict with ``status`` ``success`` or ``failed``; failed inputs do not
    stop the others.
    """
    start = time.perf_counter()
    loaded = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    items = collect_inputs(inputs, catalog=catalog, data_path=data_path)
    if not items:
        raise ConfigError("invalid inputs: nothing to predict; must give images, folders or --catalog/--data-path")
    answers = [None] * len(items)
    pending = []
    for index, (path, extra) in enumerate(items):
        if path is None:
            answers[index] = {
                "status": "failed",
                "filename": None,
                **extra,
                "message": f"no colour image of pgc {extra['pgc']} under {data_path}",
            }
            continue
        try:
            image, info = load_normalised(path, loaded.input_size, with_info=True)
        except InputError as exc:
            answers[index] = {"status": "failed", "filename": str(path), **extra, "message": str(exc)}
            logger.warning("%s", exc)
            continue
        pending.append((index, image, info.as_dict()))
        if len(pending) == CHUNK:
            _predict_chunk(loaded, pending, items, answers)
            pending = []
    if pending:
        _predict_chunk(loaded, pending, items, answers)
    lines = "".join(json.dumps(answer) + "\n" for answer in answers)
    if output is not None:
        atomic_write_text(output, lines)
    else:
        (stream or sys.stdout).write(lines)
    failed = sum(answer["status"] != "success" for answer in answers)
    logger.info(
        "predict: %d image(s), %d predicted, %d failed, %d member(s), %d view(s), %.1f s",
        len(answers),
        len(answers) - failed,
        failed,
        len(loaded.members),
        loaded.views,
        time.perf_counter() - start,
    )
    return answers


def predict_images(bundle, images, *, names=None):
    """Answers for images already in memory, in order: the in-memory twin of :func:`run`.

    ``images`` are ``uint8 (H, W, 3)`` arrays of any size (as :func:`inclinet.images.load_image`
    returns them); each goes through the same canonical normalisation, members, peer and
    out-of-distribution checks as a file given to ``inclinet-predict``, and ``names`` (one per
    image) become the answers' ``filename``. An image the normaliser refuses gets a
    ``failed`` answer naming why; the others are still predicted. ``inclinet-serve`` calls this.
    """
    loaded = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    names = list(names) if names is not None else [f"image {index}" for index in range(len(images))]
    if len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images")
    items = [(name, {}) for name in names]
    answers = [None] * len(images)
    pending = []
    for index, image in enumerate(images):
        try:
            normalised, info = normalise_image(image, loaded.input_size, with_info=True)
        except ValueError as exc:
            answers[index] = {"status": "failed", "filename": names[index], "message": f"{names[index]}: {exc}"}
            continue
        pending.append((index, normalised, info.as_dict()))
    for start in range(0, len(pending), CHUNK):
        _predict_chunk(loaded, pending[start : start + CHUNK], items, answers)
    return answers


def answer_images(bundle, images, infos, *, names=None, log_warnings=True):
    """Answers (``status`` success, prediction, ``out_of_distribution``, ``warnings``) for normalised images.

    ``images`` are ``uint8 (N, S, S, 3)`` at the bundle's input size, as
    :func:`inclinet.normalise.load_normalised` returns them; ``infos`` their normalisation
    records (``NormalisationInfo.as_dict()``); ``names`` only label the logged warnings
    (``log_warnings=False``: not logged, the caller summarises them).
    The core of :func:`run` and :func:`predict_images`, and what the survey workflow's
    ``inclinet-measure`` calls per batch.
    """
    loaded = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    images = np.asarray(images)
    predictions = loaded.predict(images)
    statistics = image_statistics(images)
    reference = loaded.manifest.get("out_of_distribution")
    answers = []
    for index, (info, prediction, row) in enumerate(zip(infos, predictions, statistics)):
        warnings = reliability.warnings_for(info, row, prediction["member_spread"], reference)
        for warning in warnings if log_warnings else ():
            logger.warning(
                "%s: out of the training distribution: %s",
                names[index] if names is not None else f"image {index}",
                warning,
            )
        answers.append({"status": "success", **prediction, "out_of_distribution": bool(warnings), "warnings": warnings})
    return answers


def _predict_chunk(loaded, pending, items, answers):
    images = np.stack([image for _, image, _ in pending])
    names = [items[index][0] for index, _, _ in pending]
    results = answer_images(loaded, images, [info for _, _, info in pending], names=names)
    for (index, _, _), result in zip(pending, results):
        path, extra = items[index]
        answers[index] = {"status": "success", "filename": str(path), **extra, **result}


def add_arguments(parser):
    parser.add_argument("inputs", nargs="*", metavar="IMAGE|FOLDER", help="image files or folders of them")
    parser.add_argument("--bundle", required=True, metavar="DIR", help="model bundle (manifest.json + members)")
    parser.add_argument("--catalog", metavar="C", help="predict the colour images of this catalog's galaxies")
    parser.add_argument("--data-path", metavar="D", help="folder of the catalog's raw images")
    parser.add_argument("--output", metavar="FILE.jsonl", help="write the JSON lines here instead of stdout")
    add_common_arguments(parser, seed=False)
    return parser


def _run_args(args):
    if args.catalog is None and args.data_path is not None:
        raise ConfigError("invalid --data-path: given without --catalog; must come with --catalog")
    answers = run(
        bundle=args.bundle, inputs=args.inputs, catalog=args.catalog, data_path=args.data_path, output=args.output
    )
    failed = [a for a in answers if a["status"] != "success"]
    if failed:
        raise InputError(
            f"{len(failed)} of {len(answers)} input(s) could not be predicted (first: {failed[0]['message']})"
        )


def build_parser():
    return add_arguments(argparse.ArgumentParser(prog="inclinet-predict", description=__doc__.splitlines()[0]))


def main(argv=None):
    parser = build_parser()
    return run_main(parser, _run_args, argv)


if __name__ == "__main__":
    sys.exit(main())
