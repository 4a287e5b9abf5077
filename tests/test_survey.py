"""The survey workflow: inclinet-measure / merge / summarize, the DAG of --predict-with, its Pegasus files,
and a local run killed and resumed."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import untrained_bundle

from inclinet import bundle as model_bundle
from inclinet import naming, survey
from inclinet import stages as registry
from inclinet.stages import measure, merge, predict, summarize, synth
from workflow import dag
from workflow.cli import main

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


def make_bundle(root, seed):
    """Untrained members at 32 px (two regression, one binary): fast, and enough to test the plumbing."""
    members = (("model4", 0, "regression"), ("model4", 1, "regression"), ("model4", "binary", "binary"))
    return untrained_bundle(root, members, size=SIZE, seed=seed, views=1, seed_offset=seed * 10)


@pytest.fixture(scope="module")
def survey_data(tmp_path_factory):
    """24 synthetic galaxies at 48 px in all bands, and two bundles."""
    root = tmp_path_factory.mktemp("survey")
    assert synth.main(["-n", "24", "--size", "48", "--output", str(root / "data"), "-q"]) == 0
    return {
        "galaxies": root / "data" / "galaxies",
        "catalog": root / "data" / "catalog.csv",
        "bundle": make_bundle(root / "b1", 1),
        "other_bundle": make_bundle(root / "b2", 2),
    }


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def damaged_copy(survey_data, tmp_path):
    """The images with g missing for the 2nd galaxy, r unreadable for the 3rd, nothing for the 4th."""
    folder = tmp_path / "galaxies"
    shutil.copytree(survey_data["galaxies"], folder)
    pgcs = [row["pgc"] for row in read_rows_catalog(survey_data["catalog"])]
    (folder / naming.raw_image_names(pgcs[1], "g")[0]).unlink()
    (folder / naming.raw_image_names(pgcs[2], "r")[0]).write_bytes(b"not an image")
    for band in naming.BANDS:
        for name in naming.raw_image_names(pgcs[3], band):
            if (folder / name).exists():
                (folder / name).unlink()
    return folder, pgcs


def read_rows_catalog(path):
    from inclinet.catalog import read_catalog

    return [{"pgc": int(galaxy.pgc)} for galaxy in read_catalog(path)]


def test_measure_rows_statuses_and_the_predict_answers(survey_data, tmp_path):
    folder, pgcs = damaged_copy(survey_data, tmp_path)
    out, gallery = tmp_path / "chunk.csv", tmp_path / "gallery.npz"
    args = [
        "--bundle",
        str(survey_data["bundle"]),
        "-c",
        str(survey_data["catalog"]),
        "-p",
        str(folder),
        "--shard",
        "1/3",
        "-o",
        str(out),
        "--gallery",
        str(gallery),
        "-q",
    ]
    assert measure.main(args) == 0
    rows = read_rows(out)
    assert [int(r["pgc"]) for r in rows] == pgcs[:8]
    assert list(rows[0]) == survey.columns(naming.BANDS, ["model4", "model41"], ["model4-binary"])
    assert [r["status"] for r in rows[:5]] == ["ok", "partial", "partial", "failed", "ok"]
    assert rows[1]["bands"] == "r,i,gri" and rows[1]["reason"].startswith("g: missing (")
    assert rows[2]["reason"].startswith("r: unreadable (") and "not a readable image" in rows[2]["reason"]
    assert rows[3]["inc_median"] == "" and rows[3]["reason"].count("missing") == 4
    assert rows[1]["g_model4"] == "" and rows[1]["r_model4"] != ""
    assert {r["bundle"] for r in rows} == {model_bundle.identity(survey_data["bundle"])}
    # The numbers are inclinet-predict's for the same file.
    image = folder / naming.raw_image_names(pgcs[0], "gri")[0]
    answer = predict.run(bundle=survey_data["bundle"], inputs=[image], stream=open(os.devnull, "w"))[0]
    assert float(rows[0]["gri_model4"]) == answer["inclinations"]["Group_0"]["model4"]
    assert float(rows[0]["gri_model4-binary"]) == pytest.approx(answer["rejection_likelihood"]["model4-binary"])
    assert float(rows[0]["gri_median"]) == answer["inclinations"]["summary"]["median"]
    # Batches change nothing: one galaxy at a time gives the same bytes.
    again = tmp_path / "again.csv"
    assert measure.main([*args[:-5], "-o", str(again), "--galaxies-per-batch", "1", "-q"]) == 0
    assert again.read_bytes() == out.read_bytes()
    arrays = dict(__import__("numpy").load(gallery))
    assert arrays["images"].shape[1:] == (SIZE, SIZE, 3) and len(arrays["pgcIDs"]) == 7
    assert list(arrays["inc_std"]) == sorted(arrays["inc_std"], reverse=True)


def test_pack_then_measure_from_the_archive_gives_the_same_rows(survey_data, tmp_path, capsys):
    folder, pgcs = damaged_copy(survey_data, tmp_path)
    (folder / "unrelated.png").write_bytes(b"x")
    # An empty sky in g for the 5th galaxy: out of distribution ("detected"), measured all the same.
    from PIL import Image

    Image.new("RGB", (48, 48), (20, 20, 20)).save(folder / naming.raw_image_names(pgcs[4], "g")[0])
    archive = tmp_path / "images.tar"
    rows_flags = ["-c", str(survey_data["catalog"]), "--shard", "1/3"]
    assert measure.main(["--pack", str(archive), *rows_flags, "-p", str(folder), "-q"]) == 0
    import tarfile

    with tarfile.open(archive) as tar:
        names = tar.getnames()
    # The 8 rows' images that are there (4 bands each; 1 missing, 4 of the 4th galaxy): nothing else.
    assert len(names) == 8 * 4 - 5 and "unrelated.png" not in names
    assert naming.raw_image_names(pgcs[2], "r")[0] in names  # unreadable, still packed: measure says why
    again = tmp_path / "again.tar"
    assert measure.main(["--pack", str(again), *rows_flags, "-p", str(folder), "-q"]) == 0
    assert again.read_bytes() == archive.read_bytes()

    direct, packed = tmp_path / "direct.csv", tmp_path / "packed.csv"
    base = ["--bundle", str(survey_data["bundle"]), *rows_flags]
    assert measure.main([*base, "-p", str(folder), "-o", str(direct), "-q"]) == 0
    capsys.readouterr()
    assert measure.main([*base, "--archive", str(archive), "-o", str(packed)]) == 0
    err = capsys.readouterr().err
    first, second = read_rows(direct), read_rows(packed)
    assert [{k: v for k, v in r.items() if k != "reason"} for r in first] == [
        {k: v for k, v in r.items() if k != "reason"} for r in second
    ]
    assert second[1]["reason"] == f"g: missing ({naming.raw_image_names(pgcs[1], 'g')[0]} not in {archive})"
    assert second[2]["reason"].startswith(f"r: unreadable ({archive}: ")
    # Out-of-distribution warnings: one summary line, none per image; the rows keep the detail.
    assert "out of the training distribution:" not in err
    summary = [line for line in err.splitlines() if "out-of-distribution warnings" in line]
    ood = [r for r in second if r["ood"] == "true"]
    assert len(summary) == 1 and pgcs[4] in [int(r["pgc"]) for r in ood]
    assert f"of {len(ood)} of 8 galaxies" in summary[0] and "detected " in summary[0]
    assert "g: no galaxy stands out from the sky" in second[4]["warnings"]

    assert measure.main([*base, "-o", str(tmp_path / "x.csv"), "-q"]) == 2
    assert "--data-path" in capsys.readouterr().err
    assert measure.main(["--pack", str(tmp_path / "y.tar"), *rows_flags, "--archive", str(archive), "-q"]) == 2
    assert measure.main([*rows_flags, "-p", str(folder), "-o", str(tmp_path / "z.csv"), "-q"]) == 2
    assert "invalid --bundle: missing" in capsys.readouterr().err
    (tmp_path / "bad.tar").write_bytes(b"not a tar file")
    assert measure.main([*base, "--archive", str(tmp_path / "bad.tar"), "-o", str(tmp_path / "w.csv"), "-q"]) == 2
    assert "not a readable image archive" in capsys.readouterr().err


def test_warning_kinds():
    from inclinet import reliability

    assert [survey.warning_kind(text) for _, _, text in reliability.RAW_RULES] == [
        name for name, _, _ in reliability.RAW_RULES
    ]
    assert survey.warning_kind("sky noise 0.9 is outside the training range 0.1..0.5") == "range:sky_noise"
    assert survey.warning_kind("edge flux 2 is outside the training range 0..1") == "range:edge_flux"
    assert survey.warning_kind("the models disagree: spread 9.0 deg > 4.0 deg") == "spread"
    line = survey.warning_summary(
        {"images": 3, "galaxies": 2, "kinds": {"zoom": 2, "spread": 1}, "bands": {"g": 1, "gri": 2}}, 10
    )
    assert "3 images of 2 of 10 galaxies" in line and "zoom 2, spread 1" in line and "g 1, gri 2" in line


def test_measure_refuses_a_bundle_that_changed_since_the_build(survey_data, tmp_path, capsys):
    code = measure.main(
        [
            "--bundle",
            str(survey_data["bundle"]),
            "--bundle-id",
            "000000000000",
            "-c",
            str(survey_data["catalog"]),
            "-p",
            str(survey_data["galaxies"]),
            "--shard",
            "1/24",
            "-o",
            str(tmp_path / "c.csv"),
            "-q",
        ]
    )
    assert code == 2
    assert "bundle changed: build the survey workflow again" in capsys.readouterr().err
    assert not (tmp_path / "c.csv").exists()


def test_merge_joins_chunks_and_refuses_two_bundles(survey_data, tmp_path, capsys):
    parts = []
    for index, key in ((1, "bundle"), (2, "bundle"), (3, "other_bundle")):
        out = tmp_path / f"part{index}.csv"
        assert (
            measure.main(
                [
                    "--bundle",
                    str(survey_data[key]),
                    "-c",
                    str(survey_data["catalog"]),
                    "-p",
                    str(survey_data["galaxies"]),
                    "--bands",
                    "gri",
                    "--shard",
                    f"{index}/12",
                    "-o",
                    str(out),
                    "-q",
                ]
            )
            == 0
        )
        parts.append(out)
    catalog, parquet = tmp_path / "catalog.csv", tmp_path / "catalog.parquet"
    assert merge.main(["-i", *map(str, parts[:2]), "-o", str(catalog), "--parquet", str(parquet), "-q"]) == 0
    rows = read_rows(catalog)
    assert len(rows) == 4 and rows[0]["status"] == "ok"
    import pandas as pd
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    assert table.schema.metadata[b"inclinet.bundle"].decode() == rows[0]["bundle"]
    frame = pd.read_parquet(parquet)
    assert list(frame["pgc"]) == [int(r["pgc"]) for r in rows]
    assert frame["gri_model4"].tolist() == [float(r["gri_model4"]) for r in rows]
    assert str(frame["ood"].dtype) == "boolean" and frame["reason"].isna().all()

    mixed = tmp_path / "mixed.csv"
    assert merge.main(["-i", *map(str, parts), "-o", str(mixed), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"{parts[2]}, line 2: measured with bundle" in err and "never merge two bundles" in err
    assert not mixed.exists()

    report, numbers = tmp_path / "report.html", tmp_path / "report.json"
    gallery = tmp_path / "gallery.npz"
    assert (
        measure.main(
            [
                "--bundle",
                str(survey_data["bundle"]),
                "-c",
                str(survey_data["catalog"]),
                "-p",
                str(survey_data["galaxies"]),
                "--shard",
                "1/6",
                "-o",
                str(tmp_path / "g.csv"),
                "--gallery",
                str(gallery),
                "-q",
            ]
        )
        == 0
    )
    assert (
        summarize.main(
            ["-c", str(catalog), "--galleries", str(gallery), "-o", str(report), "--numbers", str(numbers), "-q"]
        )
        == 0
    )
    result = json.loads(numbers.read_text())
    assert result["galaxies"] == 4 and result["statuses"]["ok"] == 4
    assert len(result["most_uncertain"]) == 4
    assert "Most uncertain galaxies" in report.read_text()


SURVEY_FLAGS = ["--galaxies-per-job", "6", "--bands", "g,gri"]


def survey_flags(survey_data, key="bundle"):
    return [
        "--predict-with",
        str(survey_data[key]),
        "--data-path",
        str(survey_data["galaxies"]),
        "--catalog",
        str(survey_data["catalog"]),
        *SURVEY_FLAGS,
    ]


def test_survey_dag_jobs_files_and_command_lines(survey_data, tmp_path):
    run_dir = tmp_path / "run"
    assert main([*survey_flags(survey_data), "--output-dir", str(run_dir), "--dry-run", "-q"]) == 0
    jobs = dag.load_jobs(run_dir)
    identity = model_bundle.identity(survey_data["bundle"])
    assert [job.stage for job in jobs] == ["measure"] * 4 + ["merge", "summarize"]
    bundle_files = [f"bundle/{name}" for name in model_bundle.files(survey_data["bundle"])]
    catalog_lines = survey_data["catalog"].read_text().splitlines(keepends=True)
    for index, job in enumerate(jobs[:4], start=1):
        # Per chunk: the bundle, the chunk's catalog slice and the image folder; no image one by one.
        piece = naming.survey_slice(index, 4)
        assert job.inputs == [*bundle_files, piece, "raw/galaxies"]
        assert "--shard" not in job.args and job.args[job.args.index("-c") + 1] == piece
        written = (run_dir / dag.BUILD_INPUTS_DIR / piece).read_text().splitlines(keepends=True)
        assert written == [catalog_lines[0], *catalog_lines[1 + 6 * (index - 1) : 1 + 6 * index]]
    replicas = yaml.safe_load((run_dir / "replicas.yml").read_text())["replicas"]
    folder = next(r for r in replicas if r["lfn"] == "raw/galaxies")
    assert folder["pfns"] == [{"site": "local", "pfn": f"file://{survey_data['galaxies'].resolve()}"}]
    assert not (run_dir / naming.MISSING_INPUTS).exists()
    assert jobs[4].parents == [job.id for job in jobs[:4]]
    assert jobs[4].outputs == [naming.survey_catalog(identity), naming.survey_catalog(identity, ".parquet")]
    assert jobs[5].parents == ["merge", *[job.id for job in jobs[:4]]]
    for job in jobs:
        registry.get(job.stage).build_parser().parse_args(job.args)
    # Another bundle: other file names, so the two catalogs never mix.
    other = tmp_path / "other"
    assert main([*survey_flags(survey_data, "other_bundle"), "--output-dir", str(other), "--dry-run", "-q"]) == 0
    outputs = {lfn for job in dag.load_jobs(other) for lfn in job.outputs}
    assert not outputs & {lfn for job in jobs for lfn in job.outputs}


def test_survey_pegasus_files_validate_and_stage_the_bundle_once(survey_data, tmp_path):
    from test_catalogs import SCHEMA_DIR, SCHEMAS, errors

    if not SCHEMA_DIR.is_dir():
        pytest.skip(f"{SCHEMA_DIR} not present")
    import jsonschema
    import referencing
    from referencing.jsonschema import DRAFT7

    resources = {
        path.name: referencing.Resource.from_contents(yaml.safe_load(path.read_text()), default_specification=DRAFT7)
        for path in SCHEMA_DIR.glob("*.yml")
    }
    schema_registry = referencing.Registry().with_resources(resources.items())
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                *survey_flags(survey_data),
                "--engine",
                "pegasus",
                "--cluster-size",
                "2",
                "--output-dir",
                str(run_dir),
                "--dry-run",
                "-q",
            ]
        )
        == 0
    )
    for name, schema in SCHEMAS.items():
        validator = jsonschema.Draft7Validator(resources[schema].contents, registry=schema_registry)
        assert errors(validator, yaml.safe_load((run_dir / name).read_text())) == [], name
    workflow = yaml.safe_load((run_dir / "workflow.yml").read_text())
    measures = [job for job in workflow["jobs"] if job["id"].startswith("measure_")]
    packs = [job for job in workflow["jobs"] if job["id"].startswith("pack_")]
    assert len(measures) == 4 and len(packs) == 4
    for index, (job, pack) in enumerate(zip(measures, packs), start=1):
        uses = {use["lfn"]: use for use in job["uses"]}
        assert uses["bundle/manifest.json"]["type"] == "input"
        assert job["profiles"]["pegasus"]["label"].startswith("measure_c")
        # A compute node gets its chunk's images as one archive, packed on the submit host.
        archive = naming.survey_archive(index, 4)
        assert {lfn for lfn, use in uses.items() if use["type"] == "input"} == {
            *(f"bundle/{n}" for n in model_bundle.files(survey_data["bundle"])),
            naming.survey_slice(index, 4),
            archive,
        }
        assert "--archive" in job["arguments"] and "raw/galaxies" not in job["arguments"]
        registry.get("measure").build_parser().parse_args([str(a) for a in job["arguments"]])
        assert pack["name"] == "inclinet-measure" and pack["nodeLabel"] == "pack"
        assert pack["profiles"]["selector"] == {"execution.site": "local"}
        assert {u["lfn"]: u["type"] for u in pack["uses"]} == {
            naming.survey_slice(index, 4): "input",
            archive: "output",
        }
        assert str(survey_data["galaxies"].resolve()) in pack["arguments"]
        registry.get("measure").build_parser().parse_args(pack["arguments"])
    assert not any("raw/galaxies" in use["lfn"] for job in workflow["jobs"] for use in job["uses"])
    merged = next(job for job in workflow["jobs"] if job["name"] == "inclinet-merge")
    assert all(use["stageOut"] for use in merged["uses"] if use["type"] == "output")
    replicas = yaml.safe_load((run_dir / "replicas.yml").read_text())["replicas"]
    manifest = [r for r in replicas if r["lfn"] == "bundle/manifest.json"]
    assert manifest == [
        {
            "lfn": "bundle/manifest.json",
            "pfns": [{"site": "local", "pfn": f"file://{(survey_data['bundle'] / 'manifest.json').resolve()}"}],
        }
    ]
    transformations = yaml.safe_load((run_dir / "transformations.yml").read_text())["transformations"]
    assert {t["name"] for t in transformations} == {"inclinet-measure", "inclinet-merge", "inclinet-summarize"}
    measure_sites = {
        site["name"]: site for t in transformations if t["name"] == "inclinet-measure" for site in t["sites"]
    }
    assert "container" not in measure_sites["local"] and Path(measure_sites["local"]["pfn"]).is_file()
    pieces = [r for r in replicas if r.get("regex") and "catalog_part" in r["lfn"]]
    assert len(pieces) == 1 and pieces[0]["pfns"][0]["pfn"].startswith(f"file://{run_dir.resolve()}/inputs/")


def _states(run_dir):
    return {
        p.name[:-5]: json.loads(p.read_text())["state"]
        for p in (run_dir / "state").glob("*.json")
        if not p.name.endswith(".rc.json") and p.name != "runner.json" and not p.name.startswith(".tmp-")
    }


def _attempts(run_dir, job_id):
    return (run_dir / "logs" / f"{job_id}.log").read_text().count(f"=== {job_id} attempt")


@pytest.mark.slow
def test_survey_run_killed_and_resumed_then_rerun_with_another_bundle(survey_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    flags = [*survey_flags(survey_data), "--max-parallel", "1", "--output-dir", str(run_dir), "-q"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    runner = subprocess.Popen(
        [sys.executable, "-m", "workflow.cli", *flags], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while not (_states(run_dir).get("measure_0001") == "done" if (run_dir / "state").is_dir() else False):
            assert time.monotonic() < deadline and runner.poll() is None
            time.sleep(0.1)
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    finally:
        if runner.poll() is None:
            runner.kill()
    finished = json.loads((run_dir / "state" / "measure_0001.json").read_text())
    assert main(["resume", str(run_dir), "-q"]) == 0
    assert set(_states(run_dir).values()) == {"done"}
    assert json.loads((run_dir / "state" / "measure_0001.json").read_text())["started"] == finished["started"]
    assert _attempts(run_dir, "measure_0001") == 1
    identity = model_bundle.identity(survey_data["bundle"])
    data = run_dir / "data"
    rows = read_rows(data / naming.survey_catalog(identity))
    assert len(rows) == 24 and {r["status"] for r in rows} == {"ok"} and {r["bands"] for r in rows} == {"g,gri"}
    assert (data / naming.survey_catalog(identity, ".parquet")).stat().st_size > 0
    assert json.loads((data / naming.survey_report(identity, ".json")).read_text())["galaxies"] == 24
    assert str(data / naming.survey_catalog(identity)) in capsys.readouterr().out
    # The same run directory with another bundle: a new catalog beside the first, which is untouched.
    first = (data / naming.survey_catalog(identity)).read_bytes()
    assert (
        main(
            [
                *survey_flags(survey_data, "other_bundle"),
                "--max-parallel",
                "2",
                "--output-dir",
                str(run_dir),
                "--force",
                "-q",
            ]
        )
        == 0
    )
    other = model_bundle.identity(survey_data["other_bundle"])
    assert other != identity
    assert {r["bundle"] for r in read_rows(data / naming.survey_catalog(other))} == {other}
    assert (data / naming.survey_catalog(identity)).read_bytes() == first


@pytest.mark.slurm
@pytest.mark.slow
def test_survey_under_slurm(survey_data, tmp_path):
    from test_slurm import _slurm_problem

    conf = Path(os.environ.get("INCLINET_SLURM_DIR", "/tmp/inclinet-slurm")) / "slurm.conf"
    env = {"SLURM_CONF": str(conf)} if not Path("/etc/slurm/slurm.conf").exists() and conf.exists() else {}
    os.environ.update(env)
    try:
        problem = _slurm_problem()
        if problem:
            if os.environ.get("CI"):
                pytest.fail(f"CI is set but the SLURM tests cannot run: {problem}")
            pytest.skip(problem)
        run_dir = tmp_path / "run"
        code = main(
            [
                *survey_flags(survey_data),
                "--galaxies-per-job",
                "12",
                "--bands",
                "gri",
                "--retries",
                "0",
                "--engine",
                "slurm",
                "--output-dir",
                str(run_dir),
                "--sbatch-option=--mem=1500M",
                "--wait",
                "--poll-interval",
                "1",
                "--wait-timeout",
                "300",
                "-q",
            ]
        )
        logs = {p.name: p.read_text()[-600:] for p in (run_dir / "logs").glob("*.log")}
        assert code == 0, logs
        identity = model_bundle.identity(survey_data["bundle"])
        rows = read_rows(run_dir / "data" / naming.survey_catalog(identity))
        assert len(rows) == 24 and {r["bands"] for r in rows} == {"gri"}
        assert "SLURM_JOB_ID=" in (run_dir / "logs" / "measure_0001.log").read_text()
        assert main(["status", str(run_dir)]) == 0
    finally:
        for key in env:
            os.environ.pop(key, None)


@pytest.mark.pegasus
def test_survey_plans_on_slurm_with_the_bundle_staged_once(survey_data, tmp_path, monkeypatch):
    if not (shutil.which("pegasus-plan") and shutil.which("condor_submit_dag")):
        message = "pegasus-plan and the HTCondor stand-ins are not on PATH (see ../shared/pegasus-planner)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must install them (.ci/run)")
        pytest.skip(message)
    if shutil.which("condor_submit"):
        pytest.skip("HTCondor is installed here: this test would submit")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    from workflow.engines import pegasus

    run_dir = tmp_path / "run"
    assert (
        main(
            [
                *survey_flags(survey_data),
                "--engine",
                "pegasus",
                "--pegasus-site",
                "slurm",
                "--output-dir",
                str(run_dir),
                "-q",
            ]
        )
        == 0
    )
    submit_dir = pegasus.find_submit_dir(run_dir)
    assert submit_dir is not None and (submit_dir / "braindump.yml").is_file()
    measures = list(submit_dir.glob("**/inclinet-measure_measure_*.sub"))
    assert len(measures) == 4 and all("batch_queue = cpu" in p.read_text() for p in measures)
    transfers = "".join(p.read_text() for p in submit_dir.glob("**/stage_in_*.in"))
    # Each bundle file goes once to the site's shared scratch; every measuring job links it.
    for name in model_bundle.files(survey_data["bundle"]):
        assert transfers.count(f'"lfn": "bundle/{name}"') == 1, name
    assert all("bundle/manifest.json" in p.read_text() for p in submit_dir.glob("**/inclinet-measure_measure_*.sh"))
    # Each chunk's images: packed on the submit host from --data-path, staged to the site as one file.
    packs = sorted(submit_dir.glob("**/inclinet-measure_pack_*.sub"))
    assert len(packs) == 4 and all('+pegasus_site = "local"' in p.read_text() for p in packs)
    script = (packs[0].parent / "inclinet-measure_pack_0001.sh").read_text()
    assert f"--pack {naming.survey_archive(1, 4)}" in script and str(survey_data["galaxies"].resolve()) in script
    inter = "".join(p.read_text() for p in submit_dir.glob("**/stage_inter_*.in"))
    for index in range(1, 5):
        assert inter.count(f'"lfn": "{naming.survey_archive(index, 4)}"') == 1
    assert "raw/galaxies" not in transfers + inter


def test_survey_slices_copy_the_rows_read_catalog_reads(tmp_path):
    from inclinet.catalog import read_catalog

    catalog = tmp_path / "catalog.txt"
    catalog.write_text("# a comment\n\npgc | inc\n101 | 60\n\n# skipped\n102 | 70\n103 | 80\n104 | 85\n105 | 50")
    config = dag.WorkflowConfig(catalog=str(catalog), galaxies_per_job=2)
    jobs = [
        dag.JobSpec(
            id=f"measure_{i:04d}",
            stage="measure",
            executable="inclinet-measure",
            args=[],
            inputs=[naming.survey_slice(i, 3)],
            outputs=[],
        )
        for i in (1, 2, 3)
    ]
    paths = dag.write_survey_slices(tmp_path, jobs, config)
    assert [[g.pgc for g in read_catalog(path)] for path in paths] == [[101], [102, 103], [104, 105]]
    assert paths[1].read_text() == "pgc | inc\n102 | 70\n103 | 80\n"
    with pytest.raises(dag.ConfigError, match="do not cover"):
        dag.write_survey_slices(tmp_path, jobs[:2], config)
