"""Augmentation speed per image, before and after, in one run: the code of an older commit against this checkout.

Both versions augment (and re-normalise) the same batch of normalised synthetic galaxies,
half colour and half gray, as inclinet-augment does: ``augment_batch`` per view, and its
two parts apart (the augmentation chain alone; the normalisation alone on the same augmented
views: ``normalise_batch`` where the version has it, else ``normalise_image`` per view), and
``normalise_image`` per view (the single-image path of prep and predict). The older version
is read from git (``--before``, default the commit before the batch normaliser) into a
temporary module, so the two run side by side in one process; runs alternate (before,
after, before, ...) and the median of ``--repeats`` is reported, in CPU time (the per-core
figure on a shared machine) and wall time. Thread pools are pinned to one thread. Run from a
git checkout:

    nice -n 10 .venv/bin/python bench/bench_augment.py --size 128 --n-images 90 --repeats 5
"""

import argparse
import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import importlib.util  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from inclinet import augmentation, normalise  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "684627b"  # the last commit before the batch normaliser (25bda18: before the first speed-up)


def load_before(commit, folder):
    """``(augmentation, normalise)`` modules as they were at ``commit`` (read with git show)."""
    modules = {}
    for name in ("normalise", "augmentation"):
        source = subprocess.run(
            ["git", "show", f"{commit}:inclinet/{name}.py"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        source = source.replace("from inclinet.normalise import", "from _before_normalise import")
        path = Path(folder) / f"_before_{name}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(f"_before_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        modules[name] = module
    return modules["augmentation"], modules["normalise"]


def galaxies(n_images, size, seed):
    """Normalised synthetic galaxies (as in the sample files) and their filter codes, half colour."""
    sys.path.insert(0, str(ROOT / "tests"))
    from _prep_data import galaxy_image, inclination_to_q

    rng = np.random.default_rng(seed)
    images, codes = [], []
    for index in range(n_images):
        colour = index % 2 == 0
        raw = galaxy_image(
            256,
            inclination_to_q(rng.uniform(45, 90)),
            angle_deg=rng.uniform(0, 180),
            colour=colour,
            radius=rng.uniform(18, 40),
            seed=seed + index,
            noise=2.0,
        )
        images.append(normalise.normalise_image(raw, size))
        codes.append("c" if colour else "gri"[index % 3])
    return np.stack(images), codes


def chain_only(module, images, codes, rng):
    out = []
    for image, code in zip(images, codes):
        chain = module.augment_colour if code == "c" else module.augment_gray
        out.append(chain(image[None], rng)[0])
    return out


def normalise_views(module, views, size):
    if hasattr(module, "normalise_batch"):
        return module.normalise_batch(np.stack(views), size)
    return [module.normalise_image(view, size) for view in views]


def timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    function(*args)
    return time.process_time() - cpu, time.perf_counter() - wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n-images", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", default=BEFORE, help="git commit of the 'before' code (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    images, codes = galaxies(args.n_images, args.size, args.seed)
    with tempfile.TemporaryDirectory() as folder:
        before_augmentation, before_normalise = load_before(args.before, folder)
        versions = {"before": (before_augmentation, before_normalise), "after": (augmentation, normalise)}
        views = {name: chain_only(mod[0], images, codes, np.random.default_rng(1)) for name, mod in versions.items()}
        parts = ("augment_batch", "chain", "normalise", "normalise_image")
        results = {(name, part): [] for name in versions for part in parts}
        for repeat in range(args.repeats):
            for name, (aug, norm) in versions.items():
                rng = np.random.default_rng(repeat)
                results[name, "augment_batch"].append(timed(aug.augment_batch, images, codes, rng))
                results[name, "chain"].append(timed(chain_only, aug, images, codes, rng))
                results[name, "normalise"].append(timed(normalise_views, norm, views[name], args.size))
                results[name, "normalise_image"].append(
                    timed(lambda n=norm, v=views[name]: [n.normalise_image(view, args.size) for view in v])
                )

    per_image = {
        key: (
            1e3 * statistics.median(c for c, _ in runs) / args.n_images,
            1e3 * statistics.median(w for _, w in runs) / args.n_images,
        )
        for key, runs in results.items()
    }
    print(
        f"{args.n_images} images of {args.size} px (half colour), median of {args.repeats} alternating runs, "
        f"before = {args.before}\n"
    )
    print("| part | before ms/image CPU (wall) | after ms/image CPU (wall) | speed-up (CPU) |")
    print("|---|---|---|---|")
    for part in parts:
        before, after = per_image["before", part], per_image["after", part]
        print(
            f"| {part} | {before[0]:.2f} ({before[1]:.2f}) | {after[0]:.2f} ({after[1]:.2f}) | "
            f"{before[0] / after[0]:.2f}x |"
        )


if __name__ == "__main__":
    main()
