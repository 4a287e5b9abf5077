#!/usr/bin/env python3
"""Workflow benchmarks: local-engine overhead per job, DAG build time and YAML size at scale, the demo's wall time.

Usage (from the repository root)::

    .venv/bin/python bench/bench_workflow.py                    # all three
    .venv/bin/python bench/bench_workflow.py --skip-demo        # overhead and build only
    .venv/bin/python bench/bench_workflow.py --only demo

Results print as Markdown-ready lines; outputs go under bench/out/ (git-ignored).
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inclinet.io import atomic_write_json  # noqa: E402
from workflow import dag  # noqa: E402
from workflow.cli import main as workflow_main  # noqa: E402
from workflow.engines import local  # noqa: E402

OUT = REPO / "bench" / "out"


def bench_overhead(n_jobs, max_parallel):
    """A DAG of ``n_jobs`` trivial jobs (``true``) in layers of 10 with fan-in edges."""
    run_dir = OUT / "overhead"
    shutil.rmtree(run_dir, ignore_errors=True)
    jobs = []
    for index in range(n_jobs):
        layer = index // 10
        inputs = [f"t{(layer - 1) * 10 + k:04d}.txt" for k in range(10)] if layer else []
        output = f"t{index:04d}.txt"
        jobs.append(
            dag.JobSpec(
                id=f"t{index:04d}",
                stage="trivial",
                executable=sys.executable,
                args=["-c", f"open('{output}', 'w').write('x')"],
                inputs=inputs[:2],
                outputs=[output],
                retries=0,
            )
        )
    dag.infer_parents(jobs)
    run_dir.mkdir(parents=True)
    dag.save_jobs(run_dir, jobs)
    atomic_write_json(
        run_dir / "run.json",
        {"engine": "local", "config": {"retries": 0}, "engine_args": {"max_parallel": max_parallel}},
    )
    start = time.perf_counter()
    runner = local.LocalRunner(run_dir, jobs, max_parallel=max_parallel, retries=0, progress=False)
    failed = runner.execute()
    wall = time.perf_counter() - start
    assert failed == 0, "trivial jobs failed"
    busy = sum(json.loads((run_dir / "state" / f"{j.id}.json").read_text())["duration"] for j in jobs)
    # A bare "python -c" of the same kind, for comparison.
    bare = time.perf_counter()
    for _ in range(20):
        os.system(f"{sys.executable} -c pass")
    bare = (time.perf_counter() - bare) / 20
    print(
        f"- local engine, {n_jobs} trivial python jobs, --max-parallel {max_parallel}: wall {wall:.1f} s = "
        f"{1000 * wall / n_jobs:.0f} ms/job of wall time; mean job duration as the engine sees it "
        f"(wrapper + python start) {1000 * busy / n_jobs:.0f} ms; bare `python -c pass` {1000 * bare:.0f} ms"
    )
    return wall


def bench_build(galaxies):
    run_dir = OUT / "build"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    code = workflow_main(["--synthetic", str(galaxies), "--output-dir", str(run_dir), "--dry-run", "-q"])
    seconds = time.perf_counter() - start
    assert code == 0
    jobs = dag.load_jobs(run_dir)
    sizes = {
        name: (run_dir / name).stat().st_size
        for name in ("workflow.yml", "jobs.json", "replicas.yml", "transformations.yml", "sites.yml")
    }
    print(
        f"- build for {galaxies} synthetic galaxies (defaults: 4 bands, 128 px, 500 per job, m=3, 3 models, "
        f"2 tasks): {len(jobs)} jobs in {seconds:.1f} s; workflow.yml {sizes['workflow.yml'] / 1e6:.1f} MB, "
        f"jobs.json {sizes['jobs.json'] / 1e6:.1f} MB, replicas.yml {sizes['replicas.yml'] / 1e3:.1f} kB"
    )
    return seconds


def bench_demo():
    run_dir = OUT / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    code = workflow_main(["--demo", "--output-dir", str(run_dir)])
    wall = time.perf_counter() - start
    rows = local.collect(run_dir, dag.load_jobs(run_dir))
    print(f"- demo (`run_workflow.py --demo`): exit {code}, wall {wall:.0f} s ({wall / 60:.1f} min), {len(rows)} jobs")
    print("```")
    print(local.summary_text(rows))
    print("```")
    metrics = run_dir / "data" / "evaluation" / "metrics.json"
    if metrics.is_file():
        print(f"metrics: {metrics}")
    return wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="trivial jobs for the overhead run (300)")
    parser.add_argument("--max-parallel", type=int, default=2, help="cores for the overhead run (2)")
    parser.add_argument("--galaxies", type=int, default=20000, help="galaxies for the build run (20000)")
    parser.add_argument("--skip-demo", action="store_true", help="leave out the demo run (minutes)")
    parser.add_argument("--only", choices=("overhead", "build", "demo"), help="run just one benchmark")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "overhead"):
        bench_overhead(args.jobs, args.max_parallel)
    if args.only in (None, "build"):
        bench_build(args.galaxies)
    if args.only == "demo" or (args.only is None and not args.skip_demo):
        bench_demo()
    return 0


if __name__ == "__main__":
    sys.exit(main())
