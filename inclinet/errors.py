"""The exception types of inclinet and the policy on which one to raise.

Policy
------
* :class:`InputError` -- the data handed to a stage is wrong: a corrupt or truncated
  image or npz, a catalog row that cannot be parsed, a missing band, labels out of range.
  The message names the file (and line/column or pgc) and says what to do. Exit code 2.
* :class:`ConfigError` -- a flag, a config value or a combination of them is invalid.
  The message has the shape ``invalid <name>: <value>; must be ...``. Exit code 2.
* :class:`StageError` -- a stage could not finish for a reason that is not the user's
  input (a declared output missing after the work, an engine failure). Exit code 1.

Library code raises these and never calls ``sys.exit``; only a CLI ``main`` turns them
into exit codes (see :func:`inclinet.cli.run_main`). Per-galaxy problems that should not
stop a job (one unreadable image among thousands) are not raised but recorded with
:class:`inclinet.report.SkipReport`.
"""


class InclinetError(Exception):
    """Base class of every error inclinet raises on purpose."""

    exit_code = 1


class InputError(InclinetError):
    """Bad input data: names the file/row and what to do about it."""

    exit_code = 2


class ConfigError(InclinetError):
    """Bad flag or configuration value: ``invalid <name>: <value>; must be ...``."""

    exit_code = 2


class StageError(InclinetError):
    """A stage failed at run time for a reason other than its input."""

    exit_code = 1


def invalid(name, value, must):
    """Build a :class:`ConfigError` with the house message shape."""
    return ConfigError(f"invalid {name}: {value!r}; must be {must}")
