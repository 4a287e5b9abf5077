"""Does the synthetic universe look like real SDSS cutouts? Pixel statistics of real and synthetic images.

For every image of each set (the real-look galaxies of ``../shared/reference/real-look``, a
synthetic universe from ``inclinet-synth``, optionally the foreign universe) it measures,
with the canonical normaliser's own measurements (:class:`inclinet.normalise.NormalisationInfo`)
and a colour measurement:

* ``sky``: sky level of the raw image (grey levels), gray bands and colour separately;
* ``noise``: sky noise (grey levels);
* ``contrast``: the galaxy's 99th-percentile level above the sky over the noise (S/N);
* ``size``: the galaxy's major-axis rms radius over the frame side;
* ``offset``: distance of the galaxy centroid from the frame centre over the side;
* ``fill``: fraction of the frame in rotation corners or padding;
* ``median_level``: the galaxy's median over its 99th percentile (how hard the stretch is);
* ``asymmetry``, ``edge_flux``: of the normalised image (:func:`inclinet.normalise.image_statistics`):
  the 180-degree rotational asymmetry of the galaxy region, and the share of the light in the
  outer ring (stars, neighbours) - what a reject model can mistake for a problem;
* ``concentration``, ``galaxy_area``: also of the normalised image: the light within one
  target sigma of the centre over that within three, and the fraction of the frame more
  than 5 noise levels above the sky (how much of the frame the galaxy fills at a fixed rms
  radius: a less concentrated profile fills more);
* ``g_r``, ``i_r``: the colour composite's blue/green and red/green ratios of the sky-subtracted
  galaxy light (the composite is R, G, B = i, r, g).

It prints, per statistic, the 10/50/90th percentiles of each set and the fraction of real
images inside the synthetic 2-98% range, writes them as JSON, and saves a figure with the
histograms and a side-by-side montage of real and synthetic images.

Usage::

    python bench/bench_look.py --synthetic DIR [--foreign DIR] [--real DIR] [--out bench/results/look.json]
        [--figure bench/figures/look.png] [--max-images 200]
"""

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inclinet.images import load_image  # noqa: E402
from inclinet.normalise import STATISTICS as IMAGE_STATISTICS  # noqa: E402
from inclinet.normalise import image_statistics, normalise_image  # noqa: E402

STATISTICS = (
    "sky",
    "noise",
    "contrast",
    "size",
    "offset",
    "fill",
    "median_level",
    "asymmetry",
    "edge_flux",
    "concentration",
    "galaxy_area",
)
COLOUR_STATISTICS = ("g_r", "i_r")
DEFAULT_REAL = ROOT.parent / "shared" / "reference" / "real-look"


def colour_ratios(image):
    """(g/r, i/r) of the galaxy light in an R, G, B = i, r, g composite; NaN when no galaxy stands out."""
    image = image.astype(np.float64)
    border = np.concatenate([image[:8].reshape(-1, 3), image[-8:].reshape(-1, 3)])
    sky = np.median(border, axis=0)
    light = np.clip(image - sky, 0, None)
    total = light.sum(axis=2)
    height, width = total.shape
    centre = total[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4]
    threshold = np.percentile(centre, 90)
    mask = np.zeros_like(total, dtype=bool)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = centre >= threshold
    red, green, blue = (light[..., k][mask].sum() for k in range(3))
    if green <= 0:
        return float("nan"), float("nan")
    return float(blue / green), float(red / green)


def measure_set(files_gray, files_colour):
    rows = {"gray": {name: [] for name in STATISTICS}, "colour": {name: [] for name in STATISTICS}}
    colours = {name: [] for name in COLOUR_STATISTICS}
    for kind, files in (("gray", files_gray), ("colour", files_colour)):
        for path in files:
            image = load_image(path)
            normalised, info = normalise_image(image, 64, with_info=True)
            asymmetry, edge_flux, concentration, area = image_statistics(normalised)[0][
                [IMAGE_STATISTICS.index(n) for n in ("asymmetry", "edge_flux", "concentration", "galaxy_area")]
            ]
            values = {
                "sky": info.sky,
                "noise": info.noise,
                "contrast": info.snr,
                "size": info.size_in_frame,
                "offset": info.offset,
                "fill": info.fill_fraction,
                "median_level": info.median_level,
                "asymmetry": float(asymmetry),
                "edge_flux": float(edge_flux),
                "concentration": float(concentration),
                "galaxy_area": float(area),
            }
            for name in STATISTICS:
                rows[kind][name].append(values[name])
            if kind == "colour":
                g_r, i_r = colour_ratios(image)
                colours["g_r"].append(g_r)
                colours["i_r"].append(i_r)
    return rows, colours


def summarise(values):
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return {}
    p = np.percentile(values, [2, 10, 50, 90, 98])
    return {"n": int(len(values)), "p2": p[0], "p10": p[1], "p50": p[2], "p90": p[3], "p98": p[4]}


def files_of(directory, limit):
    directory = Path(directory)
    gray = sorted(glob.glob(str(directory / "**" / "*_r.png"), recursive=True))[:limit]
    colour = sorted(glob.glob(str(directory / "**" / "*_gri.sdss.jpg"), recursive=True))[:limit]
    if not colour:
        colour = sorted(glob.glob(str(directory / "**" / "*_gri.jpg"), recursive=True))[:limit]
    return gray, colour


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", required=True, help="folder of an inclinet-synth universe")
    parser.add_argument("--foreign", default=None, help="folder of a foreign universe (bench/foreign_universe.py)")
    parser.add_argument("--real", default=str(DEFAULT_REAL), help="folder of the real-look cutouts")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "look.json"))
    parser.add_argument("--figure", default=str(ROOT / "bench" / "figures" / "look.png"))
    parser.add_argument("--max-images", type=int, default=200)
    args = parser.parse_args(argv)

    sets = {"real": args.real, "synthetic": args.synthetic}
    if args.foreign:
        sets["foreign"] = args.foreign
    measured, files = {}, {}
    for name, folder in sets.items():
        files[name] = files_of(folder, args.max_images)
        if not files[name][0] or not files[name][1]:
            parser.error(f"{folder}: no *_r.png or *_gri(.sdss).jpg images found")
        measured[name] = measure_set(*files[name])

    result = {}
    header = "".join(f"{name + ' p10/p50/p90':>30}" for name in sets)
    print(f"{'statistic':<22}{header}   real inside synth 2-98%")
    for kind in ("gray", "colour"):
        for stat in STATISTICS:
            key = f"{kind}:{stat}"
            result[key] = {name: summarise(measured[name][0][kind][stat]) for name in sets}
            line = f"{key:<22}"
            for name in sets:
                s = result[key][name]
                line += f"{s['p10']:>10.3g}{s['p50']:>10.3g}{s['p90']:>10.3g}" if s else f"{'n/a':>30}"
            real = np.asarray(measured["real"][0][kind][stat], dtype=float)
            synth = result[key]["synthetic"]
            inside = float(np.mean((real >= synth["p2"]) & (real <= synth["p98"]))) if synth else float("nan")
            result[key]["real_inside_synthetic"] = inside
            print(line + f"{inside:>10.2f}")
    for stat in COLOUR_STATISTICS:
        key = f"colour:{stat}"
        result[key] = {name: summarise(measured[name][1][stat]) for name in sets}
        line = f"{key:<22}"
        for name in sets:
            s = result[key][name]
            line += f"{s['p10']:>10.3g}{s['p50']:>10.3g}{s['p90']:>10.3g}" if s else f"{'n/a':>30}"
        real = np.asarray(measured["real"][1][stat], dtype=float)
        synth = result[key]["synthetic"]
        inside = float(np.mean((real >= synth["p2"]) & (real <= synth["p98"]))) if synth else float("nan")
        result[key]["real_inside_synthetic"] = inside
        print(line + f"{inside:>10.2f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    _figure(Path(args.figure), measured, files, sets)
    print(f"wrote {out} and {args.figure}")
    return 0


def _figure(path, measured, files, sets):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    stats = [("gray", s) for s in ("noise", "contrast", "size", "median_level")] + [("colour", "noise")]
    n_sets = len(sets)
    figure = plt.figure(figsize=(15, 4 + 2.0 * n_sets))
    grid = figure.add_gridspec(1 + n_sets, len(stats) + 1, height_ratios=[2.2] + [1.6] * n_sets)
    for column, (kind, stat) in enumerate(stats):
        axis = figure.add_subplot(grid[0, column])
        for name in sets:
            values = np.asarray(measured[name][0][kind][stat], dtype=float)
            values = values[np.isfinite(values)]
            axis.hist(values, bins=20, density=True, histtype="step", label=name, linewidth=1.5)
        axis.set_title(f"{kind} {stat}", fontsize=9)
        axis.tick_params(labelsize=7)
    axis = figure.add_subplot(grid[0, len(stats)])
    for name in sets:
        axis.scatter(measured[name][1]["g_r"], measured[name][1]["i_r"], s=6, label=name)
    axis.set_xlabel("g/r (B/G)", fontsize=8)
    axis.set_ylabel("i/r (R/G)", fontsize=8)
    axis.legend(fontsize=7)
    axis.tick_params(labelsize=7)
    for row, name in enumerate(sets, start=1):
        axis = figure.add_subplot(grid[row, :])
        tiles = []
        for gray_path, colour_path in list(zip(*files[name]))[:8]:
            gray = np.asarray(Image.open(gray_path).convert("RGB").resize((128, 128)))
            colour = np.asarray(Image.open(colour_path).convert("RGB").resize((128, 128)))
            tiles.append(np.vstack([gray, colour]))
        axis.imshow(np.hstack(tiles))
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=70)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
