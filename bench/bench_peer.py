"""Accuracy and speed of the classical peer methods on a synthetic universe, per band and size.

Renders a universe (``inclinet-synth``; reused when present), takes every accepted galaxy
(``inc_flg`` 0) as the raw file and as the workflow's prep makes it (the canonical
normalisation to ``--small`` px, :func:`inclinet.stages.prep.prepare`), measures the axis
ratio with every method of :mod:`inclinet.peer` and scores the peer inclination against
``truth.csv``:

* with q0 fixed at 0.2 (no fitting at all), and
* calibrated (q0 and a linear correction per method, :func:`inclinet.peer.fit_peer`) by
  two-fold cross-fitting: fitted on one half of the galaxies, applied to the other, and
  the other way round, so no galaxy is scored by a calibration that saw it.

The ``peer`` row is the method :func:`inclinet.peer.fit_peer` picks on the fitting half
(named in the table). ``adaptive (no PSF)`` is the adaptive method without PSF correction.
Speeds are single-core images per second (the shared preparation counted in each method
that needs it).

Usage::

    nice python bench/bench_peer.py --work /tmp/bench_peer -n 400 --seed 11 \\
        [--raw-size 256] [--small 64] [--markdown BENCHMARKS.md]

Prints a Markdown section and writes ``results.json`` in the work folder; with
``--markdown`` the section "## Classical peer" of that file is replaced (or appended).
"""

import argparse
import csv
import json
import os
import shlex
import sys
import time
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from inclinet import naming, peer  # noqa: E402

SECTION = "## Classical peer"
ROWS = peer.METHODS + ("adaptive (no PSF)",)


def render(work, n_galaxies, raw_size, seed):
    """The universe's folder, rendered with the synth stage unless already there."""
    from inclinet.stages import synth

    raw = work / "raw"
    if not (raw / ".rendered").exists():
        synth.run(n_galaxies=n_galaxies, output=raw, size=raw_size, seed=seed)
        (raw / ".rendered").write_text("ok\n")
    return raw


def accepted_galaxies(raw):
    """Truth rows of the catalog's accepted galaxies (``inc_flg`` 0), in catalog order."""
    from inclinet.catalog import read_catalog

    truth = {int(row["pgc"]): row for row in csv.DictReader(open(raw / "truth.csv", newline=""))}
    return [truth[g.pgc] for g in read_catalog(raw / "catalog.csv") if g.inc_flg == 0]


def load_band(raw, galaxies, band, size, raw_size):
    """Images of one band and the zoom of each relative to a plain resize of the frame.

    At ``raw_size`` the raw files as they are (what a classical measurement sees on the
    original data); at another size the workflow's prep output, the canonical
    normalisation (:func:`inclinet.normalise.normalise_image`, as
    :func:`inclinet.stages.prep.prepare` calls it), whose zoom sets the PSF in pixels.
    """
    from inclinet.images import load_image
    from inclinet.normalise import normalise_image

    images, zooms = [], []
    for galaxy in galaxies:
        image = load_image(raw / naming.raw_image(int(galaxy["pgc"]), band))
        if size == raw_size:
            images.append(image)
            zooms.append(1.0)
        else:
            image, info = normalise_image(image, size, with_info=True)
            images.append(image)
            zooms.append(info.zoom)
    return np.stack(images), np.array(zooms)


def halves(n, seed):
    """Boolean mask of half A of ``n`` galaxies (a seeded random half)."""
    order = np.random.default_rng(seed).permutation(n)
    mask = np.zeros(n, dtype=bool)
    mask[order[: n // 2]] = True
    return mask


def cross_fit(measurements, truth, half_a):
    """Inclinations calibrated on the other half, per method and for the chosen peer."""
    predicted = {method: np.full(len(truth), np.nan) for method in measurements}
    predicted["peer"] = np.full(len(truth), np.nan)
    chosen, q0 = [], {method: [] for method in measurements}
    for fit_on in (half_a, ~half_a):
        apply_to = ~fit_on
        calibration = peer.fit_peer({m: q[fit_on] for m, q in measurements.items()}, truth[fit_on])
        values = calibration.apply({m: q[apply_to] for m, q in measurements.items()})
        for method, inclinations in values.items():
            predicted[method][apply_to] = inclinations
            q0[method].append(calibration.methods[method].q0)
        predicted["peer"][apply_to] = values[calibration.best]
        chosen.append(calibration.best)
    return predicted, chosen, q0


def run_band(raw, galaxies, band, size, raw_size, half_a, psf_arcsec, d25, fov):
    images, zooms = load_band(raw, galaxies, band, size, raw_size)
    truth = np.array([float(g["true_inc"]) for g in galaxies])
    psf = peer.psf_fwhm_pixels(psf_arcsec, d25, raw_size, size, fov_arcsec=fov) * zooms
    timings = {}
    measurements = peer.measure(images, psf_fwhm_pixels=psf, timings=timings)
    start = time.perf_counter()
    measurements["adaptive (no PSF)"] = peer.measure(images, methods=("adaptive",))["adaptive"]
    no_psf_seconds = time.perf_counter() - start
    n = len(images)
    speed = {
        "moments": n / timings["moments"],
        "adaptive": n / (timings["prepare"] + timings["adaptive"]),
        "isophote": n / (timings["prepare"] + timings["isophote"]),
        "adaptive (no PSF)": n / no_psf_seconds,
    }
    fixed = {m: peer.scores(peer.peer_inclination(q, peer.DEFAULT_Q0), truth) for m, q in measurements.items()}
    predicted, chosen, q0 = cross_fit(measurements, truth, half_a)
    fitted = {m: peer.scores(v, truth) for m, v in predicted.items()}
    fixed_name, fixed_values = peer.best_peer({m: measurements[m] for m in peer.METHODS}, truth)
    return {
        "band": band,
        "size": size,
        "n": n,
        "speed": speed,
        "fixed": fixed,
        "fitted": fitted,
        "chosen": chosen,
        "q0": q0,
        "fixed_best": fixed_name,
        "psf_fwhm_pixels_median": float(np.median(psf)),
    }


def _fmt(score):
    return f"{score['rms']:.2f} | {score['bias']:+.2f} | {score['mae']:.2f}"


def markdown(results, command):
    args = results["args"]
    lines = [
        SECTION,
        "",
        f"Peer inclinations (`inclinet/peer.py`) against `truth.csv` for the {results['n_accepted']} accepted "
        f"galaxies (`inc_flg` 0) of a {args['n']}-galaxy universe rendered at {args['raw_size']} px "
        f"(seed {args['seed']}), measured on the raw files and on the workflow's prep output (canonical "
        f"normalisation to {args['small']} px: bright on dark, re-centred, zoomed to a fixed galaxy size, "
        "restretched). "
        "*q0 = 0.2*: the formula with q0 fixed, no fitting. *fitted*: q0 and a linear correction per method, "
        "two-fold cross-fitted (fitted on one random half, scored on the other, and back), so no galaxy is "
        "scored by a calibration that saw it. *peer*: the method `fit_peer` picks on the fitting half "
        "(named per fold). PSF correction uses the truth's PSF FWHM. Degrees; bias is predicted - true.",
        "",
        "```",
        command,
        "```",
        "",
    ]
    for size in (args["raw_size"], args["small"]):
        title = f"raw {size} px files" if size == args["raw_size"] else f"prep output, {size} px"
        lines += [
            f"**{title}**",
            "",
            "| band | method | RMS (q0 = 0.2) | bias | MAE | RMS (fitted) | bias | MAE | q0 fitted | img/s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for entry in results["bands"]:
            if entry["size"] != size:
                continue
            for method in ROWS:
                q0 = "/".join(f"{v:.2f}" for v in entry["q0"][method])
                coverage = entry["fixed"][method]["coverage"]
                note = "" if coverage >= 0.999 else f" ({coverage:.0%} measured)"
                lines.append(
                    f"| {entry['band']} | {method}{note} | {_fmt(entry['fixed'][method])} | "
                    f"{_fmt(entry['fitted'][method])} | {q0} | {entry['speed'][method]:.0f} |"
                )
            lines.append(
                f"| {entry['band']} | **peer** ({'/'.join(entry['chosen'])}) | | | | "
                f"**{entry['fitted']['peer']['rms']:.2f}** | {entry['fitted']['peer']['bias']:+.2f} | "
                f"{entry['fitted']['peer']['mae']:.2f} | | |"
            )
        lines.append("")
    lines += [
        "Notes: the images are asinh-stretched 8-bit renderings, so adaptive moments and PSF correction act on "
        "stretched, not linear, flux; the isophote method uses filled outer isophotes at 10, 13 and 16% of the "
        "galaxy's peak (levels chosen on another seed). PSF FWHM in pixels of the prep output includes its "
        "zoom. Reference: the true axial ratio `b_a` of truth.csv, put through the same formula, gives "
        f"{results['truth_b_a']['fixed']['rms']:.2f} deg RMS with q0 = 0.2 and "
        f"{results['truth_b_a']['fitted']['rms']:.2f} cross-fitted: the spread of intrinsic thickness, which "
        "no single-q formula can know, sets that floor; the rest is measurement error.",
        "",
    ]
    return "\n".join(lines)


def write_section(path, text):
    """Replace the "## Classical peer" section of ``path`` (up to the next ``## ``) or append it."""
    path = Path(path)
    content = path.read_text() if path.exists() else ""
    start = content.find(SECTION + "\n")
    if start < 0:
        content = content.rstrip("\n") + "\n\n" + text
    else:
        end = content.find("\n## ", start + len(SECTION))
        content = content[:start] + text + (content[end + 1 :] if end >= 0 else "")
    path.write_text(content.rstrip("\n") + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="work folder (the universe is kept there)")
    parser.add_argument("-n", "--n-galaxies", type=int, default=400)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--raw-size", type=int, default=256)
    parser.add_argument("--small", type=int, default=64, help="size after the workflow's resize")
    parser.add_argument("--bands", nargs="+", default=list(naming.BANDS))
    parser.add_argument("--markdown", type=Path, help="replace/append the section in this Markdown file")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    raw = render(args.work, args.n_galaxies, args.raw_size, args.seed)
    galaxies = accepted_galaxies(raw)
    half_a = halves(len(galaxies), args.seed)
    psf_arcsec = np.array([float(g["psf_fwhm"]) for g in galaxies])
    d25 = np.array([float(g["d25"]) for g in galaxies])
    fov = np.array([float(g.get("fov_arcsec") or "nan") for g in galaxies])
    results = {
        "args": {"n": args.n_galaxies, "seed": args.seed, "raw_size": args.raw_size, "small": args.small},
        "n_accepted": len(galaxies),
        "bands": [],
    }
    truth = np.array([float(g["true_inc"]) for g in galaxies])
    b_a = {"b_a": np.array([float(g["b_a"]) for g in galaxies])}
    results["truth_b_a"] = {
        "fixed": peer.scores(peer.peer_inclination(b_a["b_a"]), truth),
        "fitted": peer.scores(cross_fit(b_a, truth, half_a)[0]["b_a"], truth),
    }
    for size in (args.raw_size, args.small):
        for band in args.bands:
            entry = run_band(raw, galaxies, band, size, args.raw_size, half_a, psf_arcsec, d25, fov)
            results["bands"].append(entry)
            print(
                f"{size} px {band}: " + ", ".join(f"{m} {entry['fitted'][m]['rms']:.2f}" for m in entry["fitted"]),
                file=sys.stderr,
            )
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    command = "nice python bench/bench_peer.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = markdown(results, command)
    print(text)
    if args.markdown:
        write_section(args.markdown, text)


if __name__ == "__main__":
    main()
