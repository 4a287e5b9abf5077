"""End to end: the training workflow of this checkout against an older commit's, side by side.

Renders one universe (``inclinet-synth``, reused when present), exports the older commit
with ``git archive`` and runs ``run_workflow.py`` of each on the same raw images with the
same flags (by default the workflow of the speed issue: 4 bands at 128 px, model4, the
full set + 3 subsamples, regression only, 1 epoch at batch size 3 of 5 batches of 10
colour images per bin, 1 view), alternating before/after ``--repeats`` times on the local
engine. Each run's executables import the code of its own tree (``PYTHONPATH``), with the
same virtual environment. Reported per run: the wall time of ``run_workflow.py`` (build +
all jobs), and the busy seconds per stage from the engine's job states.

Usage::

    nice python bench/bench_end_to_end.py --work /tmp/bench_e2e --before 22ea7f3 \\
        [-n 400] [--raw-size 256] [--repeats 2] [--out results.json]
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: The flags of the speed issue's end-to-end workflow.
WORKFLOW_FLAGS = (
    "--bands g,r,i,gri --size 128 --subsamples 3 --models model4 --tasks regression --epochs 1 "
    "--batch-size 3 --n-batches 5 --per-bin 10 --views 1"
).split()


def render(work, n_galaxies, raw_size, seed):
    from inclinet.stages import synth

    raw = work / "raw"
    if not (raw / ".rendered").exists():
        synth.run(n_galaxies=n_galaxies, output=raw, size=raw_size, seed=seed)
        (raw / ".rendered").write_text("ok\n")
    return raw


def export(work, commit):
    tree = work / f"tree-{commit}"
    if not (tree / "run_workflow.py").is_file():
        if tree.exists():
            shutil.rmtree(tree)
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def stage_busy(run_dir):
    """Busy seconds per stage from the local engine's job state files (``RUN/state/<job>.json``)."""
    jobs = json.loads((run_dir / "jobs.json").read_text())
    jobs = jobs["jobs"] if isinstance(jobs, dict) else jobs
    stage_of = {job["id"]: job["stage"] for job in jobs}
    busy = {}
    for path in sorted((run_dir / "state").glob("*.json")):
        try:
            state = json.loads(path.read_text())
        except ValueError:
            continue
        if path.stem not in stage_of or not isinstance(state, dict):
            continue
        seconds = state.get("duration")
        if seconds is None and "started" in state and "ended" in state:
            seconds = state["ended"] - state["started"]
        if isinstance(seconds, (int, float)):
            busy[stage_of[path.stem]] = busy.get(stage_of[path.stem], 0.0) + float(seconds)
    return busy


def run_once(tree, raw, run_dir, seed, extra):
    if run_dir.exists():
        shutil.rmtree(run_dir)
    argv = [
        sys.executable,
        str(tree / "run_workflow.py"),
        "--data-path",
        str(raw / "galaxies"),
        "--catalog",
        str(raw / "catalog.csv"),
        *WORKFLOW_FLAGS,
        *extra,
        "--seed",
        str(seed),
        "--output-dir",
        str(run_dir),
        "-q",
    ]
    env = dict(os.environ, PYTHONPATH=str(tree))
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(
            f"{shlex.join(argv)} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return {"wall_s": wall, "busy_s": stage_busy(run_dir)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--before", required=True, help="the older commit to compare with")
    parser.add_argument("-n", "--n-galaxies", type=int, default=400)
    parser.add_argument("--raw-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--extra", default="", help="more flags for both runs, one string")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    raw = render(args.work, args.n_galaxies, args.raw_size, args.seed)
    trees = {"before": export(args.work, args.before), "after": ROOT}
    extra = shlex.split(args.extra)
    runs = {"before": [], "after": []}
    for repeat in range(args.repeats):
        for name in ("before", "after") if repeat % 2 == 0 else ("after", "before"):
            result = run_once(trees[name], raw, args.work / f"run-{name}", args.seed, extra)
            runs[name].append(result)
            print(f"{name} #{repeat + 1}: {result['wall_s']:.1f} s", flush=True)
    summary = {
        "before": args.before,
        "flags": WORKFLOW_FLAGS + extra,
        "n_galaxies": args.n_galaxies,
        "raw_size": args.raw_size,
        "runs": runs,
    }
    best = {name: min(r["wall_s"] for r in values) for name, values in runs.items()}
    summary["speed_up_best"] = best["before"] / best["after"]
    ratio = summary["speed_up_best"]
    print(f"best wall: before {best['before']:.1f} s, after {best['after']:.1f} s, speed-up {ratio:.2f}x")
    for name in ("before", "after"):
        stages = sorted({s for r in runs[name] for s in r["busy_s"]})
        print(name, {s: round(min(r["busy_s"].get(s, 0.0) for r in runs[name]), 1) for s in stages})
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
