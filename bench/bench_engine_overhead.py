#!/usr/bin/env python3
"""Local-engine overhead per job: many trivial jobs through the engine against the same commands run bare.

Usage (from the repository root)::

    nice -n 10 .venv/bin/python bench/bench_engine_overhead.py                  # 200 jobs, 3 repeats
    nice -n 10 .venv/bin/python bench/bench_engine_overhead.py --jobs 500 --baseline 25bda18
    nice -n 10 .venv/bin/python bench/bench_engine_overhead.py --max-parallel 2   # wall time per job on 2 cores

Each measurement builds a run of ``--jobs`` independent jobs (``sh -c 'echo ok > OUT'``,
one declared output each), runs it with ``run_workflow.py resume RUN`` on one core
(``--max-parallel 1``, so jobs run one after another: the engine's whole cost per job is
in series with the jobs), and runs the very same commands one after another with
``subprocess.run`` in the same folder. The overhead per job is the difference divided by
the number of jobs: starting the wrapper, state and exit records, output checksums,
scheduling and noticing that a job ended. With ``--max-parallel N`` the engine runs N jobs
at once and the difference is wall time per job against the bare commands run serially.

``--baseline REV`` measures the engine of an earlier commit in the same run (its
``workflow/`` and ``inclinet/`` are exported with ``git archive`` into a temporary
folder); the two are measured alternately, ``--repeats`` times each, and the medians are
compared, so that both see the same machine load. The default baseline, 25bda18, is the
last commit whose local engine started an extra Python interpreter per job.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = "25bda18"


def _jobs(dag, n_jobs):
    jobs = []
    for index in range(n_jobs):
        output = f"t{index:05d}.txt"
        jobs.append(
            dag.JobSpec(
                id=f"t{index:05d}",
                stage="trivial",
                executable="/bin/sh",
                args=["-c", 'echo ok > "$0"', output],
                inputs=[],
                outputs=[output],
                retries=0,
            )
        )
    return jobs


def measure(tree, n_jobs, max_parallel=1):
    """One measurement with the engine of ``tree`` (a folder holding ``workflow/`` and ``inclinet/``)."""
    sys.path.insert(0, str(tree))
    from inclinet.io import atomic_write_json
    from workflow import dag
    from workflow.cli import main

    with tempfile.TemporaryDirectory(prefix="inclinet-overhead-") as tmp:
        run_dir = Path(tmp) / "run"
        jobs = _jobs(dag, n_jobs)
        run_dir.mkdir()
        dag.save_jobs(run_dir, jobs)
        atomic_write_json(
            run_dir / "run.json",
            {"engine": "local", "config": {"retries": 0}, "engine_args": {"max_parallel": max_parallel}},
        )
        with open(os.devnull, "w") as quiet:
            saved, sys.stdout = sys.stdout, quiet
            try:
                start = time.perf_counter()
                code = main(["resume", str(run_dir), "-q"])
                engine = time.perf_counter() - start
            finally:
                sys.stdout = saved
        if code != 0:
            raise SystemExit(f"the engine of {tree} exited {code}")
        bare_dir = Path(tmp) / "bare"
        bare_dir.mkdir()
        start = time.perf_counter()
        for job in jobs:
            subprocess.run([job.executable, *job.args], cwd=bare_dir, check=True)
        bare = time.perf_counter() - start
    return {"engine_s": engine, "bare_s": bare, "overhead_ms": 1000 * (engine - bare) / n_jobs}


def _export(rev, folder):
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "workflow", "inclinet"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)


def _worker(tree, n_jobs, max_parallel):
    result = subprocess.run(
        [sys.executable, __file__, "--worker", str(tree), "--jobs", str(n_jobs), "--max-parallel", str(max_parallel)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"measurement with {tree} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="trivial jobs per measurement (200)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per engine (3)")
    parser.add_argument("--max-parallel", type=int, default=1, help="jobs the engine runs at once (1)")
    parser.add_argument(
        "--baseline",
        default=DEFAULT_BASELINE,
        help=f"commit whose engine is measured alongside ({DEFAULT_BASELINE}); 'none' to skip",
    )
    parser.add_argument("--worker", metavar="TREE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(Path(args.worker), args.jobs, args.max_parallel)))
        return 0
    with tempfile.TemporaryDirectory(prefix="inclinet-baseline-") as tmp:
        trees = {"current": REPO}
        if args.baseline != "none":
            _export(args.baseline, tmp)
            trees = {f"baseline {args.baseline}": Path(tmp), **trees}
        results = {name: [] for name in trees}
        for _ in range(args.repeats):
            for name, tree in trees.items():
                results[name].append(_worker(tree, args.jobs, args.max_parallel))
    print(
        f"{args.jobs} trivial jobs, --max-parallel {args.max_parallel}, {args.repeats} measurements each "
        f"(median; all in ms/job; load average {os.getloadavg()[0]:.1f} at the end):"
    )
    medians = {}
    for name, rows in results.items():
        medians[name] = statistics.median(r["overhead_ms"] for r in rows)
        engine = statistics.median(1000 * r["engine_s"] / args.jobs for r in rows)
        bare = statistics.median(1000 * r["bare_s"] / args.jobs for r in rows)
        each = ", ".join(f"{r['overhead_ms']:.1f}" for r in rows)
        print(
            f"- {name}: overhead {medians[name]:.1f} ms/job (engine {engine:.1f}, bare command {bare:.1f}; "
            f"each measurement {each})"
        )
    if len(medians) == 2:
        before, after = medians.values()
        print(f"- ratio current / baseline: {after / before:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
