"""Where the classical peer's errors come from, on a universe drawn by ``inclinet-synth``.

Measures the adaptive-moment peer (:func:`inclinet.peer.adaptive_q`, PSF-corrected with the
known PSF) on the raw images of accepted galaxies, calibrates it by two-fold cross-fitting
(fitted on one half, applied to the other), and breaks its RMS down by what surrounds the
galaxy (redrawn from the universe's seed with :func:`inclinet.stages.synth.galaxy_params`:
a bright star, a neighbour, a lopsided disk) and by true inclination. Two references:

* the measured axis ratio of nearly edge-on galaxies (true inclination above 75 deg)
  against their true projected axis ratio (``b_a`` of ``truth.csv``);
* an oracle that knows every disk's true projected axis ratio and fits one q0 and a linear
  correction, like the peer: the floor set by the spread of intrinsic thickness alone.

Usage::

    nice python bench/peer_errors.py --raw /tmp/bench_acc/raw --seed 2026 --last 340 \\
        [--band r] [--out results.json]

``--raw`` is a folder written by ``inclinet-synth`` (``truth.csv`` + ``galaxies/``), for
example the ``raw`` folder of ``bench/bench_accuracy.py`` (the peer is cross-fitted here, so
any of its galaxies will do; ``--last 340`` takes as many as its held-out set has).
"""

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from inclinet import naming, peer  # noqa: E402
from inclinet.images import load_image  # noqa: E402
from inclinet.stages import synth  # noqa: E402

INCLINATION_BINS = ((45, 60), (60, 75), (75, 90.01))


def _rms(values):
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(np.sqrt(np.mean(values**2))) if len(values) else math.nan


def cross_fitted(q, truth):
    """Inclinations of ``q`` calibrated two-fold: each half by the fit on the other half."""
    half = np.arange(len(q)) % 2 == 0
    first, second = peer.fit_method(q[half], truth[half]), peer.fit_method(q[~half], truth[~half])
    return np.where(half, second.inclination(q), first.inclination(q))


def measure(raw, seed, band, last):
    with open(raw / synth.TRUTH_FILE, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["label"] == "A"]
    rows = rows[-last:] if last else rows
    records = []
    for row in rows:
        pgc = int(row["pgc"])
        params = synth.galaxy_params(int(row["index"]), seed)
        image = load_image(raw / "galaxies" / naming.raw_image_names(pgc, band)[0])
        psf = peer.psf_fwhm_pixels(
            float(row["psf_fwhm"]), float(row["d25"]), image.shape[0], fov_arcsec=float(row["fov_arcsec"])
        )
        records.append(
            {
                "pgc": pgc,
                "truth": float(row["true_inc"]),
                "b_a": float(row["b_a"]),
                "q": peer.adaptive_q(image, psf_fwhm_pixels=psf),
                "bright_star": any(star.get("flux", 0.0) >= 300.0 for star in params.stars),
                "neighbour": bool(params.neighbour),
                "lopsided": bool(params.lopsided),
            }
        )
    return records


def summarise(records):
    truth = np.array([r["truth"] for r in records])
    q = np.array([r["q"] for r in records])
    error = cross_fitted(q, truth) - truth
    flags = {k: np.array([r[k] for r in records]) for k in ("bright_star", "neighbour", "lopsided")}
    result = {"n": len(records), "rms": _rms(error), "groups": {}, "inclination": {}}
    for name, flag in flags.items():
        result["groups"][name] = {
            "with": {"n": int(flag.sum()), "rms": _rms(error[flag])},
            "without": {"n": int((~flag).sum()), "rms": _rms(error[~flag])},
        }
    clean = ~flags["bright_star"] & ~flags["neighbour"]
    result["groups"]["no star, no neighbour"] = {"n": int(clean.sum()), "rms": _rms(error[clean])}
    for low, high in INCLINATION_BINS:
        inside = (truth >= low) & (truth < high)
        result["inclination"][f"{low}-{int(high)}"] = {"n": int(inside.sum()), "rms": _rms(error[inside])}
    b_a = np.array([r["b_a"] for r in records])
    edge_on = (truth > 75) & np.isfinite(q)
    result["edge_on"] = {
        "n": int(edge_on.sum()),
        "median_q_over_true_b_a": float(np.median(q[edge_on] / b_a[edge_on])),
        "correlation": float(np.corrcoef(q[edge_on], b_a[edge_on])[0, 1]),
    }
    result["oracle_rms"] = _rms(cross_fitted(b_a, truth) - truth)
    return result


def markdown(result):
    lines = [
        f"Adaptive-moment peer, cross-fitted, {result['n']} accepted galaxies: RMS {result['rms']:.2f} deg.",
        "",
        "| galaxies | N | RMS (deg) |",
        "|---|---|---|",
    ]
    for name, entry in result["groups"].items():
        if "with" in entry:
            for side in ("with", "without"):
                lines.append(f"| {side} {name.replace('_', ' ')} | {entry[side]['n']} | {entry[side]['rms']:.2f} |")
        else:
            lines.append(f"| {name} | {entry['n']} | {entry['rms']:.2f} |")
    for name, entry in result["inclination"].items():
        lines.append(f"| true inclination {name} | {entry['n']} | {entry['rms']:.2f} |")
    edge = result["edge_on"]
    lines += [
        "",
        f"Edge-on (> 75 deg, {edge['n']}): measured q / true projected b/a median "
        f"{edge['median_q_over_true_b_a']:.2f}, "
        f"correlation {edge['correlation']:.2f}. Oracle (true b/a, fitted q0): RMS {result['oracle_rms']:.2f} deg.",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", type=Path, required=True, help="folder written by inclinet-synth")
    parser.add_argument("--seed", type=int, required=True, help="the seed that universe was drawn with")
    parser.add_argument("--band", default="r", choices=("g", "r", "i"))
    parser.add_argument("--last", type=int, default=0, help="only the last N accepted galaxies (0: all)")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    if not (args.raw / synth.TRUTH_FILE).is_file():
        parser.error(f"--raw {args.raw}: no {synth.TRUTH_FILE} there; give a folder written by inclinet-synth")
    result = summarise(measure(args.raw, args.seed, args.band, args.last))
    print(markdown(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
