"""Pegasus catalogs of a run: sites, replicas, transformations and properties.

The repository's top-level ``sites.yml`` and ``replicas.yml`` are the catalogs a user edits
for their cluster and data. :func:`write_run_catalogs` reads them (or files given with
``--sites``/``--replicas``) and writes the complete catalogs of one run directory:

* ``sites.yml``: the user's sites, with the ``local`` site pointed at the run directory;
* ``replicas.yml``: the user's entries, plus the raw inputs given by flags (catalog file,
  one regex entry for all raw images, the files of the ``--predict-with`` bundle; for a
  survey over real data the image folder and one regex entry for the catalog slices the
  builder writes under ``RUN/inputs``; one regex entry for the search's ``--hpo-foreign``
  folder, ``hpo/foreign/...``), plus an
  empty placeholder per training checkpoint (with ``condorio`` Pegasus must find a
  checkpoint file before the first attempt);
* ``transformations.yml``: one transformation per stage, inside the inclinet container,
  on every execution site; the GPU stages carry each site's ``gpu`` tag profiles (queue,
  ``glite.arguments``), so that the run's ``sites.yml`` has no ``x-tags`` (Pegasus 5.1.2
  refuses them; 5.1.3 accepts them) and GPU jobs still reach the GPU queue on both;
* ``pegasus.properties``: catalog files, ``dagman.retry`` set explicitly, ``nonsharedfs``.

Why ``nonsharedfs``: with ``sharedfs`` Pegasus silently plans containerised jobs to run
bare on the node, so the container (and its TensorFlow) would be ignored.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import re
from pathlib import Path

import yaml

from inclinet import naming
from inclinet import stages as registry
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
#: Site-catalog key of Pegasus 5.1.3 tag profiles (refused by the 5.1.2 planner) and the tag
#: whose profiles the GPU stages get.
TAGS_KEY = "x-tags"
GPU_TAG = "gpu"


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


def default_site_catalog(
    run_dir="/tmp/inclinet-run", *, slurm_scratch="/scratch/inclinet", gpu_queue="gpu", cpu_queue="cpu"
):
    """The editable default: ``local``, an HTCondor pool and a SLURM cluster through HTCondor."""
    from Pegasus.api import (
        Directory,
        FileServer,
        Grid,
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
        Directory(Directory.SHARED_SCRATCH, slurm_scratch, shared_file_system=True).add_file_servers(
            FileServer(f"file://{slurm_scratch}", Operation.ALL)
        )
    )
    # Run from the cluster's login node through HTCondor's blahp; the cluster's shared
    # directory is its own staging site (plan with --staging-site slurm=slurm).
    slurm.add_pegasus_profile(style="glite", data_configuration="nonsharedfs", auxillary_local=True, queue=cpu_queue)
    slurm.add_condor_profile(grid_resource="batch slurm")
    slurm.add_env(key="PEGASUS_HOME", value="/usr")

    catalog = SiteCatalog()
    catalog.add_sites(local_site(run_dir), condorpool, slurm)
    data = _api_dict(catalog)
    # The 5.1.3 tag syntax, written by hand: pegasus-wms.api 5.1.2 has no add_tag_profiles.
    for site in data["sites"]:
        if site["name"] == "slurm":
            site[TAGS_KEY] = [
                {"name": GPU_TAG, "profiles": {"pegasus": {"queue": gpu_queue, "glite.arguments": "--gres=gpu:1"}}}
            ]
    return data


def _dump(data):
    # libyaml when present: the Pegasus API's pure-Python writer needs ~30 s for 20,000 galaxies.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def workflow_yaml(workflow):
    """``workflow.yml`` text of a ``Pegasus.api.Workflow``: what ``Workflow.write`` writes, faster and stable.

    ``Workflow.write`` infers the edges from the files (the workflow is built with
    ``infer_dependencies=True``); each job's ``uses`` (by LFN) and each job's children are
    sorted so that the same DAG always gives the same file.
    """
    # No user name or clock time: the same flags give the same bytes.
    data = {"x-pegasus": {"createdBy": "inclinet", "apiLang": "python"}}
    data.update(_api_dict(workflow))
    for job in data.get("jobs", []):
        job["uses"] = sorted(job.get("uses", []), key=lambda use: (use["lfn"], use["type"]))
    for dependency in data.get("jobDependencies", []):
        dependency["children"] = sorted(dependency["children"])
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
    """A Pegasus API catalog or workflow as a dict: what its public ``write`` serialises, as JSON.

    ``write`` also adds an ``x-pegasus`` header (user name, clock time), dropped here; a
    ``Workflow`` infers its edges from the files first.
    """
    buffer = io.StringIO()
    with _named_user():
        obj.write(buffer, "json")
    data = json.loads(buffer.getvalue())
    data.pop("x-pegasus", None)
    return data


@contextlib.contextmanager
def _named_user():
    """A user name for ``write`` to record where the user has none (a container run under a bare uid).

    ``write`` asks ``getpass.getuser``, which fails there; ``LOGNAME`` is set for the
    call only. The name never reaches the files (the header is dropped).
    """
    try:
        getpass.getuser()
    except (KeyError, OSError):
        pass
    else:
        yield
        return
    os.environ["LOGNAME"] = "inclinet"
    try:
        yield
    finally:
        os.environ.pop("LOGNAME", None)


def _site_dict(site):
    """One ``Pegasus.api.Site`` as a dict (a ``Site`` is written as part of a ``SiteCatalog``)."""
    from Pegasus.api import SiteCatalog

    (data,) = _api_dict(SiteCatalog().add_sites(site))["sites"]
    return data


def user_sites(sites_file=None, run_dir="/tmp/inclinet-run"):
    """The user's site catalog as written (a dict), with its 5.1.3 ``x-tags`` if any."""
    if sites_file is None and not DEFAULT_SITES.is_file():
        return default_site_catalog(run_dir)
    return _load_yaml(sites_file or DEFAULT_SITES, "site catalog")


def gpu_profiles(sites):
    """``{site: profiles}`` of each site's ``gpu`` tag (``x-tags``), for the GPU transformations."""
    found = {}
    for site in sites.get("sites", []):
        for tag in site.get(TAGS_KEY) or []:
            if isinstance(tag, dict) and tag.get("name") == GPU_TAG and tag.get("profiles"):
                found[site["name"]] = tag["profiles"]
    return found


def run_sites(run_dir, sites_file=None):
    """The site catalog of a run (a dict): the user's sites with ``local`` set to ``run_dir``.

    Tag profiles (``x-tags``) are left out: Pegasus 5.1.2 refuses them; their ``gpu``
    profiles go to the GPU transformations instead (:func:`transformation_catalog`).
    """
    data = user_sites(sites_file, run_dir)
    sites = [{k: v for k, v in s.items() if k != TAGS_KEY} for s in data.get("sites", []) if s.get("name") != "local"]
    data["pegasus"] = str(data.get("pegasus", PEGASUS_VERSION))
    data["sites"] = [_site_dict(local_site(run_dir))] + sites
    return data


def execution_sites(sites):
    return [s["name"] for s in sites["sites"] if s.get("name") != "local"]


# -- replicas ---------------------------------------------------------------------------


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
    from workflow.dag import BUILD_INPUTS_DIR, RAW_CATALOG, RAW_GALAXIES, raw_inputs, survey_slices

    if replicas_file is None and not DEFAULT_REPLICAS.is_file():
        user = {"replicas": []}
    else:
        user = _load_yaml(replicas_file or DEFAULT_REPLICAS, "replica catalog")
    produced = {lfn for job in jobs for lfn in job.outputs}
    generated = []
    if config.catalog:
        generated.append({"lfn": RAW_CATALOG, "pfns": [{"site": "local", "pfn": _file_url(config.catalog)}]})
    if config.data_path:
        generated.append(
            {
                "lfn": f"{RAW_GALAXIES}/(.+)",
                "pfns": [{"site": "local", "pfn": _file_url(config.data_path) + "/[1]"}],
                "regex": True,
            }
        )
    if survey_slices(jobs):
        # The survey over real data: the image folder itself (what the local and SLURM
        # engines link for the measure jobs), and the catalog slices the builder wrote.
        generated.append({"lfn": RAW_GALAXIES, "pfns": [{"site": "local", "pfn": _file_url(config.data_path)}]})
        generated.append(
            {
                "lfn": naming.SURVEY_SLICE_PATTERN,
                "regex": True,
                "pfns": [
                    {
                        "site": "local",
                        "pfn": (
                            _file_url(Path(run_dir) / BUILD_INPUTS_DIR)
                            + "/"
                            + str(Path(naming.survey_slice(1, 1)).parent)
                            + "/[1]"
                        ),
                    }
                ],
            }
        )
    if getattr(config, "predict_with", None):
        # The survey workflow's bundle: every measure job reads it; on a nonsharedfs site
        # Pegasus stages each file once into the site's scratch and links it into the jobs.
        from workflow.dag import bundle_inputs

        for lfn, path in bundle_inputs(config).items():
            generated.append({"lfn": lfn, "pfns": [{"site": "local", "pfn": _file_url(path)}]})
    if getattr(config, "hpo_foreign", None):
        # The search's foreign set: its catalog and images, which Pegasus stages for every trial job.
        from workflow.dag import HPO_FOREIGN_DIR

        generated.append(
            {
                "lfn": f"{HPO_FOREIGN_DIR}/(.+)",
                "pfns": [{"site": "local", "pfn": _file_url(config.hpo_foreign) + "/[1]"}],
                "regex": True,
            }
        )
    placeholders = Path(run_dir).resolve() / "pegasus" / "placeholders"
    for job in jobs:
        if job.checkpoint:
            generated.append(
                {"lfn": job.checkpoint, "pfns": [{"site": "local", "pfn": f"file://{placeholders / job.checkpoint}"}]}
            )
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


def containers(sites, image=DEFAULT_IMAGE, mode="stage"):
    """``{site: Container}``: the image each execution site runs the stages in.

    ``stage``: one container fetched by Pegasus from where ``image`` lives (``image_site``):
    on a ``nonsharedfs`` site it is staged once into the site's staging directory and linked
    into every job; with ``condorio`` HTCondor sends it with every job. ``shared``: ``image``
    is a path every node of each site sees (CVMFS, a shared file system); one container per
    site with ``image_site`` that site and staging bypassed, so every job reads it in place.
    """
    from Pegasus.api import Container

    if mode == "stage":
        container = Container(CONTAINER_NAME, Container.SINGULARITY, image, image_site=container_image_site(image))
        return {site: container for site in sites}
    if not image.startswith("file:///"):
        raise InputError(
            f"invalid --container-image: {image}; must be file:///PATH with --container-mode shared "
            "(a path every node sees, e.g. on CVMFS)"
        )
    return {
        site: Container(f"{CONTAINER_NAME}-{site}", Container.SINGULARITY, image, image_site=site, bypass_staging=True)
        for site in sites
    }


def transformation_catalog(
    sites, image=DEFAULT_IMAGE, *, stages=None, gpu_site_profiles=None, mode="stage", submit_host_stages=()
):
    """One transformation per stage, run inside the inclinet Singularity container.

    ``gpu_site_profiles`` (``{site: {namespace: {key: value}}}``, see :func:`gpu_profiles`)
    are added to the GPU stages on their site: how a site's GPU queue is chosen.
    ``submit_host_stages`` also run on site ``local``, bare, with the submit host's
    installation (:func:`submit_host_executable`): the survey's ``pack`` jobs.
    """
    from Pegasus.api import Transformation, TransformationCatalog, TransformationSite

    from workflow.dag import STAGE_SLOTS, STAGES

    by_site = containers(sites, image, mode)
    catalog = TransformationCatalog()
    catalog.add_containers(*dict.fromkeys(by_site.values()))
    for stage in stages or STAGES:
        transformation = Transformation(registry.get(stage).executable)
        for site in sites:
            profiles = (gpu_site_profiles or {}).get(site) if STAGE_SLOTS[stage][1] else None
            transformation.add_sites(_transformation_site(site, stage, by_site[site], profiles))
        if stage in submit_host_stages:
            transformation.add_sites(
                TransformationSite("local", str(submit_host_executable(stage)), is_stageable=False)
            )
        catalog.add_transformations(transformation)
    return catalog


def submit_host_executable(stage):
    """The stage's executable on this (the submit) host: beside this Python, else the repository's ``bin/``."""
    import sys

    name = registry.get(stage).executable
    beside = Path(sys.executable).parent / name
    return beside if beside.is_file() else REPO_ROOT / "bin" / name


def _transformation_site(site, stage, container, profiles=None):
    from Pegasus.api import Namespace, TransformationSite

    entry = TransformationSite(
        site, f"{CONTAINER_BIN}/{registry.get(stage).executable}", is_stageable=False, container=container
    )
    for namespace, values in (profiles or {}).items():
        for key, value in values.items():
            entry.add_profiles(Namespace(namespace), key=key, value=str(value))
    return entry


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
    from workflow.dag import survey_slices, to_pegasus, write_survey_slices

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_survey_slices(run_dir, jobs, config)
    sites = run_sites(run_dir, sites_file)
    gpu = gpu_profiles(user_sites(sites_file, run_dir))
    atomic_write_text(run_dir / "sites.yml", _dump(sites))
    atomic_write_text(run_dir / "replicas.yml", _dump(run_replicas(run_dir, jobs, config, replicas_file)))
    write_placeholders(run_dir, jobs)
    tc = transformation_catalog(
        execution_sites(sites) or list(EXECUTION_SITES),
        image,
        stages=sorted({job.stage for job in jobs}),
        gpu_site_profiles=gpu,
        mode=config.container_mode,
        submit_host_stages=("measure",) if survey_slices(jobs) else (),
    )
    atomic_write_text(run_dir / "transformations.yml", _dump(_api_dict(tc)))
    atomic_write_text(run_dir / "workflow.yml", workflow_yaml(to_pegasus(jobs, config)))
    with atomic_path(run_dir / "pegasus.properties") as tmp, open(tmp, "w", encoding="utf-8") as handle:
        properties(config.retries, run_dir).write(handle)
    return [run_dir / name for name in RUN_CATALOG_FILES]
