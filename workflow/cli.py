"""run_workflow.py / inclinet-workflow: build the DAG from flags, write the run directory, hand it to an engine.

Usage::

    run_workflow.py [BUILD FLAGS] [--engine local|pegasus|slurm] [--output-dir RUN] [--dry-run]
    run_workflow.py --config run.yaml [FLAGS]  # settings from a YAML file; flags override it
    run_workflow.py --demo                 # the embedded default, on the local engine
    run_workflow.py status RUN             # counts by state, percent done, per-job table
    run_workflow.py resume RUN             # re-run failed and unfinished jobs only
    run_workflow.py cancel RUN             # stop the jobs of a run

Building never imports TensorFlow; every run directory gets ``run.json``, ``jobs.json``
and the five Pegasus files (``workflow.yml``, ``sites.yml``, ``replicas.yml``,
``transformations.yml``, ``pegasus.properties``) whatever the engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from inclinet import config as settings
from inclinet import naming
from inclinet.cli import add_common_arguments, run_main
from inclinet.errors import ConfigError, InputError
from inclinet.io import atomic_write_json
from workflow import catalogs, dag
from workflow.engines import ENGINES
from workflow.engines import load as load_engine

logger = logging.getLogger(__name__)

COMMANDS = ("status", "resume", "cancel")

#: The embedded default (--demo): 1,500 synthetic galaxies through the whole DAG
#: on the local engine in 20-30 minutes on 2 CPU cores. 64 px keeps training fast on
#: a CPU, which rules out model5 (its convolutions need >= 76 px); the training budget goes
#: to one family, model4 (the fastest), as two bagged members (full set + 1 subsample)
#: trained long enough to learn, rather than to more families trained too little to.
DEMO = {
    "synthetic": 1500,
    "synthetic_size": 128,
    "size": 64,
    "galaxies_per_job": 375,
    "subsamples": 1,
    "models": ("model4",),
    "tasks": ("regression", "binary"),
    "epochs": 12,
    "batch_size": 32,
    "lr_schedule": "cosine",
    "n_batches": 8,
    "per_bin": 60,
    "views": 4,
}
DEMO_OUTPUT_DIR = naming.DEMO_RUN_DIR

#: WorkflowConfig fields set by a flag of the same name (seed is always given; name has no
#: flag), and every flag that belongs to the build rather than to the engine.
_CONFIG_FLAGS = tuple(f.name for f in dataclasses.fields(dag.WorkflowConfig) if f.name not in ("seed", "name"))
_BUILD_KEYS = {*_CONFIG_FLAGS, "seed", "demo", "verbose", "quiet", "config"}


#: Settings of the registry that are flags of the "science settings" group and keys of the
#: config file's ``science:`` mapping alike.
_TRAINING_SETTINGS = (
    "subsamples",
    "epochs",
    "batch_size",
    "lr_schedule",
    "n_batches",
    "per_bin",
    "binary_per_bin",
    "binary_learning_rate",
    "binary_trunk",
    "regression_views",
    "views",
)


def _csv_list(text):
    return tuple(item.strip() for item in str(text).split(",") if item.strip())


def add_build_arguments(parser):
    data = parser.add_argument_group("data (choose --synthetic N, or --data-path with --catalog)")
    data.add_argument("--synthetic", type=int, metavar="N", help="draw N synthetic galaxies as the first jobs")
    data.add_argument("--data-path", help="folder of the raw images pgc<id>_d25x2_rot_<band>.{png,sdss.jpg}")
    data.add_argument("--catalog", help="catalog file (pipe-separated original or CSV) of the raw images")
    data.add_argument("--root", help="root of the raw image names pgc<id>_<root>_<band>.png (d25x2_rot)")
    settings.add_argument(data, "synthetic_size", default=None)
    data.add_argument(
        "--predict-with",
        metavar="BUNDLE",
        help="survey workflow: measure the catalog's galaxies with this model bundle (measure per "
        "chunk, merge, summarize) instead of training",
    )
    data.add_argument(
        "--demo",
        action="store_true",
        help="the embedded default: 1,500 synthetic galaxies, 64 px, two model4 members + binary, local engine",
    )

    science = parser.add_argument_group("science settings")
    science.add_argument("--bands", type=_csv_list, help="comma list of g,r,i,gri (default all four)")
    settings.add_argument(science, "size", default=None)
    science.add_argument("--models", type=_csv_list, help="comma list of model4,model5,model6 (default all)")
    science.add_argument("--tasks", type=_csv_list, help="comma list of regression,binary (default both)")
    for name in _TRAINING_SETTINGS:
        settings.add_argument(science, name, default=None)

    search = parser.add_argument_group("hyper-parameter search (inclinet-hpo; none without --hpo-trials)")
    for name in ("hpo_trials", "hpo_parallel", "hpo_epochs"):
        settings.add_argument(search, name, default=None)
    settings.add_argument(search, "hpo_foreign", default=None, metavar="DIR")

    execution = parser.add_argument_group("execution settings")
    settings.add_argument(execution, "galaxies_per_job", default=None)
    settings.add_argument(
        execution,
        "retries",
        default=None,
        help="retries of a failed job (exit code 2, a usage or input error, is never retried; "
        "training gets more on Pegasus)",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="settings from a YAML file with a 'science:' and an 'execution:' section (keys as the "
        "flags, with underscores); flags given as well override it",
    )
    run.add_argument("--engine", choices=ENGINES, default="local", help="where the jobs run (default local)")
    run.add_argument("--output-dir", "-o", help="run directory RUN (default runs/<time>, or demo-run with --demo)")
    run.add_argument("--dry-run", action="store_true", help="build and write the run directory, run nothing")
    run.add_argument("--force", action="store_true", help="rebuild over an existing run directory")
    run.add_argument("--sites", help=f"site catalog to start from (default {catalogs.DEFAULT_SITES.name})")
    run.add_argument("--replicas", help=f"replica catalog to start from (default {catalogs.DEFAULT_REPLICAS.name})")
    run.add_argument(
        "--container-image",
        default=catalogs.DEFAULT_IMAGE,
        help="Singularity image of the transformations (file://, docker://, https://...)",
    )
    return parser


def add_engine_arguments(parser):
    """Each engine's own flags, in its own group (an engine that fails to import is left out)."""
    for name in ENGINES:
        try:
            engine = load_engine(name)
        except ImportError as exc:
            logger.debug("engine %s not available: %s", name, exc)
            continue
        engine.add_arguments(parser.add_argument_group(f"{name} engine"))
    return parser


def build_parser():
    parser = argparse.ArgumentParser(
        prog="run_workflow.py",
        description="Build the inclinet workflow (one DAG) and run it locally, through Pegasus or on SLURM. "
        "Also: 'run_workflow.py status|resume|cancel RUN'.",
    )
    add_build_arguments(parser)
    add_engine_arguments(parser)
    add_common_arguments(parser)
    return parser


def build_command_parser(command):
    parser = argparse.ArgumentParser(
        prog=f"run_workflow.py {command}",
        description={
            "status": "show the state of a run",
            "resume": "re-run the failed and unfinished jobs of a run",
            "cancel": "stop the running jobs of a run",
        }[command],
    )
    parser.add_argument("run_dir", metavar="RUN", help="a run directory made by run_workflow.py")
    if command == "status":
        parser.add_argument(
            "--verify",
            action="store_true",
            help="re-read every output of every finished job and compare its size and SHA-256 "
            "with what was recorded when the job ended (exit 1 on a mismatch)",
        )
    if command == "resume":
        parser.add_argument(
            "--retries",
            dest="retries_override",
            type=_retries_flag,
            metavar="N",
            help="retries of every job run again now, instead of the --retries of the build "
            "(local and slurm engines; exit code 2 is never retried)",
        )
    add_engine_arguments(parser)
    add_common_arguments(parser, seed=False)
    parser.set_defaults(command=command)
    return parser


def _retries_flag(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid --retries: {text!r}; must be an integer >= 0")
    return value


# -- --config FILE.yaml ----------------------------------------------------------------------


def _text(description="a non-empty string"):
    return {"type": "string", "minLength": 1, "description": description}


def _choice_list(choices):
    text = ", ".join(choices)
    return {
        "type": "array",
        "minItems": 1,
        "uniqueItems": True,
        "items": {"enum": list(choices), "description": f"one of {text}"},
        "description": f"a non-empty list of {text} without repeats",
    }


def _integer(minimum=1):
    return {"type": "integer", "minimum": minimum, "description": f"an integer >= {minimum}"}


def _number(minimum=0):
    return {"type": "number", "exclusiveMinimum": minimum, "description": f"a number > {minimum}"}


#: The keys of a --config file's ``science:`` section (what is computed): the build flags' dests.
SCIENCE_KEYS = {
    "synthetic": _integer(1),
    "data_path": _text("a folder path"),
    "catalog": _text("a file path"),
    "root": _text(),
    "predict_with": _text("a bundle folder path"),
    "bands": _choice_list(naming.BANDS),
    "models": _choice_list(naming.MODELS),
    "tasks": _choice_list(naming.TASKS),
    **{
        name: settings.setting_schema(name)
        for name in (
            "size",
            "synthetic_size",
            *_TRAINING_SETTINGS,
            "seed",
            "hpo_trials",
            "hpo_parallel",
            "hpo_epochs",
        )
    },
    "hpo_foreign": _text("a folder path"),
}
#: The keys of its ``slurm:`` mapping inside ``execution:`` (dest ``slurm_<key>``).
SLURM_KEYS = {
    "partition": _text(),
    "gpu_partition": _text(),
    "account": _text(),
    "sbatch_options": {
        "type": "array",
        "items": _text("an sbatch option such as --qos=short"),
        "description": "a list of sbatch options",
    },
    "container": _text("an Apptainer/Singularity image path"),
    "container_runtime": {"enum": ["apptainer", "singularity"], "description": "apptainer or singularity"},
    "request_gpus": {"enum": ["auto", "yes", "no"], "description": "auto, yes or no"},
    "gpu_flag": {"enum": ["gres", "gpus"], "description": "gres or gpus"},
    "submit_workers": _integer(1),
    "wait": {"type": "boolean", "description": "true or false"},
    "poll_interval": _number(0),
    "wait_timeout": _number(0),
}
#: The keys of the ``execution:`` section (how and where it runs).
EXECUTION_KEYS = {
    "engine": {"enum": list(ENGINES), "description": "one of " + ", ".join(ENGINES)},
    "output_dir": _text("a folder path"),
    "galaxies_per_job": settings.setting_schema("galaxies_per_job"),
    "retries": settings.setting_schema("retries"),
    "resources": {
        "type": "array",
        "items": {
            "type": "string",
            "pattern": rf"^({'|'.join(dag.STAGES)})\.({'|'.join(dag.RESOURCE_KEYS)})=[0-9]+$",
            "description": "STAGE.KEY=VALUE with KEY one of "
            + ", ".join(dag.RESOURCE_KEYS)
            + " and a whole number, e.g. train.runtime=7200",
        },
        "description": "a list of STAGE.KEY=VALUE strings",
    },
    "max_parallel": _integer(1),
    "cluster_size": _integer(1),
    "container_mode": {"enum": list(dag.CONTAINER_MODES), "description": " or ".join(dag.CONTAINER_MODES)},
    "container_image": _text("an image URL (file://, docker://, https://)"),
    "sites": _text("a file path"),
    "replicas": _text("a file path"),
    "pegasus_site": _text(),
    "submit_dir": _text("a folder path"),
    "reuse": {"type": "array", "items": _text("a run or submit folder"), "description": "a list of folders"},
    "slurm": {
        "type": ["object", "null"],
        "properties": SLURM_KEYS,
        "additionalProperties": False,
        "description": "a mapping of SLURM engine settings",
    },
}


def _section(keys, other, other_name):
    misplaced = {
        key: f"{key} is {'an execution' if other_name == 'execution' else 'a science'} setting: "
        f"put it under {other_name}:"
        for key in other
    }
    # null: a section left empty ("science:" with nothing under it) sets nothing.
    return {
        "type": ["object", "null"],
        "properties": keys,
        "additionalProperties": False,
        "x-misplaced": misplaced,
        "description": "a mapping of settings",
    }


def config_file_schema():
    """The JSON schema of a --config file: a ``science:`` and an ``execution:`` section, nothing else."""
    top_hints = {key: f"{key} is a science setting: put it under science:" for key in SCIENCE_KEYS}
    top_hints.update({key: f"{key} is an execution setting: put it under execution:" for key in EXECUTION_KEYS})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "science": _section(SCIENCE_KEYS, EXECUTION_KEYS, "execution"),
            "execution": _section(EXECUTION_KEYS, SCIENCE_KEYS, "science"),
        },
        "additionalProperties": False,
        "x-misplaced": top_hints,
        "description": "a mapping with the sections science and execution",
    }


def read_config_file(path):
    """``{flag dest: value}`` of a --config file, validated (:class:`ConfigError`/:class:`InputError`, exit 2)."""
    data = settings.load_yaml_mapping(path)
    settings.validate_document(data, config_file_schema(), str(path))
    values = dict(data.get("science") or {})
    execution = dict(data.get("execution") or {})
    for key, value in (execution.pop("slurm", None) or {}).items():
        values[f"slurm_{key}"] = value
    values.update(execution)
    for key in ("bands", "models", "tasks", "resources"):
        if key in values:
            values[key] = tuple(values[key])
    return values


#: Flags that collect repeated values (argparse "append"): given when their value is not None.
_APPEND_DESTS = ("reuse", "resources", "slurm_sbatch_options")
_UNSET = object()


def _given_dests(argv, dests):
    """Those of ``dests`` whose flags are given in ``argv`` (rather than left at their defaults).

    argparse sets a default only where the namespace has no value yet: parsing into a
    namespace that holds a marker for each dest leaves the marker wherever no flag was given.
    """
    namespace = argparse.Namespace(**{dest: None if dest in _APPEND_DESTS else _UNSET for dest in dests})
    build_parser().parse_args(argv, namespace=namespace)
    return {dest for dest in dests if getattr(namespace, dest) not in (_UNSET, None)}


def apply_config_file(args, argv):
    """Fill ``args`` from ``args.config``: defaults < the file < flags given on the command line."""
    if not args.config:
        return args
    values = read_config_file(args.config)
    given = _given_dests(list(argv) if argv is not None else sys.argv[1:], values)
    for dest, value in values.items():
        if dest not in given:
            setattr(args, dest, value)
    return args


def config_from_args(args):
    """The :class:`~workflow.dag.WorkflowConfig` of the flags (--demo fills what is not given)."""
    values = dict(DEMO) if args.demo else {}
    for name in _CONFIG_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    values["seed"] = args.seed
    if args.demo and args.predict_with:
        raise ConfigError("--demo trains a bundle: give --predict-with with --synthetic N or --data-path/--catalog")
    if args.demo and (args.data_path or args.catalog):
        raise ConfigError("--demo draws synthetic galaxies: give it without --data-path/--catalog")
    if "bands" in values:
        values["bands"] = tuple("gri" if b.upper() == "RGB" else b for b in values["bands"])
    return dag.WorkflowConfig(**values).validate()


def default_output_dir(args):
    if args.output_dir:
        return Path(args.output_dir)
    if args.demo:
        return Path(DEMO_OUTPUT_DIR)
    return Path(naming.default_run_dir())


def write_run(run_dir, jobs, config, args, argv):
    """Write ``run.json``, ``jobs.json``, the Pegasus files and the missing-input report."""
    run_dir = Path(run_dir)
    if (run_dir / dag.JOBS_FILE).exists() and not args.force:
        raise ConfigError(
            f"{run_dir} already holds a run; use 'run_workflow.py resume {run_dir}', "
            "another --output-dir, or --force to rebuild it"
        )
    if args.force:
        # The bookkeeping of the old DAG would mislead status and resume.
        for stale in (naming.STATE_DIR, naming.LOGS_DIR):
            shutil.rmtree(run_dir / stale, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    dag.save_jobs(run_dir, jobs)
    catalogs.write_run_catalogs(
        run_dir, jobs, config, sites_file=args.sites, replicas_file=args.replicas, image=args.container_image
    )
    engine_args = {k: v for k, v in vars(args).items() if k not in _BUILD_KEYS}
    atomic_write_json(
        run_dir / naming.RUN_FILE,
        {
            "format_version": 1,
            "engine": args.engine,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": list(argv) if argv is not None else sys.argv[1:],
            "demo": bool(args.demo),
            "config_file": str(Path(args.config).resolve()) if args.config else None,
            "config": config.to_dict(),
            "engine_args": engine_args,
            "n_jobs": len(jobs),
        },
    )


def summarize_counts(jobs):
    counts = {}
    for job in jobs:
        counts[job.stage] = counts.get(job.stage, 0) + 1
    return ", ".join(f"{stage} {counts[stage]}" for stage in dag.STAGES if stage in counts)


def check_inputs(config, run_dir):
    """Refuse, before anything is written, inputs that would only fail later inside a job.

    Messages name the user's own paths (not the run directory's links to them).
    """
    run_dir = Path(run_dir)
    for parent in (run_dir, *run_dir.parents):
        if parent.exists() and not parent.is_dir():
            raise ConfigError(
                f"invalid --output-dir: {str(run_dir)!r}; {parent} is a file, not a folder; "
                "must name a new or existing folder"
            )
    if config.data_path:
        folder = Path(config.data_path)
        if not folder.exists():
            raise InputError(f"--data-path {folder}: folder not found; give the folder of the raw images")
        if not folder.is_dir():
            raise InputError(f"--data-path {folder}: not a folder; give the folder of the raw images")
        if not os.access(folder, os.R_OK | os.X_OK):
            raise InputError(f"--data-path {folder}: folder not readable (permission denied); fix its permissions")
        if not any(entry.is_file() for entry in folder.iterdir()):
            raise InputError(
                f"--data-path {folder}: the folder holds no files; give the folder of the raw images "
                f"(pgc<id>_{config.root}_<band>.png, ..._gri.sdss.jpg)"
            )
    if config.catalog:
        catalog = Path(config.catalog)
        if not catalog.exists():
            raise InputError(f"--catalog {catalog}: file not found; give the path of the catalog file")
        if not catalog.is_file():
            raise InputError(f"--catalog {catalog}: not a regular file; give the path of the catalog file")
        if not os.access(catalog, os.R_OK):
            raise InputError(f"--catalog {catalog}: not readable (permission denied); fix its permissions")


def check_found_images(config, jobs, missing):
    """Refuse real data of which not one raw image was found: the data path or root is wrong."""
    if config.synthetic or not missing:
        return
    if not any(lfn.startswith(dag.RAW_GALAXIES + "/") for job in jobs for lfn in job.inputs):
        example = missing[0][2]
        raise InputError(
            f"--data-path {config.data_path}: none of the catalog's galaxies has an image there "
            f"(e.g. {example} not found); check --data-path, --catalog and --root"
        )


def _missing_reason(config, pgc, band):
    """Why a raw image was not declared: not there, or something that is not an image under its name."""
    from inclinet.images import file_problem

    folder = Path(config.data_path)
    for name in naming.raw_image_names(pgc, band, config.root):
        if os.path.lexists(folder / name):
            return f"{folder / name}: {file_problem(folder / name) or 'not a regular file'}"
    return "raw image not found"


def run_build(args, argv=None):
    apply_config_file(args, argv)
    config = config_from_args(args)
    run_dir = default_output_dir(args)
    start = time.perf_counter()
    check_inputs(config, run_dir)
    missing = []
    jobs = dag.build_jobs(config, missing=missing)
    check_found_images(config, jobs, missing)
    write_run(run_dir, jobs, config, args, argv)
    if missing:
        from inclinet.report import SkipReport

        report = SkipReport("workflow")
        for pgc, band, path in missing:
            report.rows.append({"pgc": pgc, "band": band, "file": path, "reason": _missing_reason(config, pgc, band)})
        report.write(run_dir / naming.MISSING_INPUTS)
        logger.warning(
            "%d raw images not found (not declared; prep reports them): see %s",
            len(missing),
            run_dir / naming.MISSING_INPUTS,
        )
    logger.info(
        "built %d jobs (%s) in %.2f s into %s", len(jobs), summarize_counts(jobs), time.perf_counter() - start, run_dir
    )
    if args.dry_run:
        print(
            f"dry run: {len(jobs)} jobs written to {run_dir} (engine {args.engine} not started); "
            f"run it with 'run_workflow.py resume {run_dir}'"
        )
        return 0
    code = load_engine(args.engine).run(run_dir, jobs, args)
    if code == 0 and args.engine == "local":
        print_next_steps(run_dir, config, jobs)
    return code


def print_next_steps(run_dir, config, jobs=None):
    data = Path(run_dir) / naming.DATA_DIR
    if config.predict_with is not None:
        jobs = jobs if jobs is not None else dag.load_jobs(run_dir)
        products = [lfn for job in jobs if job.stage in ("merge", "summarize") for lfn in job.outputs]
        for lfn in products:
            print(f"survey {Path(lfn).suffix[1:]:8s} {data / lfn}")
        return
    report = data / naming.EVALUATION_DIR / "report.html"
    bundle = data / dag.BUNDLE_DIR
    try:
        ids = dag._synthetic_ids(config) if config.synthetic else None
    except ImportError:
        ids = None
    example = (data / dag.RAW_GALAXIES / naming.raw_image_names(ids[0], "gri", config.root)[0]) if ids else "IMAGE.jpg"
    print(f"evaluation report: {report}")
    print(f"metrics:           {data / naming.EVALUATION_DIR / 'metrics.json'}")
    print(f"model bundle:      {bundle}")
    print(f"predict with it:   inclinet-predict --bundle {bundle} {example}")


def run_command(args):
    """``status``/``resume``/``cancel`` of a run: the engine recorded in ``run.json`` gets the run's jobs.

    Flags the engine recorded at build (its ``RECORDED_FLAGS``: the local engine's
    ``--max-parallel``, Pegasus's site and submit directory) apply again unless given now;
    engines never read ``run.json`` themselves.
    """
    from workflow.engines.common import read_run_info

    info = read_run_info(args.run_dir)
    engine_name = info.get("engine", "local")
    engine = load_engine(engine_name)
    recorded = info.get("engine_args") or {}
    for name in getattr(engine, "RECORDED_FLAGS", ()):
        if getattr(args, name, None) is None and recorded.get(name) is not None:
            setattr(args, name, recorded[name])
    jobs = dag.load_jobs(args.run_dir)
    code = getattr(engine, args.command)(Path(args.run_dir), jobs, args)
    if args.command == "resume" and code == 0 and engine_name == "local" and "config" in info:
        try:
            config = dag.WorkflowConfig.from_dict(info["config"])
        except TypeError:
            return code
        print_next_steps(args.run_dir, config)
    return code


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # The Pegasus API logs a line per job added: noise at tens of thousands of files.
    logging.getLogger("Pegasus").setLevel(logging.WARNING)
    if argv and argv[0] in COMMANDS:
        parser = build_command_parser(argv[0])
        return _run(parser, run_command, argv[1:])
    parser = build_parser()
    return _run(parser, lambda args: run_build(args, argv), argv)


def _run(parser, func, argv):
    """:func:`inclinet.cli.run_main` with the engine's exit code passed through."""
    result = {}

    def call(args):
        result["code"] = func(args)

    try:
        code = run_main(parser, call, argv)
    except BrokenPipeError:  # output piped into head & co.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return 0
    return code if code else int(result.get("code") or 0)


__all__ = ["main", "build_parser", "config_from_args", "InputError"]

if __name__ == "__main__":
    sys.exit(main())
