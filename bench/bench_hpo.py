#!/usr/bin/env python3
"""Hyper-parameter search benchmark: one training workflow with and without ``--hpo-trials``, RMS and wall time.

Runs ``run_workflow.py`` twice on the local engine with the same synthetic universe, seed
and training settings, once as it is and once with a search of ``--trials`` trials in
``--parallel`` trial jobs before training, and compares the test-set RMS of the ensemble
(``evaluation/metrics.json``), the members' RMS, the wall time of each run and of the
search's jobs (from their exit records), and what the search chose.

Presets:

* ``accuracy``: the accuracy benchmark's scale through the workflow (4,500 galaxies
  rendered at 128 px, 64 px for the networks, model4 on Uset_000..Uset_002, 8 augmented
  batches of 300 colour images per bin, 8 epochs with cosine decay, batch 64, 8 views) and a
  20-trial search (2 jobs, 3 epochs per trial). Over an hour per run on 2 CPU cores.
* ``reduced``: the same comparison at a scale that runs in about a quarter of an hour on 2
  loaded cores (300 galaxies at 96 px, 64 px networks, Uset_000 + Uset_001, 4 batches of 40
  per bin, 8 epochs, batch 32, 4 views; 8 trials in 2 jobs of 2 epochs).

Any flag overrides the preset. Usage (from the repository root)::

    nice -n 10 .venv/bin/python bench/bench_hpo.py --preset reduced [--work bench/out/hpo]
    nice -n 10 .venv/bin/python bench/bench_hpo.py --preset accuracy --trials 20

Prints a Markdown table and writes ``results.json`` in the work folder (both run
directories stay there for inspection: ``hpo/search.json``, ``evaluation/report.html``).
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PRESETS = {
    "accuracy": {
        "synthetic": 4500,
        "synthetic_size": 128,
        "size": 64,
        "models": "model4",
        "subsamples": 2,
        "n_batches": 8,
        "per_bin": 300,
        "epochs": 8,
        "batch_size": 64,
        "views": 8,
        "galaxies_per_job": 500,
        "trials": 20,
        "parallel": 2,
        "hpo_epochs": 3,
    },
    "reduced": {
        "synthetic": 300,
        "synthetic_size": 96,
        "size": 64,
        "models": "model4",
        "subsamples": 1,
        "n_batches": 4,
        "per_bin": 40,
        "epochs": 8,
        "batch_size": 32,
        "views": 4,
        "galaxies_per_job": 150,
        "trials": 8,
        "parallel": 2,
        "hpo_epochs": 2,
    },
}
WORKFLOW_KEYS = (
    "synthetic",
    "synthetic_size",
    "size",
    "models",
    "subsamples",
    "n_batches",
    "per_bin",
    "epochs",
    "batch_size",
    "views",
    "galaxies_per_job",
)


def run_workflow(run_dir, settings, seed, search):
    """Run one workflow on the local engine; returns (exit code, wall seconds)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = [sys.executable, str(REPO / "run_workflow.py")]
    for key in WORKFLOW_KEYS:
        argv += ["--" + key.replace("_", "-"), str(settings[key])]
    argv += ["--tasks", "regression", "--lr-schedule", "cosine", "--seed", str(seed), "--max-parallel", "2"]
    if search:
        argv += ["--hpo-trials", str(settings["trials"]), "--hpo-parallel", str(settings["parallel"])]
        argv += ["--hpo-epochs", str(settings["hpo_epochs"])]
    argv += ["--output-dir", str(run_dir), "-q"]
    start = time.perf_counter()
    code = subprocess.run(argv, cwd=REPO, check=False).returncode
    return code, time.perf_counter() - start, argv[1:]


def job_times(run_dir, prefix):
    """(sum of durations, wall span) in seconds of the jobs whose id starts with ``prefix``."""
    records = [json.loads(path.read_text()) for path in sorted((run_dir / "state" / "exit").glob(f"{prefix}*.json"))]
    if not records:
        return 0.0, 0.0
    total = sum(r["ended"] - r["started"] for r in records)
    return total, max(r["ended"] for r in records) - min(r["started"] for r in records)


def scores(run_dir):
    metrics = json.loads((run_dir / "data" / "evaluation" / "metrics.json").read_text())
    regression = metrics["regression"]
    members = [m["name"] for m in metrics["members"] if m["task"] == "regression"]
    return {
        "ensemble_rms": regression["ensemble_mean"]["all"]["rms"],
        "ensemble_mae": regression["ensemble_mean"]["all"]["mae"],
        "members_rms": {name: regression[name]["all"]["rms"] for name in members},
        "peer_rms": regression["peer"]["all"].get("rms"),
        "test_images": sum(metrics["n_test"].values()),
        "hpo": metrics.get("hpo"),
    }


def markdown(results):
    settings = results["settings"]
    lines = [
        f"Preset `{results['preset']}`: {settings['synthetic']} galaxies, {settings['size']} px, "
        f"{settings['models']}, subsamples {settings['subsamples']}, {settings['epochs']} epochs; search "
        f"{settings['trials']} trials in {settings['parallel']} jobs of {settings['hpo_epochs']} epochs.",
        "",
        "| run | ensemble RMS (deg) | MAE | members RMS | wall (s) | search jobs wall (s) | search CPU-job (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("baseline", "searched"):
        run = results[name]
        members = ", ".join(f"{k} {v:.2f}" for k, v in run["scores"]["members_rms"].items())
        lines.append(
            f"| {name} | {run['scores']['ensemble_rms']:.2f} | {run['scores']['ensemble_mae']:.2f} | {members} | "
            f"{run['wall_s']:.0f} | {run['search_span_s']:.0f} | {run['search_job_s']:.0f} |"
        )
    hpo = results["searched"]["scores"]["hpo"]
    if hpo and hpo.get("best"):
        best = hpo["best"]
        lines.append("")
        lines.append(
            f"Best trial {best['trial']} (held-out RMS {best['value']:.2f} deg): "
            + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in best["params"].items())
        )
        if hpo.get("importances"):
            lines.append("Importances: " + ", ".join(f"{k} {v:.2f}" for k, v in hpo["importances"].items()))
        else:
            lines.append(hpo.get("importance_note", ""))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="reduced")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "hpo")
    parser.add_argument("--seed", type=int, default=2026)
    for key in (*WORKFLOW_KEYS, "trials", "parallel", "hpo_epochs"):
        parser.add_argument("--" + key.replace("_", "-"), dest=key, default=None)
    parser.add_argument("--only", choices=("baseline", "searched"), help="run one of the two")
    args = parser.parse_args(argv)
    settings = dict(PRESETS[args.preset])
    settings.update({k: v for k, v in vars(args).items() if k in settings and v is not None})
    args.work.mkdir(parents=True, exist_ok=True)
    results_path = args.work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() and args.only else {}
    results.update({"preset": args.preset, "settings": settings, "seed": args.seed})
    for name, search in (("baseline", False), ("searched", True)):
        if args.only and args.only != name:
            continue
        run_dir = args.work / name
        code, wall, command = run_workflow(run_dir, settings, args.seed, search)
        if code != 0:
            print(f"bench_hpo: the {name} run failed (exit {code}); see {run_dir}/logs", file=sys.stderr)
            return 1
        job_s, span_s = job_times(run_dir, "hpo_")
        results[name] = {
            "command": " ".join(command),
            "wall_s": wall,
            "search_job_s": job_s,
            "search_span_s": span_s,
            "scores": scores(run_dir),
        }
        results_path.write_text(json.dumps(results, indent=1))
        print(f"{name}: exit 0, {wall:.0f} s wall, ensemble RMS {results[name]['scores']['ensemble_rms']:.2f} deg")
    if "baseline" in results and "searched" in results:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
