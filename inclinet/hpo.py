"""The hyper-parameter search: search space, trial jobs over Optuna journal studies, the best parameters.

A search of N trials runs as K trial jobs (``inclinet-hpo trial --job k/K``) and one select
job (``inclinet-hpo select``). Trial job k runs the trials ``shard_range(N, k, K)`` (global
trial numbers, a contiguous block) one after the other. Each trial augments the search's
training galaxies with the trial's augmentation strength (:func:`inclinet.stages.augment.run`)
and trains one small model on them (:func:`inclinet.stages.train.run`, ``--hpo-epochs``
epochs), scoring after every epoch the RMS in degrees of the validation galaxies: a fifth
of the full training set (``Uset_000``) held out by pgc id (:data:`HOLDOUT_FRACTION`), never
the test set the evaluation reports on, and, with ``--foreign DIR``, the galaxies of
another universe (e.g. ``bench/foreign_universe.py``'s, or real ones), so that the search
does not tune to our own renderer alone. With a foreign set the objective is the mean of
the two RMS values.

Storage: job k keeps its own Optuna study in its own journal file
(``hpo/trials_<k>of<K>.journal``, :class:`optuna.storages.JournalStorage` on a
``JournalFileBackend``); it is the job's checkpoint. A job started again (killed, timed
out, stopped by SIGTERM) loads it, keeps every finished trial (complete or pruned), marks
the trial it was running as failed (``user_attrs["abandoned"]``) and runs that trial number
again, then the rest. The select job merges the K studies into one study,
``hpo/study.journal`` (study ``inclinet-hpo``, readable by ``optuna-dashboard``), and
writes the best parameters (``hpo/best_params.json``) and the report's summary
(``hpo/search.json``).

Determinism: the parameters of trial n are drawn by a :class:`optuna.samplers.TPESampler`
seeded from ``(seed, n)``, which sees only the finished trials of its own job's study; the
pruner (:class:`optuna.pruners.MedianPruner`) also compares within the job; training is
seeded from the trial number. So the trials, their parameters, scores and the pruned ones
depend on the settings (the seed, N and K among them: K decides which trials each job's
sampler sees) and the data, and on nothing else, not on timing, the order the jobs run in,
or a job being killed and resumed. A shared study would let each job's sampler learn from the
others' trials, but what it saw would then depend on which trials happened to finish
first. Training itself is bit-identical on one machine (docs/architecture.md,
"Reproducibility"); across CPU types the scores differ in the last bits, and then TPE may
draw other parameters.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import math
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inclinet import config, naming
from inclinet._helpers import derive_seed, parse_shard, rng_for, shard_range, versions
from inclinet.errors import ConfigError, InputError, StageError, invalid
from inclinet.io import atomic_path, atomic_write_json, check_outputs, load_npz

logger = logging.getLogger(__name__)

#: Version of the search space and of the files below; a study made with another is refused.
FORMAT = 1
#: Fraction of the training galaxies (by pgc id) a search validates on instead of training.
HOLDOUT_FRACTION = 0.2
#: The merged study's name in ``hpo/study.journal``.
STUDY_NAME = "inclinet-hpo"
#: Completed trials below which parameter importances are not computed (the evaluator needs a few).
MIN_TRIALS_FOR_IMPORTANCE = 4
#: Trials each job's TPE sampler draws at random before it models the scores.
TPE_STARTUP_TRIALS = 5
#: Complete trials of a job before its median pruner prunes; reports are numbered by epoch
#: from 1, and a trial is pruned at the end of an epoch before its last one.
PRUNER_STARTUP_TRIALS = 2
PRUNER_WARMUP_EPOCHS = 1
#: The exit code of a trial job stopped by SIGTERM (as inclinet-train: rerun to resume).
EXIT_INTERRUPTED = 3


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: ``kind`` ``log`` (log-uniform), ``float`` (uniform) or ``categorical``."""

    name: str
    kind: str
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None


#: The search space. ``model`` chooses among the run's --models (model5 only at >= 76 px);
#: ``aug_scale`` and ``aug_noise`` multiply the augmentation chains' scale half-width (0.2)
#: and noise level (1 = the chains as defined in inclinet.augmentation).
SEARCH_SPACE = (
    Dimension("model", "categorical", "model family (of the run's --models)"),
    Dimension("learning_rate", "log", "Adam learning rate", 1e-4, 1e-2),
    Dimension("lr_schedule", "categorical", "learning rate over the epochs", choices=("constant", "cosine")),
    Dimension("batch_size", "categorical", "images per training step", choices=(16, 32, 64, 128)),
    Dimension("dropout", "float", "dropout rate of every dropout layer", 0.0, 0.5),
    Dimension("aug_scale", "float", "factor on the augmentation's scale half-width", 0.0, 1.5),
    Dimension("aug_noise", "float", "factor on the augmentation's noise level", 0.0, 2.0),
)
#: The parameters training reads, and those augmentation reads.
TRAINING_KEYS = ("learning_rate", "lr_schedule", "batch_size", "dropout")
AUGMENTATION_KEYS = ("aug_scale", "aug_noise")


def search_space(regression_views=config.DEFAULTS.regression_views):
    """The dimensions searched: all of :data:`SEARCH_SPACE`, less the chains' strengths with dihedral views.

    With ``regression_views`` ``dihedral`` the regression batches go through no chain, so
    ``aug_scale`` and ``aug_noise`` would change nothing: they are not searched.
    """
    config.check("regression_views", regression_views)
    if regression_views == "chain":
        return SEARCH_SPACE
    return tuple(dim for dim in SEARCH_SPACE if dim.name not in AUGMENTATION_KEYS)


def _searched_views(search):
    """The regression views of a search identity (a search that records none is older: chain)."""
    return search.get("regression_views", "chain")


def import_optuna():
    """Import Optuna with its per-trial log lines silenced (the trial jobs log one line per trial)."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "the hyper-parameter search needs Optuna: pip install 'inclinet[hpo]' (or optuna>=4)"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(models, regression_views=config.DEFAULTS.regression_views):
    """``{name: optuna distribution}`` of :func:`search_space` for a search over ``models``."""
    optuna = import_optuna()
    found = {}
    for dim in search_space(regression_views):
        if dim.kind == "categorical":
            found[dim.name] = optuna.distributions.CategoricalDistribution(
                tuple(models) if dim.name == "model" else dim.choices
            )
        else:
            found[dim.name] = optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.kind == "log")
    return found


def suggest(trial, models, regression_views=config.DEFAULTS.regression_views):
    """The parameters of one trial, drawn in the order of :func:`search_space`."""
    params = {}
    for dim in search_space(regression_views):
        if dim.kind == "categorical":
            params[dim.name] = trial.suggest_categorical(
                dim.name, tuple(models) if dim.name == "model" else dim.choices
            )
        else:
            params[dim.name] = trial.suggest_float(dim.name, dim.low, dim.high, log=dim.kind == "log")
    return params


def chain_parameters(aug_scale=1.0, aug_noise=1.0):
    """(colour, gray) augmentation chains with the scale half-width and noise level multiplied.

    1 and 1 give the chains of :mod:`inclinet.augmentation` unchanged (the same objects).
    """
    from inclinet.augmentation import COLOUR_CHAIN, GRAY_CHAIN

    if aug_scale == 1.0 and aug_noise == 1.0:
        return COLOUR_CHAIN, GRAY_CHAIN

    def scaled(chain):
        low, high = chain.scale_range
        centre, half = (low + high) / 2, (high - low) / 2 * aug_scale
        return dataclasses.replace(
            chain, scale_range=(max(0.05, centre - half), centre + half), noise_max=chain.noise_max * aug_noise
        )

    return scaled(COLOUR_CHAIN), scaled(GRAY_CHAIN)


# -- the best-parameters file ---------------------------------------------------------------


def _load_json(path, what, *, missing, unreadable):
    """The JSON document at ``path``; :class:`InputError` naming it (``what``) and the fix otherwise."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found; {missing}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable {what} ({exc}); {unreadable}") from None


def read_best(path):
    """The best-parameters file written by :func:`select`, checked; :class:`InputError` naming it otherwise."""
    path = Path(path)
    data = _load_json(
        path,
        "best-parameters file",
        missing="run inclinet-hpo select first",
        unreadable="run inclinet-hpo select again",
    )
    if not isinstance(data, dict) or data.get("format") != FORMAT or "best" not in data:
        raise InputError(f"{path}: not a best-parameters file of format {FORMAT}; run inclinet-hpo select again")
    search = data.get("search") if isinstance(data.get("search"), dict) else {}
    # A search with dihedral views has no chain strengths (search_space).
    searched = AUGMENTATION_KEYS if _searched_views(search) == "chain" else ()
    for entry in [data["best"], *(data.get("by_model") or {}).values()]:
        if entry is None:
            continue
        params = entry.get("params", {}) if isinstance(entry, dict) else {}
        for key in TRAINING_KEYS + searched:
            if key not in params:
                raise InputError(f"{path}: a parameter set lacks {key}; run inclinet-hpo select again")
        try:
            for key in TRAINING_KEYS + searched:
                config.check(key, params[key])
        except ConfigError as exc:
            raise InputError(f"{path}: {exc}") from None
    return data


def training_params(path, model):
    """``{"params": {learning_rate, lr_schedule, batch_size, dropout}, "trial", "value", "source"}`` for ``model``.

    The best complete trial of ``model``'s family, else the best trial of the search (whose
    family differs: no trial of ``model`` finished). A search whose trials all failed or
    diverged has no best: :class:`InputError`.
    """
    data = read_best(path)
    entry = (data.get("by_model") or {}).get(model)
    source = f"best trial of {model}"
    if entry is None:
        entry, source = data["best"], "best trial of the search (none of this family finished)"
    if entry is None:
        raise InputError(f"{path}: the search has no finished trial; train without --hpo-params or search again")
    params = {key: entry["params"][key] for key in TRAINING_KEYS}
    logger.info(
        "hyper-parameters from %s (%s, trial %s, score %.3f): %s", path, source, entry["trial"], entry["value"], params
    )
    return {"params": params, "trial": entry["trial"], "value": entry["value"], "source": source, "file": str(path)}


def augmentation_params(path):
    """``(aug_scale, aug_noise)`` of the search's best trial."""
    data = read_best(path)
    if data["best"] is None:
        raise InputError(f"{path}: the search has no finished trial; augment without --hpo-params or search again")
    params = data["best"]["params"]
    if not all(key in params for key in AUGMENTATION_KEYS):
        # A search with dihedral views does not vary the chains: they stay as defined.
        return config.DEFAULTS.aug_scale, config.DEFAULTS.aug_noise
    logger.info(
        "augmentation strength from %s (trial %s): scale x%.3f, noise x%.3f",
        path,
        data["best"]["trial"],
        params["aug_scale"],
        params["aug_noise"],
    )
    return params["aug_scale"], params["aug_noise"]


# -- the trial jobs -------------------------------------------------------------------------


def _study_name(index, count):
    return f"{STUDY_NAME}-{index}of{count}"


def _journal_storage(path):
    optuna = import_optuna()
    from optuna.storages import JournalStorage

    try:
        from optuna.storages.journal import JournalFileBackend
    except ImportError:  # Optuna < 4.0
        from optuna.storages import JournalFileStorage as JournalFileBackend
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna, JournalStorage(JournalFileBackend(str(path)))
    except (ValueError, KeyError, OSError) as exc:
        raise InputError(
            f"{path}: not a readable Optuna journal ({exc}); delete it to start this job's trials again"
        ) from None


def _search_identity(
    *,
    models,
    trials,
    index,
    count,
    epochs,
    n_batches,
    per_bin,
    size,
    seed,
    foreign,
    regression_views=config.DEFAULTS.regression_views,
):
    """What a study is a search of; a journal made for another search is refused."""
    return {
        "regression_views": regression_views,
        "format": FORMAT,
        "models": list(models),
        "trials": int(trials),
        "job": f"{index}/{count}",
        "epochs": int(epochs),
        "n_batches": int(n_batches),
        "per_bin": int(per_bin),
        "size": int(size),
        "seed": int(seed),
        "foreign": bool(foreign),
    }


class _Stop:
    """SIGTERM between trials or during augmentation: stop before the next step."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        self.requested = True
        logger.warning("signal %d received: stopping after this step (finished trials are kept)", signum)


class SearchInterrupted(StageError):
    """SIGTERM arrived: finished trials are in the journal; rerun the job to continue (exit code 3)."""

    exit_code = EXIT_INTERRUPTED


def run_trials(
    *,
    train,
    models,
    trials,
    job,
    journal,
    output,
    epochs=config.DEFAULTS.hpo_epochs,
    n_batches=config.DEFAULTS.n_batches,
    per_bin=config.DEFAULTS.per_bin,
    seed=config.DEFAULTS.seed,
    foreign=None,
    work_dir=None,
    regression_views=config.DEFAULTS.regression_views,
):
    """Run this job's share of a search of ``trials`` trials; write its trials as JSON to ``output``.

    ``train``: the full training set's sample of every band (``samples/<TAG>_<S>x<S>_train_000.npz``);
    ``job``: ``"k/K"``; ``journal``: this job's Optuna journal (resumed when it holds a study);
    ``foreign``: a folder in the raw layout (``catalog.csv``, ``galaxies/``) validated on
    as well. Returns the JSON written.
    """
    index, count = parse_shard(job) if isinstance(job, str) else job
    if not models:
        raise invalid("--models", "", "one or more of " + ", ".join(naming.MODELS))
    for model in models:
        if model not in naming.MODELS:
            raise invalid("--models", model, "one of " + ", ".join(naming.MODELS))
    config.check("hpo_trials", trials, flag="--trials")
    config.check("hpo_epochs", epochs, flag="--epochs")
    config.check("regression_views", regression_views)
    if trials < count:
        raise invalid("--trials", trials, f"at least the number of trial jobs ({count})")
    start = time.perf_counter()
    sizes = {read_size(path) for path in train}
    if len(sizes) != 1:
        raise InputError(f"training samples of different image sizes {sorted(sizes)}: give the files of one size")
    size = sizes.pop()
    config.check_models_fit(models, size)
    identity = _search_identity(
        models=models,
        trials=trials,
        index=index,
        count=count,
        epochs=epochs,
        n_batches=n_batches,
        per_bin=per_bin,
        size=size,
        seed=seed,
        foreign=foreign,
        regression_views=regression_views,
    )
    optuna, storage = _journal_storage(journal)
    study = optuna.create_study(
        study_name=_study_name(index, count),
        storage=storage,
        direction="minimize",
        load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS),
    )
    recorded = study.user_attrs.get("search")
    if recorded is None:
        study.set_user_attr("search", identity)
    elif recorded != identity:
        raise ConfigError(
            f"invalid --journal: {journal} holds trials of another search ({recorded}); must be this "
            f"search's ({identity}), or delete it to start this job's trials again"
        )
    abandoned = _abandon_running(study, optuna)
    mine = list(shard_range(trials, index, count))
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = {t.user_attrs.get("trial") for t in study.get_trials(deepcopy=False, states=finished_states)}
    todo = [n for n in mine if n not in done]
    if done or abandoned:
        logger.info(
            "resuming job %d/%d: %d of its %d trial(s) finished; %d left running by a stopped run marked failed",
            index,
            count,
            len(set(mine) & done),
            len(mine),
            abandoned,
        )
    stop = _Stop()
    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        previous = None
    try:
        if todo:
            with tempfile.TemporaryDirectory(prefix="inclinet-hpo-", dir=work_dir) as scratch:
                scratch = Path(scratch)
                data = _prepare_data(train, size, seed, scratch / "data", foreign)
                for number in todo:
                    _run_one(
                        optuna,
                        study,
                        number,
                        data,
                        models=models,
                        epochs=epochs,
                        n_batches=n_batches,
                        per_bin=per_bin,
                        seed=seed,
                        size=size,
                        scratch=scratch,
                        stop=stop,
                        regression_views=regression_views,
                    )
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    result = {
        "format": FORMAT,
        "search": identity,
        "trials": [_trial_record(optuna, t, index) for t in study.get_trials(deepcopy=False)],
        "versions": versions(),
    }
    atomic_write_json(output, result)
    check_outputs([output, journal])
    finished = [t for t in result["trials"] if t["trial"] in set(mine) and t["state"] in ("COMPLETE", "PRUNED")]
    values = [t["value"] for t in finished if t["state"] == "COMPLETE"]
    logger.info(
        "hpo trial job %d/%d: trials %d..%d (%d complete, %d pruned), best score %s, %.1f s, seed %d",
        index,
        count,
        mine[0],
        mine[-1],
        len(values),
        len(finished) - len(values),
        f"{min(values):.3f}" if values else "none",
        time.perf_counter() - start,
        seed,
    )
    return result


def read_size(path):
    from inclinet.npzstream import array_info

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: training sample not found; run inclinet-split first")
    shape, _ = array_info(path, "images")
    if len(shape) != 4:
        raise InputError(f"{path}: images must be (N, S, S, 3), found {shape}")
    return int(shape[1])


def _abandon_running(study, optuna):
    """Mark the trials a killed run of this job left running as failed; return how many.

    Only this job writes its study, and only one run of a job runs at a time (every engine
    runs a job once at a time), so a running trial found at the start is one a killed run left.
    """
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return len(running)


def _prepare_data(train, size, seed, folder, foreign):
    """The search's own training and validation samples per band (split by pgc id), and the foreign set."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = [load_npz(path, required=("images", "labels", "pgcIDs", "band")) for path in train]
    pgcs = np.unique(np.concatenate([s["pgcIDs"] for s in samples]))
    held = rng_for(seed, "hpo", "holdout").permutation(len(pgcs))[: max(1, round(HOLDOUT_FRACTION * len(pgcs)))]
    held_out = set(pgcs[held].tolist())
    data = {"train": [], "validation": [], "foreign": []}
    for path, sample in zip(train, samples):
        mask = np.isin(sample["pgcIDs"], list(held_out))
        band = str(sample["band"])
        for kind, rows in (("train", ~mask), ("validation", mask)):
            if not rows.any():
                raise InputError(
                    f"{path}: too few galaxies to hold a {kind} set out for the search; give more galaxies"
                )
            out = folder / f"{naming.band_tag(band)}_{kind}.npz"
            np.savez(
                out,
                images=sample["images"][rows],
                labels=sample["labels"][rows],
                pgcIDs=sample["pgcIDs"][rows],
                band=np.asarray(band),
            )
            data[kind].append(out)
    logger.info(
        "search data: %d galaxies train, %d validate (held out of %s)",
        len(pgcs) - len(held_out),
        len(held_out),
        ", ".join(map(str, train)),
    )
    if foreign:
        data["foreign"] = _foreign_samples(Path(foreign), size, folder / "foreign")
    return data


def _foreign_samples(folder, size, out_dir):
    """The accepted galaxies (inclination 45..90) of a raw-layout folder, prepared at ``size``: one npz per band."""
    from inclinet.stages import prep

    catalog = folder / "catalog.csv"
    if not catalog.is_file() or not (folder / "galaxies").is_dir():
        raise InputError(f"--foreign {folder}: not a raw-layout folder (catalog.csv and galaxies/ expected)")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for band in naming.BANDS:
        part = out_dir / f"{naming.band_tag(band)}_prep.npz"
        prep.run(
            data_dir=folder / "galaxies",
            catalog=catalog,
            band=band,
            size=size,
            output=part,
            report=out_dir / f"{band}.report.csv",
        )
        arrays = load_npz(part, required=("images", "labels", "pgcIDs"))
        keep = (arrays["labels"] >= 45) & (arrays["labels"] <= 90)
        if not keep.any():
            continue
        out = out_dir / f"{naming.band_tag(band)}.npz"
        np.savez(
            out,
            images=arrays["images"][keep],
            labels=arrays["labels"][keep],
            pgcIDs=arrays["pgcIDs"][keep],
            band=np.asarray(band),
        )
        files.append(out)
    if not any(str(p.name).startswith(naming.band_tag("gri")) for p in files):
        raise InputError(f"--foreign {folder}: no accepted galaxy (inclination 45..90) with a colour image")
    logger.info("foreign validation set from %s: %s", folder, ", ".join(p.name for p in files))
    return files


def _run_one(
    optuna, study, number, data, *, models, epochs, n_batches, per_bin, seed, size, scratch, stop, regression_views
):
    """Run trial ``number``: augment, train with per-epoch reports (pruned by the median rule), tell the study."""
    from inclinet.stages import augment
    from inclinet.stages import train as training

    if stop.requested:
        raise SearchInterrupted(f"interrupted by SIGTERM before trial {number}; run the same command again to continue")
    study.sampler = optuna.samplers.TPESampler(
        seed=derive_seed(seed, "hpo", "sampler", number), n_startup_trials=TPE_STARTUP_TRIALS
    )
    trial = study.ask()
    trial.set_user_attr("trial", number)
    params = suggest(trial, models, regression_views)
    started = time.perf_counter()
    folder = scratch / f"trial_{number:04d}"
    foreign_set = _validation_arrays(data["foreign"]) if data["foreign"] else None

    def epoch_end(record, net):
        score = record["val_rms_deg"]
        entry = {"epoch": record["epoch"], "validation_rms": score}
        if foreign_set is not None:
            entry["foreign_rms"] = _rms_deg(net, *foreign_set)
            score = (score + entry["foreign_rms"]) / 2
        trial.set_user_attr(f"epoch_{record['epoch']:03d}", entry)
        if not math.isfinite(score):
            raise _Diverged(record["epoch"])
        trial.report(score, record["epoch"])
        # The last epoch is the trial's result: nothing is left to save by pruning it.
        if record["epoch"] < epochs and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {record['epoch']} (score {score:.3f} above the median)")
        if stop.requested:
            raise SearchInterrupted(
                f"interrupted by SIGTERM in trial {number}; run the same command again to continue "
                "(finished trials are kept)"
            )
        epoch_end.score = score

    epoch_end.score = None
    try:
        augment.run(
            inputs=data["train"],
            output_dir=folder / "augmented",
            size=size,
            task="regression",
            n_batches=n_batches,
            per_bin=per_bin,
            seed=seed,
            subset="HPO",
            report=folder / "augmented.report.csv",
            aug_scale=params.get("aug_scale", config.DEFAULTS.aug_scale),
            aug_noise=params.get("aug_noise", config.DEFAULTS.aug_noise),
            regression_views=regression_views,
        )
        if stop.requested:
            raise SearchInterrupted(
                f"interrupted by SIGTERM in trial {number}; run the same command again to continue "
                "(finished trials are kept)"
            )
        batches = sorted((folder / "augmented").glob("*.npz"))
        training.run(
            model=params["model"],
            task="regression",
            train=batches,
            validation=data["validation"],
            output=folder / f"hpo_trial_{number:04d}.keras",
            checkpoint=folder / "checkpoint.zip",
            metrics=folder / "metrics.json",
            plot=folder / "metrics.png",
            epochs=epochs,
            batch_size=params["batch_size"],
            learning_rate=params["learning_rate"],
            lr_schedule=params["lr_schedule"],
            dropout=params["dropout"],
            # The run's seed: every trial validates on the same galaxies and sees its batches
            # in the same order; initial weights differ by trial (the --output name).
            seed=seed,
            epoch_end=epoch_end,
        )
    except optuna.TrialPruned as exc:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        logger.info("trial %d pruned: %s; %s", number, exc, _describe(params))
    except _Diverged as exc:
        trial.set_user_attr("diverged", True)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        logger.info("trial %d stopped: the loss diverged at epoch %d; %s", number, exc.epoch, _describe(params))
    except SearchInterrupted:
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    except training.TrainingInterrupted:
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise SearchInterrupted(
            f"interrupted by SIGTERM while training trial {number}; run the same command again to continue "
            "(finished trials are kept)"
        ) from None
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    else:
        study.tell(trial, epoch_end.score)
        logger.info(
            "trial %d: score %.3f deg in %.1f s; %s",
            number,
            epoch_end.score,
            time.perf_counter() - started,
            _describe(params),
        )
    finally:
        import shutil

        from inclinet.models import import_keras

        shutil.rmtree(folder, ignore_errors=True)
        # Each trial builds a new model in this process: drop the last one's graphs and state,
        # so that memory does not grow with the trials and each trial starts as the first did.
        import_keras().backend.clear_session()


class _Diverged(Exception):
    def __init__(self, epoch):
        super().__init__(f"diverged at epoch {epoch}")
        self.epoch = epoch


def _describe(params):
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


def _validation_arrays(paths):
    from inclinet import models as inclinet_models
    from inclinet.stages.train import build_validation_set

    images, labels = build_validation_set(paths, "regression", 0)
    return inclinet_models.scale_pixels(images), np.asarray(labels, dtype=np.float64)


def _rms_deg(net, images, inclinations):
    from inclinet import models as inclinet_models

    outputs = np.asarray(net.predict(images, batch_size=256, verbose=0)).reshape(-1)
    predicted = inclinet_models.target_to_inclination(outputs)
    return float(np.sqrt(np.mean((predicted - inclinations) ** 2)))


def _trial_record(optuna, trial, job_index):
    return {
        "trial": trial.user_attrs.get("trial"),
        "job": job_index,
        "attempt": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "params": trial.params,
        "distributions": {k: optuna.distributions.distribution_to_json(v) for k, v in trial.distributions.items()},
        "intermediate": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "user_attrs": {k: v for k, v in trial.user_attrs.items() if k != "trial"},
        "seconds": (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else None,
    }


# -- the select job -----------------------------------------------------------------------

OBJECTIVE = (
    "RMS (deg) of the predicted inclinations of the held-out training galaxies after the last "
    "epoch; with a foreign set, the mean of that and the foreign galaxies' RMS"
)


def _read_trials_file(path):
    path = Path(path)
    data = _load_json(
        path, "trials file", missing="run its inclinet-hpo trial job first", unreadable="run its trial job again"
    )
    if not isinstance(data, dict) or data.get("format") != FORMAT or "search" not in data or "trials" not in data:
        raise InputError(f"{path}: not a trials file of format {FORMAT} (written by inclinet-hpo trial)")
    return data


def select(*, inputs, best, study, summary, seed=config.DEFAULTS.seed):
    """Merge the trial jobs' trials into one study; write the best parameters and the report's summary.

    ``inputs``: the ``trials_<k>of<K>.json`` of every trial job (K files). Refuses files of
    different searches, a missing job, or a trial that did not finish (resume its job).
    Returns the summary dictionary.
    """
    start = time.perf_counter()
    files = [(Path(path), _read_trials_file(path)) for path in inputs]
    if not files:
        raise ConfigError("invalid --input: nothing given; must be the trials file of every trial job")
    common = {k: v for k, v in files[0][1]["search"].items() if k != "job"}
    jobs = {}
    for path, data in files:
        search = dict(data["search"])
        index, count = parse_shard(search.pop("job"))
        if search != common:
            raise InputError(f"{path}: trials of another search ({search}) than {files[0][0]} ({common})")
        if count != len(files) or index in jobs:
            raise InputError(
                f"{path}: job {index}/{count} of the search; give the trials file of each of its {count} jobs once"
            )
        jobs[index] = data
    n_trials = common["trials"]
    finals, failed = {}, []
    for index in sorted(jobs):
        for record in jobs[index]["trials"]:
            if record["state"] in ("COMPLETE", "PRUNED"):
                finals[record["trial"]] = record
            else:
                failed.append(record)
    missing = [n for n in range(n_trials) if n not in finals]
    if missing:
        count = len(files)
        owners = sorted({next(k for k in range(1, count + 1) if n in shard_range(n_trials, k, count)) for n in missing})
        raise InputError(
            f"trial(s) {', '.join(map(str, missing[:10]))} did not finish; run trial job(s) "
            f"{', '.join(f'{k}/{count}' for k in owners)} again (they resume)"
        )
    ordered = [finals[n] for n in range(n_trials)]
    complete = [r for r in ordered if r["state"] == "COMPLETE"]
    best_entry = _entry(min(complete, key=lambda r: (r["value"], r["trial"]))) if complete else None
    by_model = {}
    for model in common["models"]:
        mine = [r for r in complete if r["params"]["model"] == model]
        if mine:
            by_model[model] = _entry(min(mine, key=lambda r: (r["value"], r["trial"])))
    optuna = import_optuna()
    with atomic_path(study) as tmp:
        merged = _merged_study(optuna, tmp, common, ordered, failed)
        importances, note = _importances(optuna, merged, len(complete))
    result = {
        "format": FORMAT,
        "objective": OBJECTIVE,
        "search": common,
        "jobs": len(files),
        "best": best_entry,
        "by_model": by_model,
    }
    atomic_write_json(best, result)
    summary_data = dict(
        result,
        space=[dataclasses.asdict(dim) for dim in search_space(_searched_views(common))],
        trials=[_summary_record(r) for r in ordered],
        failed_attempts=[_summary_record(r) for r in failed],
        importances=importances,
        importance_note=note,
        study=str(study),
        study_name=STUDY_NAME,
    )
    atomic_write_json(summary, summary_data)
    check_outputs([best, study, summary])
    logger.info(
        "hpo select: %d trial(s), %d job(s): %d complete, %d pruned, %d failed attempt(s); best %s; %.1f s; seed %d",
        n_trials,
        len(files),
        len(complete),
        n_trials - len(complete),
        len(failed),
        f"trial {best_entry['trial']} ({best_entry['value']:.3f} deg): {_describe(best_entry['params'])}"
        if best_entry
        else "none (every trial was pruned or diverged)",
        time.perf_counter() - start,
        seed,
    )
    return summary_data


def _entry(record):
    return {"trial": record["trial"], "value": record["value"], "params": record["params"]}


def _summary_record(record):
    return {
        key: record.get(key)
        for key in ("trial", "job", "attempt", "state", "value", "params", "intermediate", "user_attrs", "seconds")
    }


def _merged_study(optuna, path, common, ordered, failed):
    """One study ``inclinet-hpo`` in the journal ``path`` with every trial of the search, in trial order."""
    _, storage = _journal_storage(path)
    merged = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="minimize")
    merged.set_user_attr("search", common)
    merged.set_user_attr("objective", OBJECTIVE)
    trials = []
    for record in sorted([*ordered, *failed], key=lambda r: (r["trial"], r["state"] != "FAIL", r["attempt"])):
        state = optuna.trial.TrialState[record["state"]]
        trials.append(
            optuna.trial.create_trial(
                state=state,
                value=record["value"] if state == optuna.trial.TrialState.COMPLETE else None,
                params=record["params"],
                distributions={
                    k: optuna.distributions.json_to_distribution(v) for k, v in record["distributions"].items()
                },
                user_attrs={"trial": record["trial"], "job": record["job"], **record["user_attrs"]},
                intermediate_values={int(k): v for k, v in record["intermediate"].items()},
            )
        )
    merged.add_trials(trials)
    return merged


def _importances(optuna, study, n_complete):
    """``({parameter: importance}, note)``: Optuna's PED-ANOVA evaluator; None and why when it cannot run.

    PED-ANOVA (Optuna's default evaluator from version 5) needs no scikit-learn, unlike
    fANOVA, and draws no random numbers: the same trials give the same importances.
    """
    if n_complete < MIN_TRIALS_FOR_IMPORTANCE:
        return None, (
            f"parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials; "
            f"this search has {n_complete}"
        )
    try:
        found = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
        )
    except (ValueError, RuntimeError, ImportError) as exc:
        return None, f"parameter importances could not be computed: {exc}"
    return {name: float(value) for name, value in found.items()}, (
        f"PED-ANOVA (Optuna's PedAnovaImportanceEvaluator) over {n_complete} complete trials; the values add up to 1"
    )


# -- the report ---------------------------------------------------------------------------


def read_summary(path):
    """The search summary written by :func:`select` (``hpo/search.json``)."""
    path = Path(path)
    data = _load_json(
        path, "search summary", missing="run inclinet-hpo select first", unreadable="run inclinet-hpo select again"
    )
    if not isinstance(data, dict) or data.get("format") != FORMAT or "trials" not in data:
        raise InputError(f"{path}: not a search summary of format {FORMAT} (written by inclinet-hpo select)")
    return data


def _cell(value):
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else html.escape(str(value))


def html_section(summary):
    """The evaluation report's section on the search: trials, parameters, scores, pruned ones, importances."""
    names = [dim["name"] for dim in summary["space"]]
    search = summary["search"]
    best = summary.get("best")
    n_pruned = sum(1 for t in summary["trials"] if t["state"] == "PRUNED")
    parts = [
        "<h2>Hyper-parameter search</h2>",
        f"<p>{len(summary['trials'])} trial(s) in {summary['jobs']} job(s) of {search['epochs']} epoch(s) each, "
        f"seed {search['seed']}; {n_pruned} pruned (median rule), "
        f"{len(summary['failed_attempts'])} failed attempt(s) run again. Score: {html.escape(summary['objective'])}. "
        f"Study: <code>{html.escape(summary['study'])}</code> ({html.escape(summary['study_name'])}).</p>",
    ]
    if best:
        parts.append(
            f"<p>Best: trial {best['trial']}, {best['value']:.3f} deg: "
            + html.escape(_describe(best["params"]))
            + ". Training of each family uses its own best trial: "
            + html.escape(
                "; ".join(f"{m} trial {e['trial']} ({e['value']:.3f} deg)" for m, e in summary["by_model"].items())
            )
            + ".</p>"
        )
    else:
        parts.append("<p>No trial finished: every one was pruned or diverged.</p>")
    parts.append("<table><tr><th>trial</th><th>job</th><th>state</th><th>score</th><th>per epoch</th>")
    parts += [f"<th>{html.escape(name)}</th>" for name in names]
    parts.append("</tr>")
    for trial in summary["trials"]:
        state = trial["state"].lower() + (" (diverged)" if trial["user_attrs"].get("diverged") else "")
        epochs = ", ".join(f"{v:.2f}" for v in trial["intermediate"].values())
        cells = "".join(f"<td>{_cell(trial['params'].get(name))}</td>" for name in names)
        parts.append(
            f"<tr><td>{trial['trial']}</td><td>{trial['job']}</td><td>{state}</td>"
            f"<td>{_cell(trial['value'])}</td><td>{epochs}</td>{cells}</tr>"
        )
    parts.append("</table>")
    if summary.get("importances"):
        parts.append("<table><tr><th>parameter</th><th>importance</th></tr>")
        for name, value in summary["importances"].items():
            parts.append(f"<tr><th>{html.escape(name)}</th><td>{value:.3f}</td></tr>")
        parts.append("</table>")
    parts.append(f"<p>{html.escape(summary['importance_note'])}.</p>")
    return "\n".join(parts)
