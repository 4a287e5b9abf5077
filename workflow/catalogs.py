"""Pegasus catalogs of a run: sites, replicas, transformations and properties.

The repository's top-level ``sites.yml`` and ``replicas.yml`` are the catalogs a user edits
for their cluster and data. :func:`write_run_catalogs` reads them (or files given with
``--sites``/``--replicas``) and writes the complete catalogs of one run directory:

* ``sites.yml``: the user's sites, with the ``local`` site pointed at the run directory;
* ``replicas.yml``: the user's entries, plus the raw inputs given by flags (catalog file,
  one regex entry for all raw images), plus an empty placeholder per training checkpoint
  (with ``condorio`` Pegasus must find a checkpoint file before the first attempt);
* ``transformations.yml``: one transformation per stage, inside the inclinet container,
  on every execution site;
* ``pegasus.properties``: catalog files, ``dagman.retry`` set explicitly, ``nonsharedfs``.

Why ``nonsharedfs``: with ``sharedfs`` Pegasus silently plans containerised jobs to run
bare on the node, so the container (and its TensorFlow) would be ignored.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import yaml

from inclinet.errors import InputError
from inclinet.io import atomic_path, atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SITES = REPO_ROOT / "sites.yml"
DEFAULT_REPLICAS = REPO_ROOT / "replicas.yml"
CONTAINER_NAME = "inclinet"
#: Where the container definition installs the console scripts.
CONTAINER_BIN = "/usr/local/bin"
DEFAULT_IMAGE = f"file://{REPO_ROOT / 'containers' / 'inclinet.sif'}"
EXECUTION_SITES = ("condorpool", "slurm")
PEGASUS_VERSION = "5.0"


# -- sites ------------------------------------------------------------------------------

def local_site(run_dir):
    """The submit host: scratch and output storage inside the run directory."""
    from Pegasus.api import Directory, FileServer, Operation, Site

    run_dir = Path(run_dir).resolve()
    scratch = run_dir / "pegasus" / "scratch"
    storage = run_dir / "pegasus" / "outputs"
    site = Site("local")
    site.add_directories(
        Directory(Directory.SHARED_SCRATCH, scratch).add_file_servers(FileServer(f"file://{scratch}", Operation.ALL)),
        Directory(Directory.LOCAL_STORAGE, storage).add_file_servers(FileServer(f"file://{storage}", Operation.ALL)),
    )
    return site


def default_site_catalog(run_dir="/tmp/inclinet-run", *, slurm_scratch="/scratch/inclinet", gpu_queue="gpu",
                         cpu_queue="cpu"):
    """The editable default: ``local``, an HTCondor pool and a SLURM cluster through HTCondor."""
    from Pegasus.api import (
        Directory,
        FileServer,
        Grid,
        Namespace,
        Operation,
        Scheduler,
        Site,
        SiteCatalog,
        SupportedJobs,
    )

    condorpool = Site("condorpool")
    condorpool.add_pegasus_profile(style="condor", data_configuration="condorio")
    condorpool.add_condor_profile(universe="vanilla")

    slurm = Site("slurm")
    slurm.add_grids(Grid(Grid.BATCH, "localhost", Scheduler.SLURM, SupportedJobs.COMPUTE))
    slurm.add_directories(
        Directory(Directory.SHARED_SCRATCH, slurm_scratch, shared_file_system=True)
        .add_file_servers(FileServer(f"file://{slurm_scratch}", Operation.ALL)))
    # Run from the cluster's login node through HTCondor's blahp; the cluster's shared
    # directory is its own staging site (plan with --staging-site slurm=slurm).
    slurm.add_pegasus_profile(style="glite", data_configuration="nonsharedfs", auxillary_local=True,
                              queue=cpu_queue)
    slurm.add_condor_profile(grid_resource="batch slurm")
    slurm.add_env(key="PEGASUS_HOME", value="/usr")
    slurm.add_tag_profiles("gpu", Namespace.PEGASUS, queue=gpu_queue)
    slurm.add_tag_profiles("gpu", Namespace.PEGASUS, key="glite.arguments", value="--gres=gpu:1")

    catalog = SiteCatalog()
    catalog.add_sites(local_site(run_dir), condorpool, slurm)
    return catalog


def _dump(data):
    # libyaml when present: the Pegasus API's pure-Python writer needs ~30 s for 20,000 galaxies.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def workflow_yaml(workflow):
    """``workflow.yml`` text of a ``Pegasus.api.Workflow``: what ``Workflow.write`` writes, faster and stable.

    Edges are inferred from the files as ``write`` does; each job's ``uses`` are sorted by
    LFN so that the same DAG always gives the same file.
    """
    workflow._infer_dependencies()
    data = {"x-pegasus": {"createdBy": os.environ.get("USER", "inclinet"),
                          "createdOn": time.strftime("%m-%d-%yT%H:%M:%SZ", time.gmtime()), "apiLang": "python"}}
    data.update(_api_dict(workflow))
    for job in data.get("jobs", []):
        job["uses"] = sorted(job.get("uses", []), key=lambda use: (use["lfn"], use["type"]))
    return _dump(data)


def _load_yaml(path, what):
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found; give an existing file or leave the flag out for the default")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc}); fix the {what}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a {what} must be a YAML mapping with 'pegasus:' and its entries")
    return data


def _api_dict(obj):
    import json

    from Pegasus.api.writable import _CustomEncoder

    return json.loads(json.dumps(obj, cls=_CustomEncoder))


def run_sites(run_dir, sites_file=None):
    """The site catalog of a run (a dict): the user's sites with ``local`` set to ``run_dir``."""
    if sites_file is None and not DEFAULT_SITES.is_file():
        data = _api_dict(default_site_catalog(run_dir))
    else:
        data = _load_yaml(sites_file or DEFAULT_SITES, "site catalog")
    sites = [s for s in data.get("sites", []) if s.get("name") != "local"]
    data["pegasus"] = str(data.get("pegasus", PEGASUS_VERSION))
    data["sites"] = [_api_dict(local_site(run_dir))] + sites
    return data


def execution_sites(sites):
    return [s["name"] for s in sites["sites"] if s.get("name") != "local"]


# -- replicas ---------------------------------------------------------------------------

def default_replica_catalog(data_path="/data/inclinet/galaxies", catalog="/data/inclinet/catalog.csv"):
    """The editable default: the catalog file and one regex entry for every raw image."""
    from Pegasus.api import ReplicaCatalog

    from workflow.dag import RAW_CATALOG, RAW_GALAXIES

    rc = ReplicaCatalog()
    rc.add_replica("local", RAW_CATALOG, f"file://{Path(catalog)}")
    rc.add_regex_replica("local", f"{RAW_GALAXIES}/(.+)", f"file://{Path(data_path)}/[1]")
    return rc


def _matches(entry, lfns):
    if entry.get("regex"):
        pattern = re.compile(entry["lfn"])
        return any(pattern.fullmatch(lfn) for lfn in lfns)
    return entry["lfn"] in lfns


def run_replicas(run_dir, jobs, config, replicas_file=None):
    """The replica catalog of a run (a dict).

    Entries from the user's file are kept unless they name a file the workflow itself
    writes (Pegasus would then prune the job as already done) or a raw input that the
    flags locate; flags win.
    """
    from workflow.dag import RAW_CATALOG, RAW_GALAXIES, raw_inputs

    if replicas_file is None and not DEFAULT_REPLICAS.is_file():
        user = {"replicas": []}
    else:
        user = _load_yaml(replicas_file or DEFAULT_REPLICAS, "replica catalog")
    produced = {lfn for job in jobs for lfn in job.outputs}
    generated = []
    if config.catalog:
        generated.append({"lfn": RAW_CATALOG, "pfns": [{"site": "local", "pfn": _file_url(config.catalog)}]})
    if config.data_path:
        generated.append({"lfn": f"{RAW_GALAXIES}/(.+)", "pfns": [{"site": "local",
                          "pfn": _file_url(config.data_path) + "/[1]"}], "regex": True})
    placeholders = Path(run_dir).resolve() / "pegasus" / "placeholders"
    for job in jobs:
        if job.checkpoint:
            generated.append({"lfn": job.checkpoint,
                              "pfns": [{"site": "local", "pfn": f"file://{placeholders / job.checkpoint}"}]})
    flagged = {e["lfn"] for e in generated}
    raws = set(raw_inputs(jobs)) if (config.catalog or config.data_path) else set()
    kept = []
    for entry in user.get("replicas", []) or []:
        if not isinstance(entry, dict) or "lfn" not in entry or not isinstance(entry.get("pfns"), list):
            raise InputError(f"{replicas_file or DEFAULT_REPLICAS}: every replica needs 'lfn' and a list 'pfns'")
        if _matches(entry, produced):
            continue
        if entry["lfn"] in flagged or (raws and _matches(entry, raws)):
            # The flags locate the raw inputs on the submit host; other sites' copies stay.
            entry = dict(entry, pfns=[p for p in entry["pfns"] if p.get("site") != "local"])
            if not entry["pfns"]:
                continue
        kept.append(entry)
    return {"pegasus": PEGASUS_VERSION, "replicas": kept + generated}


def _file_url(path):
    return f"file://{Path(path).resolve()}"


def write_placeholders(run_dir, jobs):
    """Empty checkpoint placeholders named in the run's replica catalog."""
    placeholders = Path(run_dir) / "pegasus" / "placeholders"
    for job in jobs:
        if job.checkpoint:
            path = placeholders / job.checkpoint
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


# -- transformations --------------------------------------------------------------------

def container_image_site(image):
    """``image_site`` for an image URL: where Pegasus fetches it from."""
    if image.startswith("docker://"):
        return "docker_hub"
    if image.startswith(("library://", "shub://")):
        return "singularity_hub" if image.startswith("shub://") else "library"
    return "local"


def transformation_catalog(sites, image=DEFAULT_IMAGE, *, stages=None):
    """One transformation per stage, run inside the inclinet Singularity container."""
    from Pegasus.api import Container, Transformation, TransformationCatalog

    from workflow.dag import STAGES

    container = Container(CONTAINER_NAME, Container.SINGULARITY, image, image_site=container_image_site(image))
    catalog = TransformationCatalog()
    catalog.add_containers(container)
    for stage in stages or STAGES:
        transformation = Transformation(f"inclinet-{stage}")
        for site in sites:
            transformation.add_sites(_transformation_site(site, stage, container))
        catalog.add_transformations(transformation)
    return catalog


def _transformation_site(site, stage, container):
    from Pegasus.api import TransformationSite

    return TransformationSite(site, f"{CONTAINER_BIN}/inclinet-{stage}", is_stageable=False, container=container)


# -- properties -------------------------------------------------------------------------

def properties(retries, run_dir="."):
    """``pegasus.properties`` of a run (catalog paths absolute: plan from any directory)."""
    from Pegasus.api import Properties

    run_dir = Path(run_dir).resolve()
    props = Properties()
    props["pegasus.catalog.site.file"] = str(run_dir / "sites.yml")
    props["pegasus.catalog.replica"] = "YAML"
    props["pegasus.catalog.replica.file"] = str(run_dir / "replicas.yml")
    props["pegasus.catalog.transformation.file"] = str(run_dir / "transformations.yml")
    props["pegasus.data.configuration"] = "nonsharedfs"
    props["pegasus.transfer.links"] = "true"
    props["pegasus.metrics.app"] = "inclinet"
    # Without it the planner writes RETRY 1; jobs also carry their own dagman.retry.
    props["dagman.retry"] = str(retries)
    return props


# -- everything -------------------------------------------------------------------------

RUN_CATALOG_FILES = ("workflow.yml", "sites.yml", "replicas.yml", "transformations.yml", "pegasus.properties")


def write_run_catalogs(run_dir, jobs, config, *, sites_file=None, replicas_file=None, image=DEFAULT_IMAGE):
    """Write the five Pegasus files of a run directory; return their paths."""
    from workflow.dag import to_pegasus

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sites = run_sites(run_dir, sites_file)
    atomic_write_text(run_dir / "sites.yml", _dump(sites))
    atomic_write_text(run_dir / "replicas.yml", _dump(run_replicas(run_dir, jobs, config, replicas_file)))
    write_placeholders(run_dir, jobs)
    tc = transformation_catalog(execution_sites(sites) or list(EXECUTION_SITES), image,
                                stages=sorted({job.stage for job in jobs}))
    atomic_write_text(run_dir / "transformations.yml", _dump(_api_dict(tc)))
    atomic_write_text(run_dir / "workflow.yml", workflow_yaml(to_pegasus(jobs, config)))
    with atomic_path(run_dir / "pegasus.properties") as tmp, open(tmp, "w", encoding="utf-8") as handle:
        properties(config.retries, run_dir).write(handle)
    return [run_dir / name for name in RUN_CATALOG_FILES]
