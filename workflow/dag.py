"""The inclinet DAG: jobs with their files and resources, built from flags, as JobSpecs or a Pegasus workflow.

One list of :class:`JobSpec` is the single description of a run. The local and SLURM
engines execute it directly; :func:`to_pegasus` turns the very same list into a
``Pegasus.api.Workflow`` whose edges Pegasus infers from the declared files. Building it
never imports TensorFlow. Every file argument is a logical file name (LFN): a POSIX path
relative to the run's data directory, spelled by :mod:`inclinet.naming`.

Job graph::

    [synth-catalog, synth x K] -> prep (band x chunk) -> compress (band) -> split
        -> augment (training subset) -> train (model x subset) -> evaluate (+ bundle)

with ``hpo_trials`` N (a hyper-parameter search before training)::

    split -> hpo trial x K -> hpo select -> augment (regression subsets read the best
        parameters) -> train (regression members read them) -> evaluate (+ the search's summary)

and with ``predict_with`` (a finished bundle), the survey workflow::

    [synth-catalog, synth x K] -> measure (chunk, all bands) -> merge -> summarize

(over real data a measure job reads its chunk's catalog slice and the image folder; in
the Pegasus workflow a ``pack`` job on the submit host first puts the chunk's images into
one archive, see :func:`pegasus_survey_jobs`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from inclinet import config as settings
from inclinet import naming
from inclinet import stages as registry
from inclinet.errors import ConfigError, InputError, invalid
from inclinet.io import atomic_write_json

#: The stages the DAG runs, in data-flow order (from the stage registry).
STAGES = registry.DAG_STAGES
#: The survey workflow's stages (``predict_with``), and those of the training workflow.
SURVEY_STAGES = ("measure", "merge", "summarize")
#: The hyper-parameter search's stage: in the training DAG only with ``hpo_trials``.
SEARCH_STAGES = ("hpo",)
TRAINING_STAGES = tuple(stage for stage in STAGES if stage not in SURVEY_STAGES + SEARCH_STAGES)

#: Logical folder of the raw inputs (``raw/catalog.csv``, ``raw/galaxies/<image>``) and of
#: the final products; the names are :mod:`inclinet.naming`'s.
RAW_DIR = naming.RAW_DIR
RAW_CATALOG = naming.RAW_CATALOG
RAW_TRUTH = naming.RAW_TRUTH
RAW_GALAXIES = naming.RAW_GALAXIES
EVALUATION_DIR = naming.EVALUATION_DIR
BUNDLE_DIR = naming.BUNDLE_DIR


@dataclass
class JobSpec:
    """One job of the DAG, as every engine sees it.

    ``args`` are passed verbatim to ``executable``; file arguments in them are LFNs and
    every job runs with the run's data directory as its working directory.
    """

    id: str
    stage: str
    executable: str
    args: list[str]
    inputs: list[str]
    outputs: list[str]
    cores: int = 1
    memory_mb: int = 2000
    runtime_s: int = 600
    gpus: int = 0
    checkpoint: str | None = None
    retries: int = 2
    parents: list[str] = field(default_factory=list)
    #: Pegasus label-clustering group (``--cluster-size``), None when not clustered.
    cluster: str | None = None


@dataclass(frozen=True)
class Resources:
    cores: int
    memory_mb: int
    runtime_s: int
    gpus: int = 0


#: Cores and GPUs per stage (declared in the stage registry).
STAGE_SLOTS = {name: (registry.get(name).cores, registry.get(name).gpus) for name in STAGES}

# -- sizing rule ------------------------------------------------------------------------
#
# runtime = max(RUNTIME_FLOOR_S, RUNTIME_SAFETY x (fixed + per item x items x pixel factor)),
# rounded up to a minute; memory = max(floor, fixed + the bytes the job holds at once).
# The per-item costs are the CPU-second rates of BENCHMARKS.md (one core of the 2-core
# development machine): synth 4.6 galaxies/s at 512 px, prep 130 images/s, compress 1 ms and
# split 6 ms per galaxy at 128 px, augment 400 images/s at 128 px, model4 training 530
# images/s at 64 px (model5/6 half that). Pixel factors scale quadratically with the image
# size. The runtime is a deadline, not a forecast: Pegasus turns it into kickstart's kill
# time (-k) and the batch walltime, hence the safety factor and the floor. Override any of
# it per stage with --resources STAGE.KEY=VALUE (KEY: cores, gpus, memory in MB, runtime in s).

RUNTIME_SAFETY = 3
RUNTIME_FLOOR_S = 600
#: Training runs on the CPU in the worst case (a GPU node is much faster): images per second.
TRAIN_IMAGES_PER_S = {"model4": 530, "model5": 265, "model6": 265}
#: Colour + gray augmented images per 5-degree bin and batch: 9 bins x 2 (see inclinet-augment).
IMAGES_PER_BIN = 18
TEST_FRACTION = settings.DEFAULTS.test_fraction
#: Galaxies an inclinet-measure job holds at once (inclinet.survey.GALAXIES_PER_BATCH).
GALAXIES_PER_BATCH = 64
RESOURCE_KEYS = {"cores": "cores", "gpus": "gpus", "memory": "memory_mb", "runtime": "runtime_s"}


def _pixels(size, reference):
    return (size / reference) ** 2


def _deadline(seconds):
    return max(RUNTIME_FLOOR_S, 60 * math.ceil(RUNTIME_SAFETY * seconds / 60))


def binary_per_class(config):
    """Augmented colour images per class and batch of the binary task (``--binary-per-bin``).

    0 (the default) gives the binary task batches as large as the regression's: its two
    classes take the images of the regression's nine 5-degree bins.
    """
    if config.binary_per_bin:
        return int(config.binary_per_bin)
    return math.ceil(IMAGES_PER_BIN * config.per_bin / 4)


def sized_resources(stage, config, *, n_galaxies, items=0, model="model4", members=1):
    """Resources of one job of ``stage`` from the work it does (the rule above).

    ``n_galaxies`` is the number of catalog rows of the run; ``items`` the galaxies of a
    synth/prep chunk; ``model`` the network a training job fits; ``members`` the models
    evaluation applies. Overrides of ``config.resources`` are applied last.
    """
    cores, gpus = STAGE_SLOTS[stage]
    bands = len(config.bands)
    size = config.size
    augmented = IMAGES_PER_BIN * config.per_bin * config.n_batches
    test_images = max(1, round(TEST_FRACTION * n_galaxies)) * bands
    if stage == "synth":
        seconds = 30 + items * (0.05 + 0.22 * _pixels(config.synthetic_size, 512))
        memory = 600 + bands * config.synthetic_size**2 * 80 / 1e6
    elif stage == "prep":
        seconds = 10 + items / 130
        memory = 500
    elif stage == "compress":
        seconds = 10 + n_galaxies * 0.001 * _pixels(size, 128)
        memory = 1000
    elif stage == "split":
        seconds = 10 + n_galaxies * 0.006 * _pixels(size, 128)
        memory = 1000
    elif stage == "augment":
        seconds = 10 + (augmented / 400 + n_galaxies * 0.0006) * _pixels(size, 128)
        memory = 300 + config.per_bin * IMAGES_PER_BIN * size * size * 3 * 3 / 1e6
    elif stage == "train":
        per_epoch = (augmented + test_images) / TRAIN_IMAGES_PER_S[model] * _pixels(size, 64)
        seconds = 60 + config.epochs * per_epoch
        memory = max(8000, 4000 + test_images * size * size * 3 * 2 / 1e6)
    elif stage == "hpo":
        # A trial job: its share of the trials, each augmenting the search's training galaxies
        # (4/5 of the full set) and training --hpo-epochs epochs on them, validating on the rest.
        trials = math.ceil(config.hpo_trials / config.hpo_parallel)
        galaxies = n_galaxies * (1 - TEST_FRACTION)
        # Validation per epoch: the held-out fifth of the galaxies, colour and as many gray images.
        held_out_images = 2 * 0.2 * galaxies
        per_trial = (augmented / 400 + galaxies * 0.0006) * _pixels(size, 128) + config.hpo_epochs * (
            augmented + held_out_images
        ) / TRAIN_IMAGES_PER_S[model] * _pixels(size, 64)
        seconds = 60 + trials * (30 + per_trial)
        memory = max(8000, 4000 + galaxies * bands * size * size * 3 * 2 / 1e6)
    elif stage == "measure":
        # Per image: reading and normalising (~10 ms) plus every member over every view.
        seconds = 10 + items * bands * (0.01 + members * config.views / 400 * _pixels(size, 64))
        memory = 1500 + GALAXIES_PER_BATCH * bands * size * size * 3 * 4 / 1e6
    elif stage == "merge":
        seconds = 10 + n_galaxies / 5000
        memory = 1000 + config.galaxies_per_job * 2000 / 1e6
    elif stage == "summarize":
        seconds = 30 + n_galaxies / 20000
        memory = 1000 + n_galaxies * 200 / 1e6
    else:  # evaluate: every member over every test view, then the report
        seconds = 60 + members * test_images * config.views / 1500 * _pixels(size, 64)
        memory = max(8000, 4000 + test_images * size * size * 3 * 2 / 1e6)
    values = {"cores": cores, "gpus": gpus, "memory_mb": 100 * math.ceil(memory / 100), "runtime_s": _deadline(seconds)}
    values.update(resource_overrides(config).get(stage, {}))
    return Resources(**values)


def resource_overrides(config):
    """``{stage: {field: int}}`` from ``config.resources`` (``STAGE.KEY=VALUE`` strings)."""
    overrides = {}
    for item in config.resources:
        stage, _, rest = str(item).partition(".")
        key, _, value = rest.partition("=")
        if stage not in STAGES or key not in RESOURCE_KEYS or not value.strip().isdigit():
            raise invalid(
                "--resources",
                item,
                "STAGE.KEY=VALUE with STAGE one of "
                + ", ".join(STAGES)
                + ", KEY one of "
                + ", ".join(RESOURCE_KEYS)
                + " and VALUE a whole number",
            )
        overrides.setdefault(stage, {})[RESOURCE_KEYS[key]] = int(value)
    return overrides


#: On Pegasus a training job is stopped at checkpoint time (SIGTERM), saves its checkpoint
#: and is retried from it: it gets one extra retry per interval (see pegasus_retries).
CHECKPOINT_TIME_MIN = 50
MAX_WALLTIME_MIN = 60
CONTAINER_MODES = ("stage", "shared")


@dataclass
class WorkflowConfig:
    """The science settings of one run (what run_workflow.py's build flags set)."""

    synthetic: int = 0
    data_path: str | None = None
    catalog: str | None = None
    bands: tuple = naming.BANDS
    size: int = settings.DEFAULTS.size
    synthetic_size: int = settings.DEFAULTS.synthetic_size
    galaxies_per_job: int = settings.DEFAULTS.galaxies_per_job
    subsamples: int = settings.DEFAULTS.subsamples
    models: tuple = naming.MODELS
    tasks: tuple = naming.TASKS
    epochs: int = settings.DEFAULTS.epochs
    batch_size: int = settings.DEFAULTS.batch_size
    lr_schedule: str = settings.DEFAULTS.lr_schedule
    n_batches: int = settings.DEFAULTS.n_batches
    per_bin: int = settings.DEFAULTS.per_bin
    binary_per_bin: int = settings.DEFAULTS.binary_per_bin
    binary_learning_rate: float = settings.DEFAULTS.binary_learning_rate
    binary_trunk: str = settings.DEFAULTS.binary_trunk
    regression_views: str = settings.DEFAULTS.regression_views
    views: int = settings.DEFAULTS.views
    seed: int = settings.DEFAULTS.seed
    retries: int = settings.DEFAULTS.retries
    root: str = naming.DEFAULT_ROOT
    name: str = "inclinet"
    #: Resource overrides, ``STAGE.KEY=VALUE`` (see :func:`sized_resources`).
    resources: tuple = ()
    #: Pegasus: synth/prep jobs per clustered job (label clustering), None for no clustering.
    cluster_size: int | None = None
    #: Pegasus: ``stage`` the container image to each site, or read it in place (``shared``).
    container_mode: str = "stage"
    #: The survey workflow: measure the catalog's galaxies with this bundle instead of training.
    predict_with: str | None = None
    #: The hyper-parameter search before training: trials (0: none), trial jobs, epochs per trial.
    hpo_trials: int = settings.DEFAULTS.hpo_trials
    hpo_parallel: int = settings.DEFAULTS.hpo_parallel
    hpo_epochs: int = settings.DEFAULTS.hpo_epochs
    #: A raw-layout folder of another universe every trial also validates on (None: none).
    hpo_foreign: str | None = settings.DEFAULTS.hpo_foreign

    def validate(self):
        """Raise :class:`ConfigError` for flags that cannot make a DAG."""
        if self.synthetic:
            if self.synthetic < 0:
                raise invalid("--synthetic", self.synthetic, "a positive number of galaxies")
            if self.data_path or self.catalog:
                raise ConfigError("--synthetic draws its own data: give it without --data-path/--catalog")
            if self.root != naming.DEFAULT_ROOT:
                raise invalid("--root", self.root, f"{naming.DEFAULT_ROOT} with --synthetic (it names real images)")
        elif not (self.data_path and self.catalog):
            raise ConfigError("give --synthetic N, or both --data-path DIR and --catalog CSV (or use --demo)")
        for name, values, allowed in (
            ("--bands", self.bands, naming.BANDS),
            ("--models", self.models, naming.MODELS),
            ("--tasks", self.tasks, naming.TASKS),
        ):
            if not values:
                raise invalid(name, ",".join(values), "a non-empty list of " + ", ".join(allowed))
            for value in values:
                if value not in allowed:
                    raise invalid(name, value, "one of " + ", ".join(allowed))
            if len(set(values)) != len(values):
                raise invalid(name, ",".join(values), "a list without repeats")
        for name in SETTING_FIELDS:
            settings.check(name, getattr(self, name))
        if self.cluster_size is not None and (not isinstance(self.cluster_size, int) or self.cluster_size < 1):
            raise invalid("--cluster-size", self.cluster_size, "an integer >= 1")
        if self.container_mode not in CONTAINER_MODES:
            raise invalid("--container-mode", self.container_mode, " or ".join(CONTAINER_MODES))
        resource_overrides(self)
        if self.hpo_trials and self.hpo_parallel > self.hpo_trials:
            raise invalid("--hpo-parallel", self.hpo_parallel, f"at most --hpo-trials ({self.hpo_trials})")
        if self.hpo_foreign is not None:
            self._check_foreign()
        if self.predict_with is not None:
            if self.hpo_trials:
                raise ConfigError("--hpo-trials searches before training: give it without --predict-with")
            manifest = Path(self.predict_with) / "manifest.json"
            if not manifest.is_file():
                raise InputError(
                    f"--predict-with {self.predict_with}: no bundle there ({manifest} not found); "
                    "give the bundle folder inclinet-evaluate wrote (RUN/data/bundle)"
                )
            return self
        if "regression" not in self.tasks:
            raise invalid("--tasks", ",".join(self.tasks), "a list with regression (evaluation needs its test set)")
        settings.check_models_fit(self.models, self.size)
        return self

    def _check_foreign(self):
        """Refuse a ``--hpo-foreign`` folder without a search, or that is not a raw-layout folder."""
        folder = Path(self.hpo_foreign)
        if not self.hpo_trials:
            raise ConfigError(f"--hpo-foreign {folder}: the foreign set scores search trials; give --hpo-trials N too")
        if not folder.is_dir():
            raise InputError(
                f"--hpo-foreign {folder}: folder not found; give a raw-layout folder (catalog.csv, galaxies/), "
                "e.g. the output of bench/foreign_universe.py"
            )
        checks = (("catalog.csv", (folder / "catalog.csv").is_file()), ("galaxies/", foreign_images(folder)))
        for name, present in checks:
            if not present:
                raise InputError(
                    f"--hpo-foreign {folder}: no {name} there; give a raw-layout folder (catalog.csv, galaxies/ "
                    "with the images), e.g. the output of bench/foreign_universe.py"
                )

    def stage_values(self):
        """``{setting: value}`` of the settings a stage flag carries (what the jobs' command lines pass)."""
        return {name: getattr(self, name) for name in SETTING_FIELDS}

    def to_dict(self):
        data = dataclasses.asdict(self)
        for key in ("bands", "models", "tasks", "resources"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data):
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("bands", "models", "tasks", "resources"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


#: WorkflowConfig fields defined by :mod:`inclinet.config` (default, bounds, help).
SETTING_FIELDS = tuple(f.name for f in dataclasses.fields(WorkflowConfig) if f.name in settings.SETTINGS)


# -- counting ---------------------------------------------------------------------------


def n_chunks(n_galaxies, galaxies_per_job):
    """Number of jobs a list of ``n_galaxies`` is cut into (at least one)."""
    return max(1, math.ceil(n_galaxies / galaxies_per_job))


def training_subsets(config):
    """The training subsets in DAG order: ``0..m`` for regression, then ``"binary"``."""
    subsets = []
    if "regression" in config.tasks:
        subsets.extend(range(config.subsamples + 1))
    if "binary" in config.tasks:
        subsets.append("binary")
    return subsets


def expected_job_counts(config, n_galaxies):
    """Jobs per stage for ``n_galaxies`` catalog rows: the formula the DAG follows."""
    chunks = n_chunks(n_galaxies, config.galaxies_per_job)
    subsets = len(training_subsets(config))
    return {
        "synth": (1 + chunks) if config.synthetic else 0,
        "prep": len(config.bands) * chunks,
        "compress": len(config.bands),
        "split": 1,
        "augment": subsets,
        "train": subsets * len(config.models),
        "evaluate": 1,
    } | ({"hpo": config.hpo_parallel + 1} if config.hpo_trials else {})


# -- building ---------------------------------------------------------------------------


def _job(job_id, stage, args, inputs, outputs, config, *, resources, **extra):
    spec = JobSpec(
        id=job_id,
        stage=stage,
        executable=registry.get(stage).executable,
        args=[str(a) for a in args],
        inputs=list(dict.fromkeys(inputs)),
        outputs=list(dict.fromkeys(outputs)),
        retries=config.retries,
        **dataclasses.asdict(resources),
    )
    for key, value in extra.items():
        setattr(spec, key, value)
    return spec


def _synthetic_ids(config):
    from inclinet.stages.synth import galaxy_ids  # cheap: draws ids, renders nothing

    return [int(pgc) for pgc in galaxy_ids(config.synthetic, config.seed)]


def _catalog_ids(config):
    from inclinet.catalog import read_catalog

    path = Path(config.catalog)
    if not path.is_file():
        raise InputError(f"{path}: catalog not found; give --catalog the path of the catalog CSV")
    return [int(galaxy.pgc) for galaxy in read_catalog(path)]


def _raw_image_for(config, pgc, band, missing):
    """The LFN of the raw image a prep job will read, or None (recorded as missing)."""
    if config.synthetic:
        return f"{RAW_GALAXIES}/{naming.raw_image_names(pgc, band, config.root)[0]}"
    folder = Path(config.data_path)
    for name in naming.raw_image_names(pgc, band, config.root):
        if (folder / name).is_file():
            return f"{RAW_GALAXIES}/{name}"
    if missing is not None:
        missing.append((pgc, band, str(folder / naming.raw_image_names(pgc, band, config.root)[0])))
    return None


def build_jobs(config, *, missing=None):
    """All jobs of the run, parents before children.

    ``config`` is a :class:`WorkflowConfig`. For real data the catalog is read and each
    prep job declares exactly the images its chunk reads; images that are not on disk are
    appended to ``missing`` as ``(pgc, band, expected_path)`` instead of being declared
    (prep records them in its skip report).
    """
    config.validate()
    jobs = []
    if config.synthetic:
        ids = _synthetic_ids(config)
        jobs.extend(_synth_jobs(config, ids))
    else:
        ids = _catalog_ids(config)
        if not ids:
            raise InputError(f"{config.catalog}: the catalog has no rows")
    if config.predict_with is not None:
        jobs.extend(_survey_jobs(config, ids, missing))
        return _linked(jobs, config)
    chunks = n_chunks(len(ids), config.galaxies_per_job)
    from inclinet._helpers import shard_range

    compressed = []
    for band in config.bands:
        parts = []
        for index in range(1, chunks + 1):
            out = naming.prep_part(config.size, band, index, chunks)
            images = []
            for row in shard_range(len(ids), index, chunks):
                lfn = _raw_image_for(config, ids[row], band, missing)
                if lfn is not None:
                    images.append(lfn)
            args = [
                "-p",
                RAW_GALAXIES,
                "-c",
                RAW_CATALOG,
                "-b",
                band,
                "-s",
                config.size,
                "-r",
                config.root,
                "--shard",
                f"{index}/{chunks}",
                "-o",
                out,
                "--report",
                naming.report_for(out),
            ]
            rows = len(shard_range(len(ids), index, chunks))
            jobs.append(
                _job(
                    f"prep_{naming.band_tag(band)}_{index:04d}",
                    "prep",
                    args,
                    [RAW_CATALOG, *images],
                    [out, naming.report_for(out)],
                    config,
                    resources=sized_resources("prep", config, n_galaxies=len(ids), items=rows),
                )
            )
            parts.append(out)
        out = naming.compressed(config.size, band)
        jobs.append(
            _job(
                f"compress_{naming.band_tag(band)}",
                "compress",
                ["-i", *parts, "-o", out, "-s", config.size, "--report", naming.report_for(out)],
                parts,
                [out, naming.report_for(out)],
                config,
                resources=sized_resources("compress", config, n_galaxies=len(ids)),
            )
        )
        compressed.append(out)

    samples = _sample_files(config)
    summary = naming.split_summary(config.size)
    split_report = naming.split_report(config.size)
    split_outputs = [lfn for files in samples.values() for lfn in files] + [summary, split_report]
    jobs.append(
        _job(
            "split",
            "split",
            ["-i", *compressed, "-o", "samples", "-s", config.size, "-n", config.subsamples, "--seed", config.seed],
            compressed,
            split_outputs,
            config,
            resources=sized_resources("split", config, n_galaxies=len(ids)),
        )
    )
    if config.hpo_trials:
        jobs.extend(_search_jobs(config, len(ids)))
    searched = ["--hpo-params", naming.HPO_BEST_PARAMS] if config.hpo_trials else []

    models = []
    for subset in training_subsets(config):
        task = "binary" if subset == "binary" else "regression"
        train_kind = "binary_train" if subset == "binary" else "train"
        val_kind = "binary_test" if subset == "binary" else "test"
        train_samples = [
            naming.sample(config.size, b, train_kind, 0 if subset == "binary" else subset) for b in config.bands
        ]
        validation = [naming.sample(config.size, b, val_kind, 0) for b in config.bands]
        batches = [naming.augmented_batch(config.size, subset, b) for b in range(1, config.n_batches + 1)]
        report = naming.report_for(naming.augmented_dir(subset))
        # The search tunes the regression members: their augmentation and training read its result.
        tuned = searched if task == "regression" else []
        jobs.append(
            _job(
                f"augment_{naming.uset(subset)}",
                "augment",
                [
                    "-i",
                    *train_samples,
                    "-o",
                    naming.augmented_dir(subset),
                    "-s",
                    config.size,
                    "--task",
                    task,
                    "--subset",
                    naming.uset(subset),
                    "-b",
                    config.n_batches,
                    "-z",
                    config.per_bin if task == "regression" else binary_per_class(config),
                    "--report",
                    report,
                    "--seed",
                    config.seed,
                    *(["--regression-views", config.regression_views] if task == "regression" else []),
                    *tuned,
                ],
                train_samples + tuned[1:],
                batches + [report],
                config,
                resources=sized_resources("augment", config, n_galaxies=len(ids)),
            )
        )
        for model in config.models:
            outputs = [
                naming.trained_model(model, subset),
                naming.training_metrics(model, subset),
                naming.training_plot(model, subset),
            ]
            checkpoint = naming.training_checkpoint(model, subset)
            # A reject member starts from its model's regression member on the full set (its
            # convolutional trunk, frozen): that member's job is then a parent of this one.
            on_trunk = task == "binary" and config.binary_trunk == "regression"
            trunk = [naming.trained_model(model, 0)] if on_trunk else []
            args = [
                "--model",
                model,
                "--task",
                task,
                "--train",
                *batches,
                "--validation",
                *validation,
                "--output",
                outputs[0],
                "--checkpoint",
                checkpoint,
                "--metrics",
                outputs[1],
                "--plot",
                outputs[2],
                "--epochs",
                config.epochs,
                "--batch-size",
                config.batch_size,
                "--lr-schedule",
                config.lr_schedule,
                *(["--learning-rate", config.binary_learning_rate] if task == "binary" else []),
                *(["--init-trunk", *trunk] if trunk else []),
                "--seed",
                config.seed,
                *tuned,
            ]
            jobs.append(
                _job(
                    f"train_{naming.uset(subset)}_{model}",
                    "train",
                    args,
                    batches + validation + tuned[1:] + trunk,
                    outputs,
                    config,
                    checkpoint=checkpoint,
                    resources=sized_resources("train", config, n_galaxies=len(ids), model=model),
                )
            )
            models.append(outputs[0])

    jobs.append(_evaluate_job(config, models, len(ids)))
    return _linked(jobs, config)


def _search_jobs(config, n_galaxies):
    """The hyper-parameter search: ``hpo_parallel`` trial jobs, then the select job.

    Trial job k reads the full training set's sample of every band, keeps its study in its
    own journal (its checkpoint: resumed after a stop, staged in and out by Pegasus) and
    writes its trials as JSON, which the select job reads (:mod:`inclinet.hpo`).
    """
    count = config.hpo_parallel
    train_samples = [naming.sample(config.size, band, "train", 0) for band in config.bands]
    slowest = min(config.models, key=TRAIN_IMAGES_PER_S.get)
    resources = sized_resources("hpo", config, n_galaxies=n_galaxies, model=slowest)
    jobs, outputs = [], []
    for index in range(1, count + 1):
        journal, out = naming.hpo_journal(index, count), naming.hpo_trials(index, count)
        args = [
            "trial",
            "--train",
            *train_samples,
            "--models",
            ",".join(config.models),
            "--trials",
            config.hpo_trials,
            "--job",
            f"{index}/{count}",
            "--epochs",
            config.hpo_epochs,
            "-b",
            config.n_batches,
            "-z",
            config.per_bin,
            "--journal",
            journal,
            "--output",
            out,
            "--seed",
            config.seed,
            "--regression-views",
            config.regression_views,
        ]
        if config.hpo_foreign:
            # On Pegasus the folder's files are declared and staged (pegasus_search_jobs).
            args += ["--foreign", str(Path(config.hpo_foreign).resolve())]
        jobs.append(
            _job(
                f"hpo_trial_{index:02d}of{count:02d}",
                "hpo",
                args,
                train_samples,
                [out],
                config,
                checkpoint=journal,
                resources=resources,
            )
        )
        outputs.append(out)
    selected = [naming.HPO_BEST_PARAMS, naming.HPO_STUDY, naming.HPO_SUMMARY]
    args = ["select", "--input", *outputs, "--best", selected[0], "--study", selected[1], "--summary", selected[2]]
    jobs.append(
        _job(
            "hpo_select",
            "hpo",
            [*args, "--seed", config.seed],
            outputs,
            selected,
            config,
            resources=Resources(cores=1, memory_mb=2000, runtime_s=RUNTIME_FLOOR_S),
        )
    )
    return jobs


def _linked(jobs, config):
    """Parents inferred from the files, and the cluster labels of ``--cluster-size``."""
    infer_parents(jobs)
    if config.cluster_size:
        labels = cluster_labels(jobs, config.cluster_size)
        for job in jobs:
            job.cluster = labels.get(job.id)
    return jobs


def _synth_jobs(config, ids):
    chunks = n_chunks(len(ids), config.galaxies_per_job)
    common = [
        "--n-galaxies",
        config.synthetic,
        "--output",
        RAW_DIR,
        "--size",
        config.synthetic_size,
        "--seed",
        config.seed,
    ]
    jobs = [
        _job(
            "synth_catalog",
            "synth",
            [*common, "--catalog-only"],
            [],
            [RAW_CATALOG, RAW_TRUTH],
            config,
            resources=sized_resources("synth", config, n_galaxies=len(ids)),
        )
    ]
    from inclinet._helpers import shard_range

    for index in range(1, chunks + 1):
        images = [
            f"{RAW_GALAXIES}/{naming.raw_image_names(ids[row], band, config.root)[0]}"
            for row in shard_range(len(ids), index, chunks)
            for band in config.bands
        ]
        jobs.append(
            _job(
                f"synth_{index:04d}",
                "synth",
                [*common, "--no-catalog", "--shard", f"{index}/{chunks}"],
                [],
                images,
                config,
                resources=sized_resources(
                    "synth", config, n_galaxies=len(ids), items=len(shard_range(len(ids), index, chunks))
                ),
            )
        )
    return jobs


def bundle_inputs(config):
    """``{LFN: path}`` of the bundle's files (``bundle/manifest.json``, ``bundle/<member>.keras``)."""
    from inclinet import bundle as model_bundle

    folder = Path(config.predict_with)
    try:
        names = model_bundle.files(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"--predict-with {folder}: unreadable bundle manifest ({exc}); give a bundle made by inclinet-evaluate"
        ) from None
    return {f"{BUNDLE_DIR}/{name}": folder / name for name in names}


#: Run-directory folder of the files the builder writes for the jobs to read (the survey's
#: catalog slices, under their LFNs); the replica catalog locates them there.
BUILD_INPUTS_DIR = "inputs"
#: Galaxies whose images the builder looks for before it builds a survey over real data:
#: none of them in any band means a wrong --data-path or --root (the images themselves are
#: not declared one by one; a measure job reports every missing image in its rows).
SURVEY_PROBE = 64


def _survey_jobs(config, ids, missing):
    """measure (one per chunk, all bands; the bundle an input of each) -> merge -> summarize.

    Over real data each measure job reads its chunk's slice of the catalog (written by
    :func:`write_survey_slices`) and the image folder (:data:`RAW_GALAXIES`, one input): the
    DAG's size does not grow with the number of images. :func:`to_pegasus` turns the folder
    into a per-chunk image archive made on the submit host (:func:`pegasus_survey_jobs`).
    With ``--synthetic`` the images are the synth jobs' outputs, declared one by one.
    """
    from inclinet import bundle as model_bundle
    from inclinet._helpers import shard_range

    identity = model_bundle.identity(config.predict_with)
    bundle_files = list(bundle_inputs(config))
    manifest = json.loads(Path(config.predict_with, "manifest.json").read_text(encoding="utf-8"))
    sizing = dataclasses.replace(
        config, size=int(manifest.get("input_size", config.size)), views=int(manifest.get("views", config.views))
    )
    n_members = len(manifest.get("members", [])) or 1
    chunks = n_chunks(len(ids), config.galaxies_per_job)
    if not config.synthetic:
        _probe_images(config, ids)
    jobs, parts, galleries = [], [], []
    for index in range(1, chunks + 1):
        rows = shard_range(len(ids), index, chunks)
        out = naming.survey_chunk(identity, index, chunks)
        gallery = naming.survey_gallery(identity, index, chunks)
        common = [
            "--bundle",
            BUNDLE_DIR,
            "--bundle-id",
            identity,
            "-p",
            RAW_GALAXIES,
            "-r",
            config.root,
            "--bands",
            ",".join(config.bands),
        ]
        if config.synthetic:
            images = [_raw_image_for(config, ids[row], band, missing) for row in rows for band in config.bands]
            args = [*common, "-c", RAW_CATALOG, "--shard", f"{index}/{chunks}"]
            inputs = [*bundle_files, RAW_CATALOG, *images]
        else:
            piece = naming.survey_slice(index, chunks)
            args = [*common, "-c", piece]
            inputs = [*bundle_files, piece, RAW_GALAXIES]
        jobs.append(
            _job(
                f"measure_{index:04d}",
                "measure",
                [*args, "-o", out, "--gallery", gallery],
                inputs,
                [out, gallery],
                config,
                resources=sized_resources("measure", sizing, n_galaxies=len(ids), items=len(rows), members=n_members),
            )
        )
        parts.append(out)
        galleries.append(gallery)
    csv_out, parquet_out = naming.survey_catalog(identity), naming.survey_catalog(identity, ".parquet")
    jobs.append(
        _job(
            "merge",
            "merge",
            ["-i", *parts, "-o", csv_out, "--parquet", parquet_out],
            parts,
            [csv_out, parquet_out],
            config,
            resources=sized_resources("merge", sizing, n_galaxies=len(ids)),
        )
    )
    report, numbers = naming.survey_report(identity), naming.survey_report(identity, ".json")
    jobs.append(
        _job(
            "summarize",
            "summarize",
            ["-c", csv_out, "--galleries", *galleries, "-o", report, "--numbers", numbers],
            [csv_out, *galleries],
            [report, numbers],
            config,
            resources=sized_resources("summarize", sizing, n_galaxies=len(ids)),
        )
    )
    return jobs


def _probe_images(config, ids):
    """Refuse a survey of which none of the first :data:`SURVEY_PROBE` galaxies has an image in any band."""
    folder = Path(config.data_path)
    for pgc in ids[:SURVEY_PROBE]:
        for band in config.bands:
            if any((folder / name).is_file() for name in naming.raw_image_names(pgc, band, config.root)):
                return
    example = folder / naming.raw_image_names(ids[0], config.bands[0], config.root)[0]
    raise InputError(
        f"--data-path {folder}: none of the first {min(len(ids), SURVEY_PROBE)} galaxies of the "
        f"catalog has an image there (e.g. {example} not found); check --data-path, --catalog and "
        "--root"
    )


def survey_slices(jobs):
    """``{slice LFN: (index, count)}`` of the catalog slices the survey's measure jobs read."""
    found = {}
    for job in jobs:
        if job.stage == "measure":
            for lfn in job.inputs:
                position = naming.parse_survey_slice(lfn)
                if position is not None:
                    found[lfn] = position
    return found


def write_survey_slices(run_dir, jobs, config):
    """Write each measure job's slice of ``config.catalog`` under ``RUN/inputs/<LFN>``; return their paths.

    A slice is the catalog's header line and the data lines of the chunk's rows, verbatim
    (either catalog format): a measure job parses only its own rows. Rows are the lines
    :func:`inclinet.catalog.read_catalog` reads (not blank, not ``#`` comments), in order.
    Two passes over the catalog (count, then copy line by line): memory holds one line.
    """
    from inclinet._helpers import shard_range
    from inclinet.io import atomic_path

    slices = sorted(survey_slices(jobs).items(), key=lambda item: item[1])
    if not slices:
        return []

    def data_lines(handle):
        header = None
        for line in handle:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if header is None:
                header = line if line.endswith("\n") else line + "\n"
                yield header
            else:
                yield line if line.endswith("\n") else line + "\n"

    with open(config.catalog, encoding="utf-8-sig") as handle:
        n_rows = sum(1 for _ in data_lines(handle)) - 1
    counts = {count for _, (_, count) in slices}
    if len(counts) != 1 or len(slices) != next(iter(counts)):
        raise ConfigError(f"the measure jobs' catalog slices do not cover {config.catalog} once; rebuild the run")
    written = []
    with open(config.catalog, encoding="utf-8-sig") as handle:
        lines = data_lines(handle)
        header = next(lines)
        for lfn, (index, count) in slices:
            path = Path(run_dir) / BUILD_INPUTS_DIR / lfn
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
                out.write(header)
                for _ in shard_range(n_rows, index, count):
                    out.write(next(lines))
            written.append(path)
    return written


def _sample_files(config):
    """Files split writes, per band."""
    files = {}
    for band in config.bands:
        names = [naming.sample(config.size, band, "test", 0)]
        names += [naming.sample(config.size, band, "train", j) for j in range(config.subsamples + 1)]
        names += [naming.sample(config.size, band, "binary_train"), naming.sample(config.size, band, "binary_test")]
        files[band] = names
    return files


def _evaluate_job(config, models, n_galaxies):
    identities = [naming.member_id(model, subset) for subset in training_subsets(config) for model in config.models]
    args = ["--models", *models, "--members", *identities]
    inputs = list(models)
    if "regression" in config.tasks:
        tests = [naming.sample(config.size, b, "test", 0) for b in config.bands]
        args += ["--test", *tests]
        inputs += tests
    if "binary" in config.tasks:
        tests = [naming.sample(config.size, b, "binary_test") for b in config.bands]
        args += ["--binary-test", *tests]
        inputs += tests
    args += ["--output-dir", EVALUATION_DIR, "--bundle-dir", BUNDLE_DIR, "--views", config.views, "--seed", config.seed]
    if config.hpo_trials:
        args += ["--hpo-summary", naming.HPO_SUMMARY]
        inputs.append(naming.HPO_SUMMARY)
    members = []
    for subset in training_subsets(config):
        for model in config.models:
            members.append(naming.bundle_member(naming.member_name(model, subset), BUNDLE_DIR))
    outputs = list(naming.EVALUATION_FILES) + [naming.bundle_manifest(BUNDLE_DIR)] + members
    return _job(
        "evaluate",
        "evaluate",
        args,
        inputs,
        outputs,
        config,
        resources=sized_resources("evaluate", config, n_galaxies=n_galaxies, members=len(models)),
    )


def infer_parents(jobs):
    """Set every job's ``parents`` from who produces its inputs; check the graph.

    Raises :class:`ConfigError` when two jobs write the same file or a job reads a file
    written by a later job (the list must be in topological order).
    """
    producer = {}
    for job in jobs:
        for lfn in job.outputs + ([job.checkpoint] if job.checkpoint else []):
            if lfn in producer:
                raise ConfigError(f"file {lfn} is written by both {producer[lfn]} and {job.id}")
            producer[lfn] = job.id
    position = {job.id: i for i, job in enumerate(jobs)}
    if len(position) != len(jobs):
        raise ConfigError("job ids must be unique")
    for job in jobs:
        parents = []
        for lfn in job.inputs:
            parent = producer.get(lfn)
            if parent is None or parent in parents:
                continue
            if position[parent] >= position[job.id]:
                raise ConfigError(f"job {job.id} reads {lfn} from later job {parent}")
            parents.append(parent)
        job.parents = parents
    return jobs


def raw_inputs(jobs):
    """LFNs that jobs read but no job writes: what the replica catalog must provide."""
    produced = {lfn for job in jobs for lfn in job.outputs}
    seen = {}
    for job in jobs:
        for lfn in job.inputs:
            if lfn not in produced:
                seen[lfn] = None
    return list(seen)


def final_outputs(jobs):
    """Products worth keeping after the run: models, metrics, evaluation and bundle."""
    return [lfn for job in jobs if job.stage in FINAL_STAGES for lfn in job.outputs]


#: Stages whose outputs are staged out and registered (models, evaluation, bundle, survey catalog and report,
#: the search's trials, best parameters and study).
FINAL_STAGES = ("train", "evaluate", "merge", "summarize", "hpo")


# -- persistence ------------------------------------------------------------------------

JOBS_FILE = naming.JOBS_FILE


def save_jobs(run_dir, jobs):
    """Write ``RUN/jobs.json`` atomically."""
    atomic_write_json(Path(run_dir) / JOBS_FILE, {"format_version": 1, "jobs": [dataclasses.asdict(j) for j in jobs]})


def load_jobs(run_dir):
    """Read ``RUN/jobs.json`` back into JobSpecs."""
    path = Path(run_dir) / JOBS_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found; is {run_dir} a run directory made by run_workflow.py?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [JobSpec(**job) for job in data["jobs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a readable job list ({exc}); rebuild the run with run_workflow.py") from None


# -- Pegasus ----------------------------------------------------------------------------

#: Node label of the jobs that pack a survey chunk's images on the submit host (Pegasus only).
PACK_STAGE = "pack"


def pegasus_survey_jobs(jobs, config):
    """The survey's measure jobs as Pegasus runs them: each reads its chunk's image archive.

    A measure job over real data reads the image folder (:data:`RAW_GALAXIES`, one input):
    the local and SLURM engines link it to ``--data-path``. Pegasus stages files, not
    folders, so here a ``pack`` job per chunk, on the submit host (site ``local``, where
    ``--data-path`` is), writes the images of the chunk's slice into one tar file
    (``inclinet-measure --pack``), and the measure job reads that archive (``--archive``)
    instead of the folder: a compute node gets exactly its chunk's images, as one file.
    Other jobs are returned as they are.
    """
    expanded = []
    for spec in jobs:
        if spec.stage != "measure" or RAW_GALAXIES not in spec.inputs:
            expanded.append(spec)
            continue
        piece = next(lfn for lfn in spec.inputs if naming.parse_survey_slice(lfn) is not None)
        index, count = naming.parse_survey_slice(piece)
        archive = naming.survey_archive(index, count)
        at = spec.args.index("-p")
        bands = spec.args[spec.args.index("--bands") + 1]
        pack = JobSpec(
            id=f"pack_{index:04d}",
            stage=PACK_STAGE,
            executable=spec.executable,
            args=[
                "--pack",
                archive,
                "-c",
                piece,
                "-p",
                str(Path(config.data_path).resolve()),
                "-r",
                config.root,
                "--bands",
                bands,
            ],
            inputs=[piece],
            outputs=[archive],
            cores=1,
            memory_mb=500,
            runtime_s=_deadline(10 + config.galaxies_per_job * len(bands.split(",")) * 0.002),
            retries=spec.retries,
        )
        measure = dataclasses.replace(
            spec,
            args=[*spec.args[:at], "--archive", archive, *spec.args[at + 2 :]],
            inputs=[archive if lfn == RAW_GALAXIES else lfn for lfn in spec.inputs],
            parents=[*spec.parents, pack.id],
        )
        expanded.extend([pack, measure])
    return expanded


#: Logical folder of the search's foreign set on Pegasus (``hpo/foreign/catalog.csv``,
#: ``hpo/foreign/galaxies/<image>``); the replica catalog maps it to ``--hpo-foreign``.
HPO_FOREIGN_DIR = f"{naming.HPO_DIR}/foreign"


def foreign_images(folder):
    """The sorted names of the regular files in ``folder/galaxies`` (hidden ones left out); [] when none."""
    images = Path(folder) / "galaxies"
    if not images.is_dir():
        return []
    return sorted(entry.name for entry in images.iterdir() if entry.is_file() and not entry.name.startswith("."))


def foreign_inputs(config):
    """The LFNs of ``config.hpo_foreign``'s files under :data:`HPO_FOREIGN_DIR`: its catalog, then every image."""
    names = ["catalog.csv", *(f"galaxies/{name}" for name in foreign_images(config.hpo_foreign))]
    return [f"{HPO_FOREIGN_DIR}/{name}" for name in names]


def pegasus_search_jobs(jobs, config):
    """The search's trial jobs as Pegasus runs them: the foreign set as declared inputs.

    The local and SLURM engines pass ``--hpo-foreign`` to every trial job as an absolute
    path (``--foreign DIR``). Pegasus stages files, not folders: here each trial job reads
    the folder's catalog and images under :data:`HPO_FOREIGN_DIR` (``--foreign
    hpo/foreign``), located on the submit host by the replica catalog, so a compute node
    gets them in its job directory. A foreign set is meant to be small (hundreds of
    galaxies): every trial job stages all of it. Other jobs are returned as they are.
    """
    if not config.hpo_foreign:
        return jobs
    declared = foreign_inputs(config)
    expanded = []
    for spec in jobs:
        if spec.stage != "hpo" or "--foreign" not in spec.args:
            expanded.append(spec)
            continue
        at = spec.args.index("--foreign")
        expanded.append(
            dataclasses.replace(
                spec,
                args=[*spec.args[: at + 1], HPO_FOREIGN_DIR, *spec.args[at + 2 :]],
                inputs=[*spec.inputs, *declared],
            )
        )
    return expanded


def pegasus_retries(spec):
    """DAGMan retries of a job: its own, plus one per checkpoint stop for checkpointed jobs.

    Pegasus stops a checkpointed job at ``checkpoint_time`` (SIGTERM); the job saves its
    checkpoint, exits non-zero and resumes on the next retry, so each stop uses one retry.
    """
    if not spec.checkpoint:
        return spec.retries
    return spec.retries + math.ceil(spec.runtime_s / 60 / CHECKPOINT_TIME_MIN)


CLUSTERED_STAGES = ("synth", "prep", "measure")


def cluster_labels(jobs, size):
    """``{job id: label}``: synth and prep jobs in groups of ``size`` (Pegasus label clustering).

    Prep jobs are grouped within one band and synth jobs by chunk, so that no two jobs of a
    cluster read or write different files with the same base name: with ``condorio`` all
    files of a clustered job land in one directory (horizontal clustering would mix bands,
    e.g. ``resized/128x128_r/part0001of0001.npz`` and ``resized/128x128_i/part0001of0001.npz``).
    """
    groups = {}
    for job in jobs:
        if job.stage in CLUSTERED_STAGES:
            key = job.stage if job.stage in ("synth", "measure") else job.id.rsplit("_", 1)[0]
            groups.setdefault(key, []).append(job.id)
    labels = {}
    for key, ids in groups.items():
        for position, job_id in enumerate(ids):
            labels[job_id] = f"{key}_c{position // size + 1:04d}"
    return labels


def to_pegasus(jobs, config):
    """The same jobs as a ``Pegasus.api.Workflow`` (edges inferred from the files).

    Intermediate files are neither staged out nor registered; models, metrics,
    evaluation and the bundle are. Every job carries cores/memory/runtime profiles (GPU
    jobs gpus; the GPU queue of a site comes from the transformation catalog); training
    jobs a checkpoint file with ``checkpoint_time``/``max_walltime``, a runtime of one
    attempt and their retries. With ``config.cluster_size`` synth and prep jobs carry the
    ``label`` profile their JobSpec carries (:func:`cluster_labels`, set by :func:`build_jobs`;
    plan with ``--cluster label``), so ``workflow.yml`` and ``jobs.json`` agree. The one
    difference: the survey's measure jobs read per-chunk image archives made by ``pack``
    jobs on site ``local`` (:func:`pegasus_survey_jobs`), not the image folder, and the
    search's trial jobs read ``--hpo-foreign``'s files as declared inputs
    (:func:`pegasus_search_jobs`), not the folder.
    """
    from Pegasus.api import File, Job, Namespace, Workflow

    jobs = pegasus_search_jobs(pegasus_survey_jobs(jobs, config), config)
    keep = set(final_outputs(jobs))
    files = {}

    def file_of(lfn):
        if lfn not in files:
            files[lfn] = File(lfn)
        return files[lfn]

    workflow = Workflow(config.name, infer_dependencies=True)
    for spec in jobs:
        job = Job(spec.executable, _id=spec.id, node_label=spec.stage)
        job.add_args(*[file_of(a) if a in files or a in spec.inputs or a in spec.outputs else a for a in spec.args])
        if spec.inputs:
            job.add_inputs(*[file_of(lfn) for lfn in spec.inputs])
        for lfn in spec.outputs:
            final = lfn in keep
            job.add_outputs(file_of(lfn), stage_out=final, register_replica=final)
        # A checkpointed job is stopped and retried every checkpoint interval: its runtime
        # (batch walltime) is that of one attempt; its retries cover the whole estimate.
        runtime = MAX_WALLTIME_MIN * 60 if spec.checkpoint else spec.runtime_s
        job.add_pegasus_profile(cores=spec.cores, memory=f"{spec.memory_mb} MB", runtime=str(runtime))
        if spec.gpus:
            job.add_pegasus_profile(gpus=spec.gpus)
        job.add_dagman_profile(retry=str(pegasus_retries(spec)))
        if spec.checkpoint:
            job.add_checkpoint(file_of(spec.checkpoint), stage_out=True, register_replica=False)
            job.add_pegasus_profile(checkpoint_time=CHECKPOINT_TIME_MIN, max_walltime=MAX_WALLTIME_MIN)
        if spec.cluster:
            job.add_profiles(Namespace.PEGASUS, key="label", value=spec.cluster)
        if spec.stage == PACK_STAGE:
            job.add_selector_profile(execution_site="local")
        workflow.add_jobs(job)
    return workflow
