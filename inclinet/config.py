"""Every setting shared by the workflow and the stages, defined once: default, type, bounds, help.

The workflow's build flags (``run_workflow.py``), the fields of
:class:`workflow.dag.WorkflowConfig` and each stage's own flags are derived from
:data:`SETTINGS`: a stage adds its flag with :func:`add_argument`, the workflow reads the
default with :func:`default` and validates with :func:`check`. So ``--epochs`` has one
default (10) whether training runs inside the workflow or by hand, and the model5 size
minimum comes from the model itself (:func:`check_models_fit`).

Science settings (what is computed) are apart from execution settings (how and where it
runs: ``galaxies_per_job``, ``retries``, the engines' own flags). A configuration file
(``run_workflow.py --config FILE.yaml``) keeps them in two sections; :func:`setting_schema`
gives each setting's JSON schema and :func:`validate_document` checks a file against the
schema with :mod:`jsonschema`, naming the bad key and value.
"""

from __future__ import annotations

from dataclasses import dataclass, make_dataclass
from pathlib import Path

from inclinet import naming
from inclinet.errors import invalid
from inclinet.models import DROPOUT, TTA_VIEW_COUNTS

#: Flag help texts end with the default, as ``(default X)``; ``None`` shows no default.
_UNSET = object()


@dataclass(frozen=True)
class Setting:
    """One setting: the flag ``--<name with dashes>``, its type, default and bounds."""

    name: str
    type: type
    default: object
    help: str
    minimum: int | float | None = None
    maximum: int | float | None = None
    choices: tuple | None = None
    science: bool = True

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")

    def check(self, value, *, flag=None):
        """``value`` if it is valid, else :class:`~inclinet.errors.ConfigError` naming the flag."""
        flag = flag or self.flag
        if self.choices is not None:
            if value not in self.choices:
                raise invalid(flag, value, "one of " + ", ".join(map(str, self.choices)))
            return value
        if self.type is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise invalid(flag, value, self._range_text())
        if self.type is float and not isinstance(value, (int, float)):
            raise invalid(flag, value, self._range_text())
        if self.type is str:
            if value is not None and not (isinstance(value, str) and value):
                raise invalid(flag, value, "a non-empty string")
            return value
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise invalid(flag, value, self._range_text())
        return value

    def _range_text(self):
        kind = "an integer" if self.type is int else "a number"
        if self.minimum is not None and self.maximum is not None:
            return f"{kind} in {self.minimum}..{self.maximum}"
        if self.minimum is not None:
            return f"{kind} >= {self.minimum}"
        return kind


SETTINGS = {
    s.name: s
    for s in (
        # -- science: what is computed ------------------------------------------------------
        Setting("size", int, 128, "image size the networks see, in pixels", minimum=8),
        Setting("synthetic_size", int, 512, "pixel size of rendered synthetic raw images", minimum=16),
        Setting("subsamples", int, 3, "regression subsamples m besides the full set", minimum=0),
        Setting("test_fraction", float, 0.1, "fraction of the galaxies with inclination >= 45 held out as test_000"),
        Setting("binary_test_fraction", float, 0.1, "fraction of all galaxies held out for the binary task, per class"),
        Setting("n_batches", int, 5, "augmented batches per training subset", minimum=1),
        Setting("per_bin", int, 100, "augmented colour images per 5-degree bin and batch", minimum=1),
        Setting(
            "binary_per_bin",
            int,
            0,
            "augmented colour images per class and batch of the binary (reject) task; 0: a batch as "
            "large as a regression batch (4.5 x per_bin, rounded up)",
            minimum=0,
        ),
        Setting("epochs", int, 10, "training epochs", minimum=1),
        # Batch size and schedule: the fastest to a given ensemble RMS in bench/bench_time_to_accuracy.py
        # (BENCHMARKS.md, "Time to accuracy").
        Setting("batch_size", int, 16, "training batch size (images per step)", minimum=1),
        Setting("learning_rate", float, 1e-3, "Adam learning rate", minimum=0.0),
        Setting(
            "binary_learning_rate",
            float,
            3e-4,
            "Adam learning rate of the binary (reject) members in the workflow (at 1e-3 they can stay at chance)",
            minimum=0.0,
        ),
        Setting(
            "binary_trunk",
            str,
            "regression",
            "what the binary (reject) members start from in the workflow: 'regression' (the convolutional trunk "
            "of the same model's regression member on the full training set, frozen; the dense layers and head "
            "learn) or 'scratch' (every layer learns from random weights)",
            choices=("regression", "scratch"),
        ),
        Setting(
            "lr_schedule",
            str,
            "constant",
            "learning rate over the epochs: constant, or cosine decay to 1/20 of it",
            choices=("constant", "cosine"),
        ),
        Setting("views", int, 8, "augmented views per test image in evaluation", choices=TTA_VIEW_COUNTS),
        Setting("dropout", float, DROPOUT, "dropout rate of every dropout layer", minimum=0.0, maximum=0.95),
        Setting(
            "regression_views",
            str,
            "dihedral",
            "how the regression members' training images are varied: 'chain' (rotation, shift, scale, gamma, "
            "contrast, noise, blur, then the canonical normalisation again) or 'dihedral' (turns by multiples of "
            "90 degrees and flips only, nothing resampled: the canonical images as evaluation and predict see them)",
            choices=("dihedral", "chain"),
        ),
        Setting(
            "aug_scale",
            float,
            1.0,
            "factor on the half-width of the augmentation's scale range (1: the chains' own 0.8..1.2; chain "
            "views only)",
            minimum=0.0,
            maximum=4.0,
        ),
        Setting(
            "aug_noise",
            float,
            1.0,
            "factor on the augmentation's Gaussian noise level (1: the chains' own; chain views only)",
            minimum=0.0,
        ),
        # The hyper-parameter search (inclinet-hpo; run_workflow.py --hpo-trials N).
        Setting("hpo_trials", int, 0, "trials of a hyper-parameter search before training (0: no search)", minimum=0),
        Setting(
            "hpo_parallel",
            int,
            1,
            "trial jobs of the search, run in parallel (the search's result depends on it)",
            minimum=1,
        ),
        Setting("hpo_epochs", int, 3, "training epochs of one search trial", minimum=1),
        Setting(
            "hpo_foreign",
            str,
            None,
            "raw-layout folder (catalog.csv, galaxies/) of another universe, e.g. bench/foreign_universe.py's "
            "output: every trial also validates on its accepted galaxies (default: our held-out galaxies only)",
        ),
        Setting("seed", int, 0, "random seed of the run"),
        # -- execution: how the work is cut and retried ---------------------------------------
        Setting("galaxies_per_job", int, 500, "catalog rows per synth/prep job", minimum=1, science=False),
        Setting(
            "retries",
            int,
            2,
            "retries of a failed job (exit code 2, a usage or input error, is never retried)",
            minimum=0,
            science=False,
        ),
    )
}

#: The defaults as one frozen dataclass instance: ``DEFAULTS.epochs`` is 10.
DEFAULTS = make_dataclass(
    "Defaults", [(name, item.type, item.default) for name, item in SETTINGS.items()], frozen=True
)()

#: The default raw-image root (``pgc<id>_<root>_<band>.png``).
DEFAULT_ROOT = naming.DEFAULT_ROOT


def setting(name):
    return SETTINGS[name]


def default(name):
    """The one default of setting ``name``."""
    return SETTINGS[name].default


def check(name, value, *, flag=None):
    """Validate ``value`` for setting ``name`` (see :meth:`Setting.check`)."""
    return SETTINGS[name].check(value, flag=flag)


def add_argument(parser, name, *short, default=_UNSET, required=False, help=None, flag=None, metavar=None):
    """Add the flag of setting ``name`` (plus ``short`` aliases) to ``parser``; its dest is ``name``.

    The default is the setting's unless given (the workflow passes ``default=None`` so
    that it can tell which flags were set); ``help`` replaces the generic help text and
    ``flag`` the long flag (a stage that mirrors an original script spells it its way).
    """
    item = SETTINGS[name]
    kwargs = {"type": item.type}
    if item.choices is not None:
        kwargs["choices"] = item.choices
    if required:
        kwargs["required"] = True
        text = help or item.help
    else:
        kwargs["default"] = item.default if default is _UNSET else default
        text = f"{help or item.help} (default {item.default})"
        if item.default is None:  # unset: the help says what that means
            text = help or item.help
    if metavar is not None:
        kwargs["metavar"] = metavar
    return parser.add_argument(*short, flag or item.flag, dest=name, help=text, **kwargs)


def check_models_fit(models, size, *, flag="--models"):
    """Refuse a model whose convolutions need more than ``size`` pixels (model5: 76)."""
    from inclinet.models import minimum_input_size

    for model in models:
        needed = minimum_input_size(model)
        if size < needed:
            raise invalid(flag, model, f"left out for --size below {needed} (its convolutions need >= {needed} px)")


# -- configuration files (run_workflow.py --config) ------------------------------------------


def setting_schema(name):
    """The JSON schema of setting ``name`` (type, bounds, choices), with its "must be" text as description."""
    item = SETTINGS[name]
    if item.choices is not None:
        return {"enum": list(item.choices), "description": "one of " + ", ".join(map(str, item.choices))}
    schema = {"type": "integer" if item.type is int else "number" if item.type is float else "string"}
    if item.minimum is not None:
        schema["minimum"] = item.minimum
    if item.maximum is not None:
        schema["maximum"] = item.maximum
    schema["description"] = item._range_text() if item.type in (int, float) else "a string"
    return schema


def load_yaml_mapping(path):
    """The YAML mapping in ``path``; :class:`~inclinet.errors.InputError` naming the file and line otherwise."""
    import yaml

    from inclinet.errors import InputError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: configuration file not found; give the path of a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: configuration file not readable ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise InputError(f"{path}: not valid YAML{where} ({problem}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: a configuration file must be a YAML mapping (sections with keys), not a {type(data).__name__}"
        )
    return data


def validate_document(data, schema, source):
    """Check ``data`` against the JSON ``schema`` (:mod:`jsonschema`); raise :class:`ConfigError` for the first problem.

    The message names ``source``, the key as ``section.key`` and the value, with the
    schema's ``description`` as what it must be: ``FILE: invalid science.epochs: 0; must
    be an integer >= 1``. Unknown keys list the known ones.
    """
    import jsonschema

    from inclinet.errors import ConfigError

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if not errors:
        return data
    error = errors[0]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path).lstrip(".")
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known))
        key = f"{where}.{extra[0]}" if where else extra[0]
        hint = error.schema.get("x-misplaced", {}).get(extra[0])
        raise ConfigError(
            f"{source}: unknown key {key}" + (f" ({hint})" if hint else "") + "; must be one of " + ", ".join(known)
        )
    must = error.schema.get("description") or error.message
    raise ConfigError(f"{source}: invalid {where or 'file'}: {error.instance!r}; must be {must}")
