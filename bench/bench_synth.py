"""Throughput of inclinet-synth: galaxies per second per core at several image sizes.

Runs the stage in this process (one core: thread pools pinned to 1) on a temporary
directory, rendering and writing all four images of every galaxy, and reports wall-clock
and CPU-time rates; on a shared machine the CPU-time rate is the per-core figure.

    .venv/bin/python bench/bench_synth.py --sizes 128 512 --n-galaxies 36 --seed 0
"""

import argparse
import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from inclinet.stages import synth  # noqa: E402


def measure(size, n_galaxies, seed):
    with tempfile.TemporaryDirectory() as folder:
        # One warm-up galaxy outside the timing: GalSim builds its Sersic tables on first use.
        synth.run(n_galaxies=1, output=Path(folder) / "warm", size=size, seed=seed + 1, no_catalog=True)
        wall, cpu = time.perf_counter(), time.process_time()
        synth.run(n_galaxies=n_galaxies, output=Path(folder) / "run", size=size, seed=seed, no_catalog=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        written = sum(p.stat().st_size for p in (Path(folder) / "run").rglob("*") if p.is_file())
    return {
        "size": size,
        "n": n_galaxies,
        "wall_s": wall,
        "cpu_s": cpu,
        "per_s_wall": n_galaxies / wall,
        "per_s_cpu": n_galaxies / cpu,
        "mib": written / 2**20,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--n-galaxies", type=int, default=36)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| size (px) | galaxies | wall s | CPU s | galaxies/s (wall) | galaxies/s per core (CPU) | MiB written |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        r = measure(size, args.n_galaxies, args.seed)
        print(
            f"| {r['size']} | {r['n']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['per_s_wall']:.2f} | "
            f"{r['per_s_cpu']:.2f} | {r['mib']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
