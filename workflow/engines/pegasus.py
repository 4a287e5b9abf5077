"""The Pegasus engine: plan and submit the run's workflow.yml with its catalogs, or say exactly how to.

``run`` calls ``Workflow.plan(submit=True, ...)`` when ``pegasus-plan`` is on PATH. Without
Pegasus installed it stops after writing the run directory, prints the exact
``pegasus-plan`` command to run on the submit host and why it stopped, and exits 0 (the
run directory is complete; nothing failed). ``status``/``resume``/``cancel`` call
``pegasus-status``/``pegasus-run``/``pegasus-remove`` on the submit directory, or print the
command when those tools are not here.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
from pathlib import Path

from inclinet.errors import StageError
from inclinet.io import atomic_write_json, atomic_write_text
from workflow import catalogs
from workflow.engines.common import read_run_info, state_dir

logger = logging.getLogger(__name__)

STATE_FILE = "pegasus.json"


def add_arguments(parser):
    parser.add_argument("--pegasus-site", default=None, metavar="SITE",
                        help="execution site of sites.yml for --engine pegasus (default condorpool; e.g. slurm)")
    parser.add_argument("--submit-dir", default=None, metavar="DIR",
                        help="Pegasus submit directory (default RUN/submit)")
    parser.add_argument("--cluster-size", type=int, default=None, metavar="N",
                        help="cluster N small jobs of a level into one (horizontal clustering)")
    parser.add_argument("--reuse", action="append", default=None, metavar="SUBMIT_DIR",
                        help="reuse the outputs registered by an earlier plan (pegasus-plan --reuse)")
    return parser


def _site(args):
    return getattr(args, "pegasus_site", None) or "condorpool"


def _submit_dir(run_dir, args):
    return Path(getattr(args, "submit_dir", None) or Path(run_dir) / "submit").resolve()


def _staging(run_dir, site):
    """Sites planned with ``nonsharedfs`` stage through their own shared scratch directory."""
    import yaml

    sites = yaml.safe_load((Path(run_dir) / "sites.yml").read_text(encoding="utf-8"))
    for entry in sites.get("sites", []):
        if entry.get("name") == site:
            pegasus = (entry.get("profiles") or {}).get("pegasus") or {}
            if pegasus.get("data.configuration") == "nonsharedfs" and entry.get("directories"):
                return {site: site}
    return None


def plan_options(run_dir, args):
    """Keyword arguments of ``Workflow.plan`` for this run."""
    run_dir = Path(run_dir).resolve()
    site = _site(args)
    options = {
        "conf": str(run_dir / "pegasus.properties"),
        "dir": str(_submit_dir(run_dir, args)),
        "sites": [site],
        "output_sites": ["local"],
        "cleanup": "inplace",
    }
    staging = _staging(run_dir, site)
    if staging:
        options["staging_sites"] = staging
    if getattr(args, "cluster_size", None):
        options["cluster"] = ["horizontal"]
    if getattr(args, "reuse", None):
        options["reuse"] = list(args.reuse)
    return options


def plan_command(run_dir, args):
    """The ``pegasus-plan`` command line equivalent to :func:`plan_options`."""
    options = plan_options(run_dir, args)
    argv = ["pegasus-plan", "--conf", options["conf"], "--dir", options["dir"], "--sites", ",".join(options["sites"]),
            "--output-sites", "local", "--cleanup", options["cleanup"]]
    for site, staging in (options.get("staging_sites") or {}).items():
        argv += ["--staging-site", f"{site}={staging}"]
    if options.get("cluster"):
        argv += ["--cluster", "horizontal"]
    for old in options.get("reuse", []):
        argv += ["--reuse", old]
    argv += ["--submit", str(Path(run_dir).resolve() / "workflow.yml")]
    return argv


def run(run_dir, jobs, args):
    """Plan and submit through Pegasus, or print the command when Pegasus is not installed here."""
    from workflow.dag import WorkflowConfig, to_pegasus

    run_dir = Path(run_dir)
    command = " ".join(shlex.quote(a) for a in plan_command(run_dir, args))
    if getattr(args, "cluster_size", None):
        _add_clustering(jobs, args.cluster_size, run_dir)
    if not shutil.which("pegasus-plan"):
        print(f"pegasus-plan is not on PATH here, so the workflow was written but not planned.\n"
              f"Run on the Pegasus submit host (with HTCondor running):\n  {command}")
        return 0
    info = read_run_info(run_dir)
    workflow = to_pegasus(jobs, WorkflowConfig.from_dict(info["config"]))
    workflow._path = str((run_dir / "workflow.yml").resolve())
    options = plan_options(run_dir, args)
    from Pegasus.client._client import PegasusClientError

    try:
        workflow.plan(submit=True, **options)
    except PegasusClientError as exc:
        raise StageError(f"pegasus-plan failed:\n{exc.output}\ncommand: {command}") from None
    submit_dir = workflow._submit_dir or options["dir"]
    atomic_write_json(state_dir(run_dir) / STATE_FILE, {"submit_dir": str(submit_dir)})
    print(f"submitted: {submit_dir}\nwatch it with: pegasus-status -l {submit_dir}")
    return 0


def _add_clustering(jobs, size, run_dir):
    """Rewrite workflow.yml with a ``clusters.size`` profile on the small (non-GPU) jobs."""
    import yaml

    path = Path(run_dir) / "workflow.yml"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    small = {job.id for job in jobs if not job.gpus}
    for job in data["jobs"]:
        if job["id"] in small:
            job.setdefault("profiles", {}).setdefault("pegasus", {})["clusters.size"] = int(size)
    atomic_write_text(path, catalogs._dump(data))


def _recorded_submit_dir(run_dir, args):
    explicit = getattr(args, "submit_dir", None)
    if explicit:
        return Path(explicit)
    path = state_dir(run_dir) / STATE_FILE
    if path.is_file():
        return Path(json.loads(path.read_text(encoding="utf-8"))["submit_dir"])
    return Path(run_dir).resolve() / "submit"


def _tool(run_dir, args, argv_head, what):
    submit_dir = _recorded_submit_dir(run_dir, args)
    argv = [*argv_head, str(submit_dir)]
    if not shutil.which(argv[0]):
        print(f"{argv[0]} is not on PATH here; {what} on the Pegasus submit host with:\n  "
              + " ".join(shlex.quote(a) for a in argv))
        return 0
    return subprocess.call(argv)


def status(run_dir, args):
    return _tool(run_dir, args, ["pegasus-status", "-l"], "see the workflow's state")


def resume(run_dir, args):
    """Resubmit the rescue DAG (finished jobs are skipped); re-plan with --reuse to change sites."""
    return _tool(run_dir, args, ["pegasus-run"], "resubmit the rescue DAG")


def cancel(run_dir, args):
    return _tool(run_dir, args, ["pegasus-remove"], "remove the workflow")
