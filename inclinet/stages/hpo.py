"""inclinet-hpo: the hyper-parameter search, as trial jobs (Optuna journal studies) and a select job.

``inclinet-hpo trial`` runs trial job k of K of a search of N trials (its share:
``shard_range(N, k, K)``), each trial augmenting the search's training galaxies and
training one small model on them, scored on held-out galaxies (and, with ``--foreign``, on
another universe); its study is its ``--journal`` (resumed when present) and its trials go
to ``--output`` as JSON. ``inclinet-hpo select`` merges the trial jobs' files into one
study, writes the best parameters that inclinet-augment and inclinet-train read
(``--hpo-params``) and the summary the evaluation report shows. What is searched and what
is deterministic: :mod:`inclinet.hpo`.

Exit codes: 0 done, 1 failure, 2 bad input/flags, **3 interrupted by SIGTERM (finished
trials kept; rerun the same command to continue)**.
"""

import argparse
import sys

from inclinet import config, hpo, naming
from inclinet.cli import add_common_arguments, run_main

COMMANDS = ("trial", "select")


def _csv_list(text):
    return tuple(item.strip() for item in str(text).split(",") if item.strip())


def run(command, **kwargs):
    """``trial`` -> :func:`inclinet.hpo.run_trials`, ``select`` -> :func:`inclinet.hpo.select` (keyword arguments)."""
    if command == "trial":
        return hpo.run_trials(**kwargs)
    if command == "select":
        return hpo.select(**kwargs)
    raise ValueError(f"unknown command {command!r}; must be one of {', '.join(COMMANDS)}")


def add_arguments(parser):
    commands = parser.add_subparsers(dest="command", required=True, metavar="{trial,select}")
    trial = commands.add_parser(
        "trial",
        help="run one trial job's share of the search",
        description="Run trial job k of K of a search: augment, train and score each of its trials.",
    )
    trial.add_argument(
        "--train",
        nargs="+",
        required=True,
        metavar="SAMPLE.npz",
        help="the full training set's sample of every band (samples/<TAG>_<S>x<S>_train_000.npz)",
    )
    trial.add_argument(
        "--models",
        type=_csv_list,
        required=True,
        metavar="LIST",
        help="comma list of the model families searched over (model4,model5,model6)",
    )
    config.add_argument(trial, "hpo_trials", flag="--trials", required=True, help="trials of the whole search")
    trial.add_argument("--job", required=True, metavar="K/N", help="this job's number and the number of trial jobs")
    config.add_argument(trial, "hpo_epochs", flag="--epochs", help="training epochs of one trial")
    config.add_argument(trial, "n_batches", "-b", help="augmented batches per trial")
    config.add_argument(trial, "per_bin", "-z", help="colour images per 5-degree bin and batch of a trial")
    trial.add_argument(
        "--journal", required=True, metavar="JOURNAL", help="this job's Optuna journal (resumed when present)"
    )
    trial.add_argument("--output", required=True, metavar="TRIALS.json", help="this job's trials as JSON")
    config.add_argument(
        trial,
        "hpo_foreign",
        flag="--foreign",
        metavar="DIR",
        help="also validate on the accepted galaxies of this raw-layout folder (catalog.csv, galaxies/), "
        "e.g. bench/foreign_universe.py's output; the score is then the mean of both RMS values",
    )
    config.add_argument(
        trial,
        "regression_views",
        help="how each trial's training images are varied (as inclinet-augment --regression-views); with "
        "'dihedral' the chains' strengths are not searched",
    )
    trial.add_argument("--work-dir", metavar="DIR", help="scratch folder for the trials' files (default: TMPDIR)")
    add_common_arguments(trial)

    select = commands.add_parser(
        "select",
        help="merge the trial jobs' trials; write the best parameters",
        description="Merge the trial jobs' studies into one; write the best parameters and the report's summary.",
    )
    select.add_argument(
        "-i",
        "--input",
        nargs="+",
        required=True,
        metavar="TRIALS.json",
        help="the trials file of every trial job",
    )
    select.add_argument(
        "--best", required=True, metavar="BEST.json", help=f"best parameters ({naming.HPO_BEST_PARAMS})"
    )
    select.add_argument("--study", required=True, metavar="JOURNAL", help=f"the merged study ({naming.HPO_STUDY})")
    select.add_argument("--summary", required=True, metavar="SEARCH.json", help=f"the summary ({naming.HPO_SUMMARY})")
    add_common_arguments(select)
    return parser


def _run_args(args):
    if args.command == "trial":
        run(
            "trial",
            train=args.train,
            models=args.models,
            trials=args.hpo_trials,
            job=args.job,
            journal=args.journal,
            output=args.output,
            epochs=args.hpo_epochs,
            n_batches=args.n_batches,
            per_bin=args.per_bin,
            seed=args.seed,
            foreign=args.hpo_foreign,
            work_dir=args.work_dir,
            regression_views=args.regression_views,
        )
    else:
        run("select", inputs=args.input, best=args.best, study=args.study, summary=args.summary, seed=args.seed)


def build_parser():
    return add_arguments(
        argparse.ArgumentParser(
            prog="inclinet-hpo",
            description=__doc__.splitlines()[0],
            epilog="Exit codes: 0 done, 1 failure, 2 bad input, 3 interrupted (finished trials kept; rerun to "
            "continue).",
        )
    )


def main(argv=None):
    return run_main(build_parser(), _run_args, argv)


if __name__ == "__main__":
    sys.exit(main())
