"""Every file-name pattern of inclinet, in one place.

Functions return POSIX paths relative to a run's data directory (the logical file names
of the workflow); stages themselves take explicit paths on their command lines.
The layout follows the original IncliNET (``compressed/``, ``samples/``, ``augmented/``,
``models/``), with npz shards replacing per-image JPEGs after the resize stage.
"""

import re

BANDS = ("g", "r", "i", "gri")
GRAY_BANDS = ("g", "r", "i")
DEFAULT_ROOT = "d25x2_rot"
TASKS = ("regression", "binary")
MODELS = ("model4", "model5", "model6")

RAW_PATTERN = re.compile(r"^pgc(?P<pgc>\d+)_(?P<root>.+)_(?P<band>g|r|i|gri)\.(?P<ext>png|sdss\.jpg|jpg)$")


def band_tag(band):
    """The band as it appears in derived file names: ``gri`` becomes ``RGB``."""
    return "RGB" if band == "gri" else band


def filter_code(band):
    """One-byte filter code of augmented batches: ``c`` for colour, else the band."""
    return "c" if band == "gri" else band


# -- run directory (RUN/...) ------------------------------------------------------------

RUN_FILE = "run.json"
JOBS_FILE = "jobs.json"
DATA_DIR = "data"
LOGS_DIR = "logs"
STATE_DIR = "state"
MISSING_INPUTS = "missing_inputs.csv"
DEMO_RUN_DIR = "demo-run"


def default_run_dir(now=None):
    """``runs/inclinet-YYYYmmdd-HHMMSS`` (local time ``now``, a ``time.struct_time``, default now)."""
    import time

    return f"runs/{time.strftime('inclinet-%Y%m%d-%H%M%S', now or time.localtime())}"


def job_log(job_id):
    """``logs/<job-id>.log``, relative to the run directory."""
    return f"{LOGS_DIR}/{job_id}.log"


# -- a run's data directory: raw inputs and final products -------------------------------

RAW_DIR = "raw"
RAW_CATALOG = f"{RAW_DIR}/catalog.csv"
RAW_TRUTH = f"{RAW_DIR}/truth.csv"
RAW_GALAXIES = f"{RAW_DIR}/galaxies"
EVALUATION_DIR = "evaluation"
BUNDLE_DIR = "bundle"


# -- raw inputs -------------------------------------------------------------------------


def raw_image_names(pgc, band, root=DEFAULT_ROOT):
    """Candidate raw file names of one galaxy in one band, preferred first."""
    stem = f"pgc{int(pgc)}_{root}_{band}"
    if band == "gri":
        return [f"{stem}.sdss.jpg", f"{stem}.jpg"]
    return [f"{stem}.png"]


def raw_image(pgc, band, root=DEFAULT_ROOT, folder="galaxies"):
    """The primary raw file (what the synthetic universe writes)."""
    return f"{folder}/{raw_image_names(pgc, band, root)[0]}"


# -- preparation stages -----------------------------------------------------------------


def size_tag(size):
    return f"{int(size)}x{int(size)}"


def prep_part(size, band, index, count):
    return f"resized/{size_tag(size)}_{band_tag(band)}/part{index:04d}of{count:04d}.npz"


def report_for(path):
    """The skip report that accompanies an output file or folder."""
    path = str(path).rstrip("/")
    if path.endswith(".npz"):
        path = path[: -len(".npz")]
    return f"{path}.report.csv"


def compressed(size, band):
    return f"compressed/{size_tag(size)}_{band_tag(band)}.npz"


def sample(size, band, kind, index=0):
    """``kind`` is ``train`` or ``test`` (regression) or ``binary_train``/``binary_test``."""
    if kind.startswith("binary"):
        return f"samples/{band_tag(band)}_{size_tag(size)}_{kind}.npz"
    return f"samples/{band_tag(band)}_{size_tag(size)}_{kind}_{index:03d}.npz"


def split_summary(size):
    return f"samples/{size_tag(size)}_split.json"


def split_report(size):
    """The report inclinet-split writes beside its summary."""
    return f"samples/{size_tag(size)}_split.report.csv"


def uset(subset):
    """Name of a training subset: ``Uset_000`` .. ``Uset_00m``, or ``Binary``."""
    return "Binary" if subset == "binary" else f"Uset_{int(subset):03d}"


def augmented_dir(subset):
    return f"augmented/{uset(subset)}_npz"


def augmented_batch(size, subset, batch):
    """Batch numbers are 1-based, as in the original."""
    return f"{augmented_dir(subset)}/{size_tag(size)}_train_aug_{batch:02d}.npz"


# -- training and evaluation ------------------------------------------------------------


def model_stem(model, subset):
    """``models/Uset_001_model5`` or ``models/Binary_model4``."""
    return f"models/{uset(subset)}_{model}"


def trained_model(model, subset):
    return model_stem(model, subset) + ".keras"


def training_checkpoint(model, subset):
    return model_stem(model, subset) + ".ckpt.zip"


def training_metrics(model, subset):
    return model_stem(model, subset) + ".metrics.json"


def training_plot(model, subset):
    return model_stem(model, subset) + ".metrics.png"


def member_id(model, subset):
    """How a job names a member on evaluate's command line: ``model4:1``, ``model4:binary``."""
    return f"{model}:{'binary' if subset == 'binary' else int(subset)}"


def parse_member_id(text):
    """``"model4:1"`` -> ``("model4", 1)``; ``"model4:binary"`` -> ``("model4", "binary")``; else ValueError."""
    model, sep, subset = str(text).partition(":")
    if not sep or not model or not (subset == "binary" or subset.isdigit()):
        raise ValueError(text)
    return model, ("binary" if subset == "binary" else int(subset))


def member_name(model, subset):
    """Name of an ensemble member as the original API spells it.

    ``model4`` (full set), ``model41``..``model4m`` (subsamples), ``model4-binary``.
    """
    if subset == "binary":
        return f"{model}-binary"
    return model if int(subset) == 0 else f"{model}{int(subset)}"


EVALUATION_FILES = (
    "evaluation/predictions.csv",
    "evaluation/metrics.json",
    "evaluation/report.html",
    "evaluation/predicted_vs_true.png",
    "evaluation/residuals.png",
    "evaluation/outliers.png",
    "evaluation/confusion.png",
)


def bundle_manifest(bundle="bundle"):
    return f"{bundle}/manifest.json"


def bundle_member(name, bundle="bundle"):
    return f"{bundle}/{name}.keras"


# -- the hyper-parameter search (run_workflow.py --hpo-trials N) ---------------------------

HPO_DIR = "hpo"
#: What the select job writes: the parameters training reads, the merged study, the report's summary.
HPO_BEST_PARAMS = f"{HPO_DIR}/best_params.json"
HPO_STUDY = f"{HPO_DIR}/study.journal"
HPO_SUMMARY = f"{HPO_DIR}/search.json"


def hpo_journal(index, count):
    """The Optuna journal of trial job ``index`` of ``count`` (its study; the job's checkpoint)."""
    return f"{HPO_DIR}/trials_{index:02d}of{count:02d}.journal"


def hpo_trials(index, count):
    """The trials of trial job ``index`` of ``count``, as JSON (what the select job reads)."""
    return f"{HPO_DIR}/trials_{index:02d}of{count:02d}.json"


# -- the survey workflow (run_workflow.py --predict-with BUNDLE) ----------------------------
#
# Every survey product carries the bundle's identity (inclinet.bundle.identity) in its name,
# so a rerun with another bundle writes new files beside the old ones and never mixes them.

SURVEY_DIR = "survey"


def survey_chunk(identity, index, count):
    """Rows of catalog chunk ``index`` of ``count`` measured with bundle ``identity``."""
    return f"{SURVEY_DIR}/{identity}/part{index:04d}of{count:04d}.csv"


def survey_gallery(identity, index, count):
    """The most uncertain galaxies of a chunk (normalised images) for the report's gallery."""
    return f"{SURVEY_DIR}/{identity}/part{index:04d}of{count:04d}_gallery.npz"


def survey_catalog(identity, suffix=".csv"):
    """The merged survey catalog (``.csv`` or ``.parquet``)."""
    return f"{SURVEY_DIR}/inclinet_{identity}{suffix}"


def survey_report(identity, suffix=".html"):
    """The survey's summary report (``.html``, and ``.json`` for its numbers)."""
    return f"{SURVEY_DIR}/inclinet_{identity}_report{suffix}"


def survey_slice(index, count):
    """The catalog rows of survey chunk ``index`` of ``count`` (written when the workflow is built)."""
    return f"{RAW_DIR}/{SURVEY_DIR}/catalog_part{index:04d}of{count:04d}.csv"


def survey_archive(index, count):
    """The raw images of survey chunk ``index`` of ``count`` in one tar file (Pegasus staging)."""
    return f"{RAW_DIR}/{SURVEY_DIR}/images_part{index:04d}of{count:04d}.tar"


#: The pattern of :func:`survey_slice` (what the replica catalog's entry for the slices matches).
SURVEY_SLICE_PATTERN = rf"{RAW_DIR}/{SURVEY_DIR}/(catalog_part[0-9]{{4,}}of[0-9]{{4,}}\.csv)"


def parse_survey_slice(lfn):
    """``(index, count)`` of a :func:`survey_slice` name, None for any other name."""
    match = re.fullmatch(SURVEY_SLICE_PATTERN, lfn)
    if match is None:
        return None
    index, count = re.fullmatch(r"catalog_part([0-9]+)of([0-9]+)\.csv", match.group(1)).groups()
    return int(index), int(count)
