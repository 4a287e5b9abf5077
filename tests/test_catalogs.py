"""The Pegasus files of a run: schema validation, user catalogs merged with flags, raw-input links."""

import os
from pathlib import Path

import pytest
import yaml

from inclinet import naming
from inclinet.errors import InputError
from workflow import catalogs, dag
from workflow.cli import main
from workflow.engines.common import prepare_data_dir

REPO = Path(__file__).resolve().parents[1]
SCHEMA_DIR = REPO.parent / "shared" / "pegasus-schema"
SCHEMAS = {
    "workflow.yml": "wf-5.0.yml",
    "sites.yml": "sc-5.0.yml",
    "replicas.yml": "rc-5.0.yml",
    "transformations.yml": "tc-5.0.yml",
}


@pytest.fixture(scope="module")
def validators():
    if not SCHEMA_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SCHEMA_DIR} is missing; CI must provide the Pegasus schemas")
        pytest.skip(f"{SCHEMA_DIR} not present")
    import jsonschema
    import referencing
    from referencing.jsonschema import DRAFT7

    resources = {
        path.name: referencing.Resource.from_contents(yaml.safe_load(path.read_text()), default_specification=DRAFT7)
        for path in SCHEMA_DIR.glob("*.yml")
    }
    registry = referencing.Registry().with_resources(resources.items())
    return {
        name: jsonschema.Draft7Validator(resources[schema].contents, registry=registry)
        for name, schema in SCHEMAS.items()
    }


def errors(validator, document):
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def build(tmp_path, *flags):
    run_dir = tmp_path / "run"
    assert main([*flags, "--output-dir", str(run_dir), "--dry-run", "-q"]) == 0
    return run_dir


def real_data(tmp_path, n=6):
    images = tmp_path / "images"
    images.mkdir()
    rows = [{"pgc": 500 + i, "inc": 50 + 5 * i} for i in range(n)]
    (tmp_path / "catalog.csv").write_text("pgc,inc\n" + "".join(f"{r['pgc']},{r['inc']}\n" for r in rows))
    for row in rows:
        for band in naming.BANDS:
            (images / naming.raw_image_names(row["pgc"], band)[0]).write_bytes(b"raw")
    return images, tmp_path / "catalog.csv"


@pytest.mark.parametrize("kind", ["synthetic", "real"])
def test_all_five_files_validate(tmp_path, validators, kind):
    if kind == "synthetic":
        run_dir = build(
            tmp_path,
            "--synthetic",
            "30",
            "--galaxies-per-job",
            "10",
            "--size",
            "64",
            "--models",
            "model4,model6",
            "--subsamples",
            "2",
        )
    else:
        images, catalog = real_data(tmp_path)
        run_dir = build(tmp_path, "--data-path", str(images), "--catalog", str(catalog), "--size", "96")
    for name, validator in validators.items():
        document = yaml.safe_load((run_dir / name).read_text())
        assert errors(validator, document) == [], name
    props = (run_dir / "pegasus.properties").read_text()
    assert "dagman.retry = 2" in props
    assert f"pegasus.catalog.replica.file = {(run_dir / 'replicas.yml').resolve()}" in props
    assert "pegasus.data.configuration = nonsharedfs" in props


def test_validation_catches_a_broken_file(tmp_path, validators):
    run_dir = build(tmp_path, "--synthetic", "10", "--size", "96")
    sites = yaml.safe_load((run_dir / "sites.yml").read_text())
    del sites["pegasus"]
    assert errors(validators["sites.yml"], sites)
    workflow = yaml.safe_load((run_dir / "workflow.yml").read_text())
    workflow["jobs"][0]["uses"][0]["type"] = "sideways"
    assert errors(validators["workflow.yml"], workflow)


def test_default_catalogs_in_the_repository_validate(validators):
    for name in ("sites.yml", "replicas.yml"):
        assert errors(validators[name], yaml.safe_load((REPO / name).read_text())) == [], name


def test_sites_local_points_into_the_run_and_keeps_user_sites(tmp_path):
    user = catalogs.default_site_catalog("/elsewhere")
    user["sites"].append({"name": "mycluster", "directories": [], "profiles": {"pegasus": {"style": "condor"}}})
    user_file = tmp_path / "my-sites.yml"
    user_file.write_text(yaml.safe_dump(user))
    run_dir = build(tmp_path, "--synthetic", "10", "--size", "96", "--sites", str(user_file))
    sites = {s["name"]: s for s in yaml.safe_load((run_dir / "sites.yml").read_text())["sites"]}
    assert set(sites) == {"local", "condorpool", "slurm", "mycluster"}
    assert all(d["path"].startswith(str(run_dir.resolve())) for d in sites["local"]["directories"])
    assert sites["condorpool"]["profiles"]["pegasus"]["data.configuration"] == "condorio"
    slurm = sites["slurm"]
    assert slurm["grids"][0]["scheduler"] == "slurm" and slurm["grids"][0]["type"] == "batch"
    assert slurm["profiles"]["pegasus"]["data.configuration"] == "nonsharedfs"
    assert slurm["profiles"]["pegasus"]["style"] == "glite"
    assert "x-tags" not in slurm  # refused by Pegasus 5.1.2; the GPU queue is in transformations.yml
    transformations = yaml.safe_load((run_dir / "transformations.yml").read_text())
    sites_of = {t["name"]: {s["name"] for s in t["sites"]} for t in transformations["transformations"]}
    assert sites_of["inclinet-train"] == {"condorpool", "slurm", "mycluster"}


def test_transformations_run_every_stage_in_the_container(tmp_path):
    run_dir = build(tmp_path, "--synthetic", "10", "--size", "96", "--container-image", "docker://me/inclinet:1")
    tc = yaml.safe_load((run_dir / "transformations.yml").read_text())
    assert {t["name"] for t in tc["transformations"]} == {f"inclinet-{s}" for s in dag.TRAINING_STAGES}
    (container,) = tc["containers"]
    assert container["image"] == "docker://me/inclinet:1" and container["image.site"] == "docker_hub"
    assert container["type"] == "singularity"
    for transformation in tc["transformations"]:
        for site in transformation["sites"]:
            assert site["container"] == container["name"] and site["type"] == "installed"
            assert site["pfn"] == f"/usr/local/bin/{transformation['name']}"
    assert catalogs.container_image_site("file:///x/inclinet.sif") == "local"


def test_replicas_merge_user_entries_with_flags(tmp_path):
    images, catalog = real_data(tmp_path)
    user_file = tmp_path / "my-replicas.yml"
    user_file.write_text(
        yaml.safe_dump(
            {
                "pegasus": "5.0",
                "replicas": [
                    {"lfn": "raw/galaxies/(.+)", "pfns": [{"site": "local", "pfn": "file:///old/[1]"}], "regex": True},
                    {
                        "lfn": "raw/galaxies/(.+)",
                        "pfns": [{"site": "slurm", "pfn": "file:///cluster/[1]"}],
                        "regex": True,
                    },
                    {"lfn": "models/(.+)", "pfns": [{"site": "local", "pfn": "file:///old/models/[1]"}], "regex": True},
                    {"lfn": "notes.txt", "pfns": [{"site": "local", "pfn": "file:///notes.txt"}]},
                ],
            }
        )
    )
    run_dir = build(
        tmp_path, "--data-path", str(images), "--catalog", str(catalog), "--size", "96", "--replicas", str(user_file)
    )
    replicas = yaml.safe_load((run_dir / "replicas.yml").read_text())["replicas"]
    pfns = {(r["lfn"], p["site"]): p["pfn"] for r in replicas for p in r["pfns"]}
    assert pfns[("raw/galaxies/(.+)", "local")] == f"file://{images.resolve()}/[1]"  # the flag wins
    assert pfns[("raw/galaxies/(.+)", "slurm")] == "file:///cluster/[1]"  # other sites' copies stay
    assert ("notes.txt", "local") in pfns
    assert ("models/(.+)", "local") not in pfns  # would make Pegasus skip the training jobs
    assert pfns[(dag.RAW_CATALOG, "local")] == f"file://{catalog.resolve()}"
    checkpoints = [r for r in replicas if r["lfn"].endswith(".ckpt.zip")]
    assert len(checkpoints) == 3 * (3 + 1 + 1)  # 3 models x (Uset_000..Uset_003 + Binary)
    placeholder = Path(checkpoints[0]["pfns"][0]["pfn"][len("file://") :])
    assert placeholder.is_file() and placeholder.stat().st_size == 0


def test_prepare_data_dir_links_raw_inputs_and_names_missing_ones(tmp_path):
    images, catalog = real_data(tmp_path)
    run_dir = build(tmp_path, "--data-path", str(images), "--catalog", str(catalog), "--size", "96")
    jobs = dag.load_jobs(run_dir)
    data = prepare_data_dir(run_dir, jobs)
    linked = data / "raw" / "galaxies" / naming.raw_image_names(500, "gri")[0]
    assert linked.is_symlink() and linked.read_bytes() == b"raw"
    assert (data / dag.RAW_CATALOG).read_text().startswith("pgc,inc")
    prepare_data_dir(run_dir, jobs)  # idempotent
    (images / naming.raw_image_names(501, "g")[0]).unlink()
    with pytest.raises(InputError, match="pgc501_d25x2_rot_g.png"):
        prepare_data_dir(run_dir, jobs)
