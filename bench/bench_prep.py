"""Benchmark of the preparation stages: throughput per core, peak RSS vs galaxy count, bin uniformity.

Every stage runs as its own process (as in the workflow); peak RSS is that process's
``ru_maxrss`` from ``os.wait4``. Inputs:

* prep: ``--render`` galaxies rendered by inclinet-synth at 512 px (the raw size), and a
  catalog of ``--prep-galaxies`` rows that reuses those images under new pgc ids
  (symbolic links), so prep's memory can be measured on more galaxies than are rendered;
* compress / split / augment: synthetic npz parts at ``--size`` px for each count in
  ``--counts`` (a pool of 256 elliptical test galaxies per band, cycled under distinct
  pgc ids and labels), not rendered GalSim images.

Usage: ``nice python bench/bench_prep.py --work /tmp/bench_prep [--counts 2000 20000]``.
Prints a Markdown report and writes ``results.json`` in the work folder.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _prep_data import galaxy_image  # noqa: E402

from inclinet.catalog import read_catalog, write_catalog  # noqa: E402
from inclinet.npzstream import NpzWriter  # noqa: E402
from inclinet.stages.augment import inclination_bin  # noqa: E402

BANDS = (("gri", "RGB"), ("g", "g"), ("r", "r"), ("i", "i"))
PART_ROWS = 1000


CPU = {}


def run_stage(module, args):
    """Run ``python -m inclinet.stages.<module> args``; returns (seconds, peak RSS in MiB).

    The process's CPU seconds (user + system) are kept in ``CPU["last"]``: on a shared,
    loaded machine images per CPU-second is the meaningful per-core throughput.
    """
    command = [sys.executable, "-m", f"inclinet.stages.{module}", *map(str, args), "-q"]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    CPU["last"] = usage.ru_utime + usage.ru_stime
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}")
    return seconds, usage.ru_maxrss / 1024.0


def bench_prep(work, n_render, n_galaxies, size):
    raw = work / "raw"
    if not (raw / "catalog.csv").exists():
        print(f"rendering {n_render} galaxies at 512 px ...", flush=True)
        run_stage("synth", ["--n-galaxies", n_render, "--output", raw, "--size", 512, "--seed", 11])
    base = read_catalog(raw / "catalog.csv")
    linked = work / "raw_linked"
    linked.mkdir(exist_ok=True)
    rows = []
    for k in range(n_galaxies):
        galaxy = base[k % len(base)]
        pgc = 5_000_000 + k
        for band in ("g", "r", "i", "gri"):
            suffix = "sdss.jpg" if band == "gri" else "png"
            link = linked / f"pgc{pgc}_d25x2_rot_{band}.{suffix}"
            if not link.exists():
                link.symlink_to(raw / "galaxies" / f"pgc{galaxy.pgc}_d25x2_rot_{band}.{suffix}")
        row = galaxy.as_row()
        row["pgc"] = pgc
        rows.append(row)
    catalog = work / f"catalog_{n_galaxies}.csv"
    write_catalog(catalog, rows, fmt="csv")
    results = {}
    for band in ("g", "gri"):
        for label, count, cat, folder in (
            ("render", n_render, raw / "catalog.csv", raw / "galaxies"),
            ("linked", n_galaxies, catalog, linked),
        ):
            out = work / f"prep_{band}_{label}.npz"
            seconds, rss = run_stage("prep", ["-p", folder, "-c", cat, "-b", band, "-s", size, "-o", out])
            results[f"{band}_{count}"] = {
                "galaxies": count,
                "seconds": round(seconds, 2),
                "cpu_s": round(CPU["last"], 2),
                "images_per_s": round(count / seconds, 1),
                "images_per_cpu_s": round(count / CPU["last"], 1),
                "rss_mib": round(rss, 1),
            }
            print(f"prep {band} {count}: {seconds:.1f} s, {count / seconds:.1f} img/s, {rss:.0f} MiB", flush=True)
    return results


def make_parts(folder, n_galaxies, size, seed=0):
    """Synthetic prep parts of all bands: labels 70% 45..90, 10% F, 20% J."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(45, 91, n_galaxies)
    kind = rng.random(n_galaxies)
    labels[kind > 0.7] = 0
    labels[(kind > 0.7) & (kind < 0.8)] = 1
    pgcs = rng.permutation(np.arange(10_000, 10_000 + 3 * n_galaxies, 3))[:n_galaxies]
    parts = {}
    for band, tag in BANDS:
        pool = np.stack(
            [
                galaxy_image(size, rng.uniform(0.2, 1.0), colour=(band == "gri"), seed=i, radius=size / 10)
                for i in range(256)
            ]
        )
        parts[band] = []
        for start in range(0, n_galaxies, PART_ROWS):
            stop = min(n_galaxies, start + PART_ROWS)
            path = folder / f"resized/{size}x{size}_{tag}/part{start // PART_ROWS + 1:04d}.npz"
            if not path.exists():
                with NpzWriter(path, (size, size, 3), n_rows=stop - start) as writer:
                    for first in range(start, stop, 256):
                        last = min(stop, first + 256)
                        writer.append(pool[np.arange(first, last) % len(pool)])
                    writer.set(
                        labels=labels[start:stop].astype(np.int32),
                        pgcIDs=pgcs[start:stop].astype(np.int32),
                        band=np.array(band),
                    )
            parts[band].append(path)
    return parts


def bench_count(work, n_galaxies, size, per_bin, n_batches):
    folder = work / f"n{n_galaxies}"
    print(f"synthetic parts for {n_galaxies} galaxies ...", flush=True)
    parts = make_parts(folder, n_galaxies, size)
    result = {"compress": {}}
    compressed = []
    for band, tag in BANDS:
        out = folder / f"compressed/{size}x{size}_{tag}.npz"
        seconds, rss = run_stage("compress", ["-i", *parts[band], "-o", out, "-s", size])
        result["compress"][tag] = {
            "seconds": round(seconds, 1),
            "cpu_s": round(CPU["last"], 1),
            "rss_mib": round(rss, 1),
        }
        compressed.append(out)
        print(f"compress {tag} {n_galaxies}: {seconds:.1f} s, {rss:.0f} MiB", flush=True)
    seconds, rss = run_stage("split", ["-i", *compressed, "-o", folder / "samples", "-s", size, "--seed", 1])
    result["split"] = {"seconds": round(seconds, 1), "cpu_s": round(CPU["last"], 1), "rss_mib": round(rss, 1)}
    print(f"split {n_galaxies}: {seconds:.1f} s, {rss:.0f} MiB", flush=True)
    samples = [folder / f"samples/{tag}_{size}x{size}_train_000.npz" for _, tag in BANDS]
    result["augment"] = {}
    for batches in sorted({n_batches, 2 * n_batches}):
        out = folder / f"augmented_b{batches}/Uset_000_npz"
        seconds, rss = run_stage(
            "augment", ["-i", *samples, "-o", out, "-s", size, "-b", batches, "-z", per_bin, "--seed", 1]
        )
        images = batches * 18 * per_bin
        result["augment"][f"b{batches}"] = {
            "batches": batches,
            "images": images,
            "seconds": round(seconds, 1),
            "cpu_s": round(CPU["last"], 1),
            "images_per_s": round(images / seconds, 1),
            "images_per_cpu_s": round(images / CPU["last"], 1),
            "rss_mib": round(rss, 1),
        }
        print(
            f"augment {n_galaxies} b={batches}: {seconds:.1f} s, {images / seconds:.1f} img/s, {rss:.0f} MiB",
            flush=True,
        )
    histogram = []
    for path in sorted((folder / f"augmented_b{n_batches}/Uset_000_npz").glob("*.npz")):
        with np.load(path) as data:
            colour = data["filter"].astype(str) == "c"
            bins = inclination_bin(data["labels"])
            histogram.append(
                {
                    "batch": path.name,
                    "colour": np.bincount(bins[colour], minlength=9).tolist(),
                    "gray": np.bincount(bins[~colour], minlength=9).tolist(),
                    "g_r_i": [int((data["filter"] == code).sum()) for code in (b"g", b"r", b"i")],
                    "inverted": int(data["inverted"].sum()),
                }
            )
    result["histogram"] = histogram
    return result


def bench_micro(size, n_images=200):
    """In-process: augmentation chains per image type, and zlib levels on galaxy images."""
    import zlib

    from inclinet.augmentation import augment_colour, augment_gray

    rng = np.random.default_rng(0)
    gray = np.stack([galaxy_image(size, rng.uniform(0.2, 1), seed=i, radius=size / 10) for i in range(n_images)])
    colour = np.stack(
        [galaxy_image(size, rng.uniform(0.2, 1), colour=True, seed=i, radius=size / 10) for i in range(n_images)]
    )
    result = {}
    for name, chain, images in (("gray", augment_gray, gray), ("colour", augment_colour, colour)):
        start = time.process_time()
        chain(images, rng)
        result[f"augment_{name}_per_cpu_s"] = round(n_images / (time.process_time() - start), 1)
    raw = np.concatenate([gray, colour]).tobytes()
    for level in (1, 6):
        start = time.process_time()
        packed = zlib.compress(raw, level)
        result[f"zlib{level}_mb_per_cpu_s"] = round(len(raw) / (time.process_time() - start) / 1e6, 1)
        result[f"zlib{level}_ratio"] = round(len(packed) / len(raw), 3)
    print(f"micro: {result}", flush=True)
    return result


def report(results, args):
    lines = [f"Command: `{' '.join(['nice', 'python', 'bench/bench_prep.py', *sys.argv[1:]])}`", ""]
    if "micro" in results:
        lines += [f"In-process ({args.size} px): {results['micro']}", ""]
    if not results["counts"]:
        return "\n".join(lines)
    if "prep" in results:
        lines += [
            "| prep band | galaxies | wall s | CPU s | images per CPU-second | peak RSS MiB |",
            "|---|---|---|---|---|---|",
        ]
        for key, row in results["prep"].items():
            lines.append(
                f"| {key.split('_')[0]} | {row['galaxies']} | {row['seconds']} | {row['cpu_s']} | "
                f"{row['images_per_cpu_s']} | {row['rss_mib']} |"
            )
        lines.append("")
    lines += ["| stage | galaxies | wall s | CPU s | peak RSS MiB |", "|---|---|---|---|---|"]
    for n, result in results["counts"].items():
        for tag, row in result["compress"].items():
            lines.append(f"| compress {tag} | {n} | {row['seconds']} | {row['cpu_s']} | {row['rss_mib']} |")
        split = result["split"]
        lines.append(f"| split (4 bands) | {n} | {split['seconds']} | {split['cpu_s']} | {split['rss_mib']} |")
        for row in result["augment"].values():
            lines.append(
                f"| augment -b {row['batches']} -z {args.per_bin} ({row['images']} images, "
                f"{row['images_per_cpu_s']} per CPU-s) | {n} | {row['seconds']} | {row['cpu_s']} | "
                f"{row['rss_mib']} |"
            )
    lines.append("")
    last = list(results["counts"])[-1]
    lines += [f"Bin histogram of the augmented batches ({last} galaxies), bins [45,50] .. (85,90]:", ""]
    for row in results["counts"][last]["histogram"]:
        lines.append(
            f"- {row['batch']}: colour {row['colour']}, gray {row['gray']}, g/r/i {row['g_r_i']}, "
            f"inverted {row['inverted']}"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_prep"))
    parser.add_argument("--counts", type=int, nargs="*", default=[2000, 20000])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--render", type=int, default=200, help="galaxies rendered for prep")
    parser.add_argument("--prep-galaxies", type=int, default=2000, help="catalog rows for prep's RSS")
    parser.add_argument("--per-bin", type=int, default=100)
    parser.add_argument("--n-batches", type=int, default=3)
    parser.add_argument("--skip-prep", action="store_true")
    parser.add_argument(
        "--micro",
        action="store_true",
        help="also time the gray/colour chains and zlib levels in-process (with --counts and "
        "--skip-prep omitted/none this is all that runs)",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = {"counts": {}}
    if args.micro:
        results["micro"] = bench_micro(args.size)
    if not args.skip_prep:
        results["prep"] = bench_prep(args.work, args.render, args.prep_galaxies, args.size)
    for n in args.counts:
        results["counts"][n] = bench_count(args.work, n, args.size, args.per_bin, args.n_batches)
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    print(report(results, args))


if __name__ == "__main__":
    main()
