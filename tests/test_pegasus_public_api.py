"""The Pegasus files come from the public Pegasus API only, and say exactly what they said before.

``workflow.catalogs`` serialises the API's objects through their public ``write`` (a
``Workflow`` infers its edges there); no module reaches into the API's private names.
The expected texts below were written by the earlier serialisation (the API's private JSON
encoder and dependency inference): any change of the output fails here.
"""

import ast
from pathlib import Path

import yaml

from workflow import catalogs, dag

REPO = Path(__file__).resolve().parents[1]

EXPECTED_WORKFLOW_YML = """\
x-pegasus:
  createdBy: inclinet
  apiLang: python
pegasus: 5.0.4
name: tiny
jobs:
- type: job
  name: inclinet-prep
  id: prep_1
  nodeLabel: prep
  arguments:
  - -i
  - raw/a.txt
  - -o
  - mid/b.npz
  - --size
  - 64
  uses:
  - lfn: mid/b.npz
    type: output
    stageOut: false
    registerReplica: false
  - lfn: raw/a.txt
    type: input
  profiles:
    pegasus:
      cores: 1
      memory: 500
      runtime: '60'
      label: prep_c0001
- type: job
  name: inclinet-train
  id: train_1
  nodeLabel: train
  arguments:
  - -i
  - mid/b.npz
  - -o
  - out/c.json
  uses:
  - lfn: ckpt/t.keras
    type: checkpoint
    stageOut: true
    registerReplica: false
  - lfn: mid/b.npz
    type: input
  - lfn: out/c.json
    type: output
    stageOut: true
    registerReplica: true
  profiles:
    dagman:
      RETRY: '3'
    pegasus:
      cores: 2
      gpus: 1
      checkpoint.time: 30
      maxwalltime: 60
- type: job
  name: inclinet-evaluate
  id: evaluate
  nodeLabel: evaluate
  arguments:
  - out/c.json
  - mid/b.npz
  uses:
  - lfn: mid/b.npz
    type: input
  - lfn: out/c.json
    type: input
jobDependencies:
- id: prep_1
  children:
  - evaluate
  - train_1
- id: train_1
  children:
  - evaluate
"""


def tiny_workflow():
    """Three jobs with every kind of use the DAG declares: input, output (kept or not), checkpoint."""
    from Pegasus.api import File, Job, Namespace, Workflow

    workflow = Workflow("tiny", infer_dependencies=True)
    raw, mid, out, checkpoint = File("raw/a.txt"), File("mid/b.npz"), File("out/c.json"), File("ckpt/t.keras")
    prep = Job("inclinet-prep", _id="prep_1", node_label="prep").add_args("-i", raw, "-o", mid, "--size", 64)
    prep.add_inputs(raw).add_outputs(mid, stage_out=False, register_replica=False)
    prep.add_pegasus_profile(cores=1, memory="500 MB", runtime="60")
    prep.add_profiles(Namespace.PEGASUS, key="label", value="prep_c0001")
    train = Job("inclinet-train", _id="train_1", node_label="train").add_args("-i", mid, "-o", out)
    train.add_inputs(mid).add_outputs(out, stage_out=True, register_replica=True)
    train.add_checkpoint(checkpoint, stage_out=True, register_replica=False)
    train.add_pegasus_profile(cores=2, gpus=1, checkpoint_time=30, max_walltime=60)
    train.add_dagman_profile(retry="3")
    evaluate = Job("inclinet-evaluate", _id="evaluate", node_label="evaluate").add_args(out, mid)
    evaluate.add_inputs(out, mid)
    workflow.add_jobs(prep, train, evaluate)
    return workflow


def test_workflow_yml_text_is_unchanged():
    assert catalogs.workflow_yaml(tiny_workflow()) == EXPECTED_WORKFLOW_YML


def test_a_user_without_a_name_still_gets_the_same_files(monkeypatch):
    """``write`` records the user name; under a bare uid (a container) there is none."""
    import getpass
    import os
    import pwd

    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    try:
        getpass.getuser()
    except (KeyError, OSError):
        pass
    else:
        raise AssertionError("getpass.getuser found a name")
    assert catalogs.workflow_yaml(tiny_workflow()) == EXPECTED_WORKFLOW_YML
    assert "LOGNAME" not in os.environ


def test_edges_are_those_the_dag_infers_from_its_files():
    config = dag.WorkflowConfig(synthetic=30, galaxies_per_job=10, size=96, cluster_size=3)
    jobs = dag.build_jobs(config)
    workflow = yaml.safe_load(catalogs.workflow_yaml(dag.to_pegasus(jobs, config)))
    edges = {(d["id"], child) for d in workflow["jobDependencies"] for child in d["children"]}
    expected = {(parent, spec.id) for spec in dag.pegasus_survey_jobs(jobs, config) for parent in spec.parents}
    assert edges == expected and len(edges) > len(jobs)
    for dependency in workflow["jobDependencies"]:
        assert dependency["children"] == sorted(dependency["children"])
    # Writing twice gives the same text (inference adds no edge twice).
    built = dag.to_pegasus(jobs, config)
    assert catalogs.workflow_yaml(built) == catalogs.workflow_yaml(built)


def test_local_site_and_catalogs_are_unchanged():
    assert catalogs._site_dict(catalogs.local_site("/run/x")) == {
        "name": "local",
        "directories": [
            {
                "type": "sharedScratch",
                "path": "/run/x/pegasus/scratch",
                "sharedFileSystem": False,
                "fileServers": [{"url": "file:///run/x/pegasus/scratch", "operation": "all"}],
            },
            {
                "type": "localStorage",
                "path": "/run/x/pegasus/outputs",
                "sharedFileSystem": False,
                "fileServers": [{"url": "file:///run/x/pegasus/outputs", "operation": "all"}],
            },
        ],
    }
    tc = catalogs._api_dict(
        catalogs.transformation_catalog(
            ["slurm"],
            "docker://me/inclinet:1",
            stages=["train"],
            gpu_site_profiles={"slurm": {"pegasus": {"queue": "gpu"}}},
        )
    )
    assert tc == {
        "pegasus": "5.0.4",
        "transformations": [
            {
                "name": "inclinet-train",
                "sites": [
                    {
                        "name": "slurm",
                        "pfn": "/usr/local/bin/inclinet-train",
                        "type": "installed",
                        "profiles": {"pegasus": {"queue": "gpu"}},
                        "container": "inclinet",
                    }
                ],
            }
        ],
        "containers": [
            {"name": "inclinet", "type": "singularity", "image": "docker://me/inclinet:1", "image.site": "docker_hub"}
        ],
    }
    sites = catalogs.default_site_catalog("/run/x")
    assert sites["sites"][0] == catalogs._site_dict(catalogs.local_site("/run/x"))
    assert "x-pegasus" not in sites and sites["sites"][2]["x-tags"][0]["name"] == "gpu"


def pegasus_modules():
    for path in sorted([*REPO.glob("workflow/**/*.py"), *REPO.glob("inclinet/**/*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imports = [
            node
            for node in ast.walk(tree)
            if (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("Pegasus"))
            or (isinstance(node, ast.Import) and any(a.name.startswith("Pegasus") for a in node.names))
        ]
        if imports:
            yield path, tree, imports


def test_no_module_uses_private_names_of_the_pegasus_api():
    """No private Pegasus module or name is imported; no module that uses Pegasus reads a ``_name`` attribute."""
    found = list(pegasus_modules())
    assert {path.name for path, _, _ in found} >= {"catalogs.py", "dag.py"}

    def private(name):
        return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))

    for path, tree, imports in found:
        for node in imports:
            names = [node.module, *(a.name for a in node.names)] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not [n for n in names if private(n)], f"{path}:{node.lineno}: {ast.unparse(node)}"
            if isinstance(node, ast.ImportFrom):
                assert node.module == "Pegasus.api", f"{path}:{node.lineno}: import from the public Pegasus.api"
        reads = [
            f"{path}:{node.lineno}: {ast.unparse(node)}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and private(node.attr)
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ]
        assert reads == []
