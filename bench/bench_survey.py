#!/usr/bin/env python3
"""Survey workflow benchmarks: one inclinet-measure job's throughput and peak memory by chunk size; the DAG at scale.

Usage (from the repository root)::

    .venv/bin/python bench/bench_survey.py --work /tmp/bench_survey --chunks 500 5000
    .venv/bin/python bench/bench_survey.py --work /tmp/bench_survey --only dag --rows 1000000

``measure``: a bundle shaped like the demo's (two model4 regression members and the model4
reject member at ``--size`` px, ``--views`` views; untrained weights, the same arithmetic),
``--sources`` distinct synthetic galaxies rendered at ``--raw-size`` px in all four bands,
and a catalog of N rows whose images are links to those sources (every row is read,
normalised and predicted in every band: the work of N distinct galaxies). Each job runs as
the engines run it: one process pinned to one core (``taskset``) with TensorFlow at one
thread. Reported: wall and CPU seconds, galaxies per second (all four images), peak RSS.

``dag``: ``run_workflow.py --predict-with BUNDLE --engine pegasus --dry-run`` over ROWS catalog
rows, either real data (``--dag-data real``: a catalog and a folder of ROWS x 4 image links;
each measure job reads its chunk's catalog slice and the folder, and in ``workflow.yml`` a
pack job archives the chunk's images) or ``--synthetic ROWS`` (no files needed; the DAG then
also holds the synth jobs, whose images are declared one by one): build time, the builder's
peak RSS, the jobs of ``jobs.json`` and ``workflow.yml``, and the size of every file and of
the catalog slices. ``--builder-repo DIR`` builds with another checkout's ``run_workflow.py``
(e.g. an export of an older commit, to compare before and after in one run).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from inclinet import naming  # noqa: E402


def executable(name):
    beside = Path(sys.executable).parent / name
    return [str(beside)] if beside.is_file() else [sys.executable, str(REPO / "bin" / name)]


def make_sources(work, n_sources, raw_size):
    source = work / "sources"
    if not (source / "catalog.csv").is_file():
        subprocess.run(
            [
                *executable("inclinet-synth"),
                "-n",
                str(n_sources),
                "--size",
                str(raw_size),
                "--output",
                str(source),
                "-q",
            ],
            check=True,
        )
    return source


def make_catalog(work, source, n_rows, n_sources):
    """A folder of links (row k -> source k mod n_sources, all bands) and a CSV catalog of n_rows."""
    from inclinet.catalog import read_catalog

    pgcs = [int(g.pgc) for g in read_catalog(source / "catalog.csv")][:n_sources]
    folder = work / "galaxies"
    folder.mkdir(exist_ok=True)
    rows = []
    for row in range(n_rows):
        pgc = 5_000_000 + row
        rows.append(f"{pgc},60\n")
        for band in naming.BANDS:
            link = folder / naming.raw_image_names(pgc, band)[0]
            if not os.path.lexists(link):
                os.symlink(source / "galaxies" / naming.raw_image_names(pgcs[row % len(pgcs)], band)[0], link)
    catalog = work / f"catalog_{n_rows}.csv"
    catalog.write_text("pgc,inc\n" + "".join(rows))
    return folder, catalog


def run_measured(command, **kwargs):
    """``(wall s, CPU s, peak RSS MB)`` of ``command`` run under GNU time; raises SystemExit when it fails.

    Not ``os.wait4`` on a child of this process: Linux counts the pages a forked child
    shares with its parent before ``exec`` in the child's peak RSS, so a child of this
    (TensorFlow-loaded) process would report at least this process's size.
    """
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".time") as record:
        start = time.perf_counter()
        result = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", "-o", record.name, *command], **kwargs)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"{command[0]} ... failed (exit {result.returncode}): {' '.join(map(str, command))}")
        user, system, peak_kb = record.read().split()[-3:]
    return wall, float(user) + float(system), int(peak_kb) / 1024


def measure_job(work, bundle, folder, catalog, n_rows, core):
    out = work / f"chunk_{n_rows}.csv"
    env = dict(
        os.environ,
        TF_NUM_INTRAOP_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
        OMP_NUM_THREADS="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    command = [
        "taskset",
        "-c",
        str(core),
        *executable("inclinet-measure"),
        "--bundle",
        str(bundle),
        "-c",
        str(catalog),
        "-p",
        str(folder),
        "-o",
        str(out),
        "--gallery",
        str(work / f"gallery_{n_rows}.npz"),
        "-q",
    ]
    wall, cpu, peak = run_measured(command, env=env)
    return {
        "rows": n_rows,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "galaxies_per_s": round(n_rows / wall, 2),
        "galaxies_per_cpu_s": round(n_rows / cpu, 2),
        "peak_rss_mb": round(peak, 1),
    }


def bench_dag(work, bundle, rows, galaxies_per_job, data=None, builder=REPO, label="now"):
    """Build the survey DAG of ``rows`` catalog rows: real data (``data`` = (folder, catalog)) or synthetic."""
    run_dir = work / f"dag_{label}_{rows}_{galaxies_per_job}"
    shutil.rmtree(run_dir, ignore_errors=True)
    source = ["--data-path", str(data[0]), "--catalog", str(data[1])] if data else ["--synthetic", str(rows)]
    command = [
        sys.executable,
        str(Path(builder) / "run_workflow.py"),
        *source,
        "--predict-with",
        str(bundle),
        "--galaxies-per-job",
        str(galaxies_per_job),
        "--engine",
        "pegasus",
        "--output-dir",
        str(run_dir),
        "--dry-run",
        "-q",
    ]
    seconds, cpu, peak = run_measured(command, stdout=subprocess.DEVNULL, cwd=builder)
    sizes = {
        name: round((run_dir / name).stat().st_size / 1e6, 2)
        for name in ("jobs.json", "workflow.yml", "replicas.yml", "transformations.yml", "sites.yml")
    }
    slices = list((run_dir / "inputs").rglob("*.csv"))
    sizes["inputs (catalog slices)"] = round(sum(path.stat().st_size for path in slices) / 1e6, 2)
    n_jobs = json.loads((run_dir / "run.json").read_text())["n_jobs"]
    with open(run_dir / "workflow.yml", encoding="utf-8") as handle:
        workflow_jobs = sum(1 for line in handle if line.startswith("- type: job"))
    return {
        "builder": label,
        "rows": rows,
        "data": "real" if data else "synthetic",
        "galaxies_per_job": galaxies_per_job,
        "jobs": n_jobs,
        "workflow_jobs": workflow_jobs,
        "slices": len(slices),
        "build_s": round(seconds, 1),
        "cpu_s": round(cpu, 1),
        "sizes_mb": sizes,
        "peak_rss_mb": round(peak),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "survey")
    parser.add_argument("--only", choices=("measure", "dag"))
    parser.add_argument("--chunks", type=int, nargs="+", default=[500, 5000], help="galaxies per job to measure")
    parser.add_argument("--rows", type=int, default=1_000_000, help="catalog rows of the DAG benchmark")
    parser.add_argument("--dag-galaxies-per-job", type=int, nargs="+", default=[500, 5000])
    parser.add_argument(
        "--dag-data",
        choices=("real", "synthetic"),
        default="synthetic",
        help="real: a catalog and a folder of ROWS x 4 image links (the builder checks each); "
        "synthetic: --synthetic ROWS (synth jobs too, no files needed)",
    )
    parser.add_argument(
        "--builder-repo",
        type=Path,
        nargs="+",
        default=[REPO],
        metavar="DIR",
        help="checkouts whose run_workflow.py builds the DAG, in turn (default this one)",
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--sources", type=int, default=100)
    parser.add_argument("--raw-size", type=int, default=128)
    parser.add_argument("--core", type=int, default=0, help="the core the measuring job is pinned to")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    from bench_serve import build_bundle

    bundle = args.work / "bundle"
    if not (bundle / "manifest.json").is_file():
        bundle = build_bundle(args.work, args.size, args.views)
    results = {"size": args.size, "views": args.views, "raw_size": args.raw_size, "measure": [], "dag": []}
    if args.only in (None, "measure"):
        source = make_sources(args.work, args.sources, args.raw_size)
        for n_rows in args.chunks:
            folder, catalog = make_catalog(args.work, source, n_rows, args.sources)
            result = measure_job(args.work, bundle, folder, catalog, n_rows, args.core)
            print(json.dumps(result), flush=True)
            results["measure"].append(result)
    if args.only in (None, "dag"):
        data = None
        if args.dag_data == "real":
            data = make_catalog(
                args.work, make_sources(args.work, args.sources, args.raw_size), args.rows, args.sources
            )
        for per_job in args.dag_galaxies_per_job:
            for builder in args.builder_repo:
                label = "now" if builder.resolve() == REPO else builder.name
                result = bench_dag(args.work, bundle, args.rows, per_job, data, builder, label)
                print(json.dumps(result), flush=True)
                results["dag"].append(result)
    (args.work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
