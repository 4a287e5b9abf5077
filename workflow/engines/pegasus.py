"""The Pegasus engine: plan (and submit) the run's workflow.yml with its catalogs, watch, resume, cancel.

``run`` calls ``pegasus-plan`` with the command line it prints. With HTCondor on the machine
(``condor_submit`` on PATH) it plans with ``--submit``; without it, it plans only and says
how to submit. Without Pegasus it stops after writing the run directory and prints the
exact ``pegasus-plan`` command. The planner puts its submit directory below ``--dir``
(``RUN/submit/<user>/pegasus/inclinet/runNNNN``); that directory (the one holding
``braindump.yml``) is recorded in ``RUN/state/pegasus.json`` and is what ``status``,
``resume``, ``cancel`` and ``--reuse`` use.

``status`` calls ``pegasus-status -l`` where HTCondor is installed; without it, it reads the
submit directory's ``jobstate.log`` (written by DAGMan's monitor) and otherwise reports the
planned jobs. ``resume`` plans a run that never was, submits a planned one, and resubmits
the rescue DAG of a failed one (``pegasus-run``; finished jobs are skipped); ``cancel``
calls ``pegasus-remove``.

The engine plans the ``workflow.yml`` the builder wrote, through the planner's public
command line: it never rebuilds the workflow, reads ``run.json`` or touches the Pegasus
API's objects. What it needs comes with the call: the jobs (whether they carry cluster
labels decides ``--cluster label``) and the flags, those of the build included
(:data:`RECORDED_FLAGS`, filled in by the workflow CLI).
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from inclinet import naming
from inclinet.errors import ConfigError, InputError, StageError
from inclinet.io import atomic_write_json
from workflow.engines.common import (
    BLOCKED,
    CANCELLED,
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    UNSUBMITTED,
    count_states,
    state_dir,
    status_exit_code,
)

logger = logging.getLogger(__name__)

STATE_FILE = "pegasus.json"
BRAINDUMP = "braindump.yml"

#: Flags of the build that status/resume/cancel reuse when not given again (the CLI fills them in).
RECORDED_FLAGS = ("pegasus_site", "submit_dir", "reuse")

#: jobstate.log states (last one per job) and the column pegasus-status counts them in.
_DONE = {"JOB_SUCCESS", "POST_SCRIPT_SUCCESS"}
_FAILED = {"JOB_FAILURE", "POST_SCRIPT_FAILURE", "PRE_SCRIPT_FAILURE", "SUBMIT_FAILED", "JOB_ABORTED"}
_RUNNING = {"EXECUTE", "JOB_TERMINATED", "POST_SCRIPT_STARTED", "POST_SCRIPT_TERMINATED", "JOB_EVICTED"}
#: DAGMan's end state of a job removed by pegasus-remove.
_CANCELLED = {"JOB_ABORTED"}


def add_arguments(parser):
    parser.add_argument(
        "--pegasus-site",
        default=None,
        metavar="SITE",
        help="execution site of sites.yml for --engine pegasus (default condorpool; e.g. slurm)",
    )
    parser.add_argument(
        "--submit-dir",
        default=None,
        metavar="DIR",
        help="pegasus-plan --dir (default RUN/submit; the planner adds <user>/pegasus/<name>/runNNNN)",
    )
    parser.add_argument(
        "--cluster-size",
        type=int,
        default=None,
        metavar="N",
        help="cluster N synth/prep jobs into one (label clustering; prep grouped by band)",
    )
    parser.add_argument(
        "--reuse",
        action="append",
        default=None,
        metavar="RUN_OR_SUBMIT_DIR",
        help="reuse the outputs registered by an earlier Pegasus run (its run directory or submit "
        "directory; pegasus-plan --reuse)",
    )
    parser.add_argument(
        "--container-mode",
        choices=("stage", "shared"),
        default=None,
        help="stage: Pegasus stages the --container-image to each site (once per site on "
        "nonsharedfs sites, with every job on condorio ones); shared: the image is a "
        "file:// path every node sees (CVMFS, shared file system), read in place (stage)",
    )
    parser.add_argument(
        "--resources",
        action="append",
        default=None,
        metavar="STAGE.KEY=VALUE",
        help="override a stage's sized request for every engine (KEY: cores, gpus, memory in MB, "
        "runtime in s), e.g. train.runtime=7200; repeatable",
    )
    return parser


# -- options ----------------------------------------------------------------------------


def _clustered(jobs):
    """True when the DAG carries cluster labels (``--cluster-size``): plan with ``--cluster label``."""
    return any(job.cluster for job in jobs)


def _staging(run_dir, site):
    """Sites planned with ``nonsharedfs`` stage through their own shared scratch directory."""
    sites = yaml.safe_load((Path(run_dir) / "sites.yml").read_text(encoding="utf-8"))
    for entry in sites.get("sites", []):
        if entry.get("name") == site:
            pegasus = (entry.get("profiles") or {}).get("pegasus") or {}
            if pegasus.get("data.configuration") == "nonsharedfs" and entry.get("directories"):
                return {site: site}
            return None
    known = ", ".join(s.get("name", "?") for s in sites.get("sites", []) if s.get("name") != "local")
    raise InputError(f"invalid --pegasus-site: {site}; must be a site of {Path(run_dir) / 'sites.yml'}: {known}")


def plan_options(run_dir, args, *, cluster=False):
    """Options of ``pegasus-plan`` for this run (keyword names of ``Workflow.plan``)."""
    run_dir = Path(run_dir).resolve()
    values = args if isinstance(args, dict) else vars(args)
    site = values.get("pegasus_site") or "condorpool"
    options = {
        "conf": str(run_dir / "pegasus.properties"),
        "dir": str(Path(values.get("submit_dir") or run_dir / "submit").resolve()),
        "sites": [site],
        "output_sites": ["local"],
        "cleanup": "inplace",
    }
    staging = _staging(run_dir, site)
    if staging:
        options["staging_sites"] = staging
    if cluster:
        options["cluster"] = ["label"]
    if values.get("reuse"):
        options["reuse"] = [str(reused_submit_dir(path)) for path in values["reuse"]]
    return options


def plan_command(run_dir, args, *, submit=True, cluster=False):
    """The ``pegasus-plan`` command line of this run."""
    options = plan_options(run_dir, args, cluster=cluster)
    argv = [
        "pegasus-plan",
        "--conf",
        options["conf"],
        "--dir",
        options["dir"],
        "--sites",
        ",".join(options["sites"]),
        "--output-sites",
        "local",
        "--cleanup",
        options["cleanup"],
    ]
    for site, staging in (options.get("staging_sites") or {}).items():
        argv += ["--staging-site", f"{site}={staging}"]
    if options.get("cluster"):
        argv += ["--cluster", ",".join(options["cluster"])]
    for old in options.get("reuse", []):
        argv += ["--reuse", old]
    if submit:
        argv.append("--submit")
    argv.append(str(Path(run_dir).resolve() / "workflow.yml"))
    return argv


def _quote(argv):
    return " ".join(shlex.quote(str(a)) for a in argv)


# -- submit directories -----------------------------------------------------------------


def braindumps(base):
    """Submit directories (holding ``braindump.yml``) at or below ``base``, oldest first."""
    base = Path(base)
    if (base / BRAINDUMP).is_file():
        return [base]
    found = [path.parent for path in base.glob(f"**/{BRAINDUMP}")] if base.is_dir() else []
    return sorted(found, key=lambda d: ((d / BRAINDUMP).stat().st_mtime_ns, str(d)))


def read_braindump(submit_dir):
    return yaml.safe_load((Path(submit_dir) / BRAINDUMP).read_text(encoding="utf-8")) or {}


def reused_submit_dir(path):
    """The submit directory that ``--reuse PATH`` means: PATH itself, a run's recorded one, or the newest below."""
    path = Path(path).resolve()
    if (path / naming.RUN_FILE).is_file():
        recorded = _recorded(path).get("submit_dir")
        if recorded and (Path(recorded) / BRAINDUMP).is_file():
            return Path(recorded)
        path = path / "submit"
    found = braindumps(path)
    if not found:
        raise InputError(
            f"invalid --reuse: {path}; must be a planned Pegasus run (a run directory or a submit "
            f"directory with {BRAINDUMP})"
        )
    return found[-1]


def _recorded(run_dir):
    path = state_dir(run_dir) / STATE_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return {}
    return {}


def find_submit_dir(run_dir, args=None):
    """The real submit directory of a run: the one recorded at planning (when it lies below ``--submit-dir``,
    if that is given), else the newest braindump below ``--submit-dir`` (default ``RUN/submit``)."""
    base = getattr(args, "submit_dir", None) if args is not None else None
    base = Path(base or Path(run_dir) / "submit").resolve()
    recorded = _recorded(run_dir).get("submit_dir")
    if recorded and (Path(recorded) / BRAINDUMP).is_file() and Path(recorded).resolve().is_relative_to(base):
        return Path(recorded)
    found = braindumps(base)
    return found[-1] if found else None


# -- planning ---------------------------------------------------------------------------


def plan(run_dir, args, *, cluster=False):
    """Run ``pegasus-plan`` (with ``--submit`` where HTCondor is here); record and return the submit dir."""
    run_dir = Path(run_dir)
    submit = shutil.which("condor_submit") is not None
    argv = plan_command(run_dir, args, submit=submit, cluster=cluster)
    result = subprocess.run(argv, capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise StageError(f"pegasus-plan failed (exit {result.returncode}):\n{output[-4000:]}\ncommand: {_quote(argv)}")
    submit_dir = _submit_dir_from_output(output, plan_options(run_dir, args, cluster=cluster)["dir"])
    brain = read_braindump(submit_dir)
    atomic_write_json(
        state_dir(run_dir) / STATE_FILE,
        {
            "submit_dir": str(submit_dir),
            "submitted": submit,
            "planner_version": str(brain.get("planner_version", "")),
            "plan_command": argv,
        },
    )
    return submit_dir, submit, str(brain.get("planner_version", ""))


def _submit_dir_from_output(output, base):
    match = re.search(r"pegasus-(?:run|status -l)\s+(\S+)", output)
    if match and (Path(match.group(1)) / BRAINDUMP).is_file():
        return Path(match.group(1))
    found = braindumps(base)
    if not found:
        raise StageError(f"pegasus-plan ended but no {BRAINDUMP} was found below {base}:\n{output[-2000:]}")
    return found[-1]


def _not_submitted_hint(submit_dir):
    return (
        f"planned, not submitted (HTCondor's condor_submit is not on PATH here).\n"
        f"submit it on the submit host with:\n  pegasus-run {submit_dir}\n"
        f"  (or: python run_workflow.py resume RUN)"
    )


def run(run_dir, jobs, args):
    """Plan (and submit) through Pegasus, or print the command when Pegasus is not installed here."""
    run_dir = Path(run_dir)
    cluster = _clustered(jobs)
    command = _quote(plan_command(run_dir, args, cluster=cluster))
    if not shutil.which("pegasus-plan"):
        print(
            f"pegasus-plan is not on PATH here, so the workflow was written but not planned.\n"
            f"Run on the Pegasus submit host (with HTCondor running):\n  {command}"
        )
        return 0
    submit_dir, submitted, version = plan(run_dir, args, cluster=cluster)
    print(f"planned with Pegasus {version or '?'}: {submit_dir}")
    if submitted:
        print(
            f"submitted; watch it with: pegasus-status -l {submit_dir}\n  (or: python run_workflow.py status {run_dir})"
        )
    else:
        print(_not_submitted_hint(submit_dir))
    return 0


# -- watching ---------------------------------------------------------------------------


def planned_jobs(submit_dir):
    """``{job name: kind}`` of the planned DAG (kind: the transformation or the auxiliary job type)."""
    return {parts[1]: _kind(parts[1]) for parts in _dag_lines(submit_dir) if len(parts) >= 2 and parts[0] == "JOB"}


def _dag_lines(submit_dir):
    """The planned DAG file's lines, split into words (none when the plan has no DAG file)."""
    dag_file = Path(submit_dir) / str(read_braindump(submit_dir).get("dag", ""))
    if not dag_file.is_file():
        return []
    return [line.split() for line in dag_file.read_text(encoding="utf-8").splitlines()]


def _kind(name):
    for prefix in ("create_dir", "stage_in", "stage_out", "stage_worker", "register", "clean_up", "cleanup", "merge"):
        if name.startswith(prefix):
            return prefix
    return name.split("_", 1)[0]


def jobstate(submit_dir):
    """``{job: last state}`` from the submit directory's ``jobstate.log`` (empty when there is none)."""
    path = Path(submit_dir) / "jobstate.log"
    states = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] != "INTERNAL":
                states[parts[1]] = parts[2]
    return states


def planned_edges(submit_dir):
    """``{parent: [children]}`` of the planned DAG (its ``PARENT ... CHILD ...`` lines)."""
    edges = {}
    for parts in _dag_lines(submit_dir):
        if parts[:1] == ["PARENT"] and "CHILD" in parts:
            cut = parts.index("CHILD")
            for parent in parts[1:cut]:
                edges.setdefault(parent, []).extend(parts[cut + 1 :])
    return edges


def job_states(submit_dir, planned, states, *, submitted=True):
    """``{planned job: state}`` in the engines' states (:data:`~workflow.engines.common.JOB_STATES`).

    From the last ``jobstate.log`` line of each job: success is ``done``, a failure ``failed``
    (``JOB_ABORTED``, a removed job, ``cancelled``), ``EXECUTE`` and after ``running``, any
    other (submitted, held, pre script) ``pending``; a job without a line is ``pending`` (or
    ``unsubmitted`` before submission), and ``blocked`` below a job that failed: DAGMan
    does not run it.
    """
    result = {}
    for name in planned:
        state = states.get(name)
        if state in _CANCELLED:
            result[name] = CANCELLED
        elif state in _DONE:
            result[name] = DONE
        elif state in _FAILED:
            result[name] = FAILED
        elif state in _RUNNING:
            result[name] = RUNNING
        else:
            result[name] = PENDING if submitted else UNSUBMITTED
    edges = planned_edges(submit_dir)
    stack = [name for name, state in result.items() if state in (FAILED, CANCELLED)]
    while stack:
        for child in edges.get(stack.pop(), []):
            if result.get(child) in (PENDING, UNSUBMITTED):
                result[child] = BLOCKED
                stack.append(child)
    return result


def summarize(submit_dir):
    """Counts as pegasus-status prints them: UNRDY READY RUN DONE FAIL, from the plan and jobstate.log."""
    planned = planned_jobs(submit_dir)
    states = jobstate(submit_dir)
    counts = {"UNRDY": 0, "READY": 0, "RUN": 0, "DONE": 0, "FAIL": 0}
    for name in planned:
        state = states.get(name)
        if state in _DONE:
            counts["DONE"] += 1
        elif state in _FAILED:
            counts["FAIL"] += 1
        elif state in _RUNNING:
            counts["RUN"] += 1
        elif state is not None:
            counts["READY"] += 1
        else:
            counts["UNRDY"] += 1
    return planned, states, counts


def _print_summary(submit_dir, planned, counts, title):
    total = max(1, len(planned))
    print(title)
    print(" ".join(f"{k:>5}" for k in counts) + "  %DONE")
    print(" ".join(f"{v:>5}" for v in counts.values()) + f"  {100.0 * counts['DONE'] / total:5.1f}")
    kinds = {}
    for kind in planned.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"{len(planned)} planned jobs: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    print(f"submit directory: {submit_dir}")


def status(run_dir, jobs, args):
    """Print the state of the planned workflow; exit 1 when a job is failed, blocked or cancelled."""
    submit_dir = find_submit_dir(run_dir, args)
    if submit_dir is None:
        argv = plan_command(run_dir, args, cluster=_clustered(jobs))
        print(
            f"not planned yet: no {BRAINDUMP} below the submit directory.\n"
            f"plan and submit with: python run_workflow.py resume {run_dir}\n  (= {_quote(argv)})"
        )
        print(f"states: {count_states([UNSUBMITTED] * len(jobs))}")
        return 0
    submitted = _recorded(run_dir).get("submitted", True) or (Path(submit_dir) / "jobstate.log").is_file()
    planned, states, counts = summarize(submit_dir)
    mapped = job_states(submit_dir, planned, states, submitted=submitted)
    if submitted and shutil.which("pegasus-status") and shutil.which("condor_q"):
        code = subprocess.call(["pegasus-status", "-l", str(submit_dir)])
        if states:
            print(f"states: {count_states(mapped.values())} (of {len(planned)} planned jobs, from jobstate.log)")
        return max(code, status_exit_code(mapped.values()))
    if not submitted:
        _print_summary(submit_dir, planned, counts, "planned, not submitted")
        print(f"submit it with: pegasus-run {submit_dir}  (or: python run_workflow.py resume {run_dir})")
    elif states:
        _print_summary(submit_dir, planned, counts, "from jobstate.log (HTCondor is not on this machine)")
        for name in planned:
            if mapped[name] in (FAILED, CANCELLED):
                print(f"  {mapped[name]}: {name} ({states[name]}); see pegasus-analyzer {submit_dir}")
    else:
        _print_summary(
            submit_dir,
            planned,
            counts,
            "submitted, no jobstate.log yet (HTCondor is not on this machine: no live state)",
        )
    print(f"states: {count_states(mapped.values())} (of {len(planned)} planned jobs)")
    return status_exit_code(mapped.values())


def resume(run_dir, jobs, args):
    """Plan a run never planned; submit a planned one; resubmit the rescue DAG of a failed one."""
    if getattr(args, "retries_override", None) is not None:
        raise ConfigError(
            "resume --retries: the pegasus engine plans each job's retries into the workflow "
            "(dagman retry); build the run again with --retries N instead"
        )
    submit_dir = find_submit_dir(run_dir, args)
    cluster = _clustered(jobs)
    if submit_dir is None:
        if not shutil.which("pegasus-plan"):
            argv = plan_command(run_dir, args, cluster=cluster)
            print(f"not planned yet, and pegasus-plan is not on PATH here. On the submit host run:\n  {_quote(argv)}")
            return 0
        submit_dir, submitted, version = plan(run_dir, args, cluster=cluster)
        print(f"planned with Pegasus {version or '?'}: {submit_dir}")
        if not submitted:
            print(_not_submitted_hint(submit_dir))
            return 0
        print(f"submitted; watch it with: pegasus-status -l {submit_dir}")
        return 0
    return _tool(
        ["pegasus-run", str(submit_dir)], "submit it (or resubmit its rescue DAG: finished jobs are skipped)", run_dir
    )


def cancel(run_dir, jobs, args):
    submit_dir = find_submit_dir(run_dir, args)
    if submit_dir is None:
        print("not planned, so nothing to cancel")
        return 0
    return _tool(["pegasus-remove", str(submit_dir)], "remove the workflow", run_dir)


def _tool(argv, what, run_dir):
    if not (shutil.which(argv[0]) and shutil.which("condor_q")):
        print(
            f"{argv[0]} needs HTCondor, which is not on this machine; {what} on the submit host with:\n  "
            + _quote(argv)
        )
        return 0
    code = subprocess.call(argv)
    if code == 0 and argv[0] == "pegasus-run":
        recorded = _recorded(run_dir)
        if recorded:
            atomic_write_json(state_dir(run_dir) / STATE_FILE, dict(recorded, submitted=True))
    return code
