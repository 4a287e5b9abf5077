"""Time the submission of a few-hundred-job inclinet DAG to SLURM (jobs held, then cancelled).

Builds the real DAG of a synthetic run (``--synthetic N --galaxies-per-job K``), submits
every job with the SLURM engine exactly as ``run_workflow.py --engine slurm`` does, but
with ``--hold`` added so nothing runs, prints the wall time per number of parallel sbatch
calls, and cancels the held jobs. Needs a running cluster (scripts/slurm/ci-setup.sh).

    .venv/bin/python bench/slurm_submit.py --synthetic 1200 --galaxies-per-job 20 --workers 1 8
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow.dag import WorkflowConfig, build_jobs, save_jobs  # noqa: E402 (after the path set-up)
from workflow.engines import slurm  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=1200, help="synthetic galaxies of the DAG (1200)")
    parser.add_argument("--galaxies-per-job", type=int, default=20, help="galaxies per synth/prep job (20)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8], help="parallel sbatch calls to compare")
    parser.add_argument("--repeat", type=int, default=2, help="submissions per setting; the best is kept (2)")
    args = parser.parse_args(argv)

    config = WorkflowConfig(synthetic=args.synthetic, galaxies_per_job=args.galaxies_per_job, size=128)
    jobs = build_jobs(config)
    n_edges = sum(len(job.parents) for job in jobs)
    print(f"DAG: {len(jobs)} jobs, {n_edges} dependencies, {len(slurm._levels(jobs, {j.id for j in jobs}))} levels")
    for workers in args.workers:
        times = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="inclinet-slurm-bench-") as tmp:
                run_dir = Path(tmp)
                save_jobs(run_dir, jobs)
                options = slurm.SlurmOptions(sbatch_options=["--hold"], submit_workers=workers)
                start = time.perf_counter()
                try:
                    ids = slurm.submit(run_dir, jobs, options)
                    times.append(time.perf_counter() - start)
                finally:
                    submitted = list(slurm.submissions(run_dir).values())
                    if submitted:
                        subprocess.run(["scancel", *submitted], check=False)
            assert len(ids) == len(jobs)
        best = min(times)
        print(
            f"workers={workers}: {len(jobs)} jobs submitted in {best:.2f} s (best of {len(times)}; "
            f"{1000 * best / len(jobs):.1f} ms/job; all: {', '.join(f'{t:.2f}' for t in times)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
