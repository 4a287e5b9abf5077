"""Bad inputs: each gets one clear line naming the file and what is wrong; no tracebacks."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from bad_inputs import catalog_cases, image_cases  # noqa: E402

from inclinet.catalog import read_catalog, write_catalog  # noqa: E402
from inclinet.errors import InputError  # noqa: E402
from inclinet.images import load_image  # noqa: E402
from inclinet.stages import predict  # noqa: E402
from workflow.cli import main as workflow_main  # noqa: E402


def test_every_bad_image_gets_its_own_reason(tmp_path):
    for name, path, expected in image_cases(tmp_path):
        if expected is None:
            continue
        with pytest.raises(InputError) as raised:
            load_image(path)
        message = str(raised.value)
        assert message.startswith(f"{path}: "), name
        assert expected in message, f"{name}: {message}"
        assert "\n" not in message, name


def test_every_bad_catalog_is_refused_with_file_and_reason(tmp_path):
    for name, path, expected in catalog_cases(tmp_path):
        with pytest.raises(InputError) as raised:
            read_catalog(path)
        assert str(raised.value).startswith(str(path)) and expected in str(raised.value), name


def test_predict_counts_a_directory_named_like_an_image_as_failed(tmp_path):
    bad = tmp_path / "galaxy.jpg"
    bad.mkdir()
    (bad / "inner.png").write_bytes(b"")
    items = predict.collect_inputs([bad])
    assert [path for path, _ in items] == [bad]  # not expanded into its contents
    with pytest.raises(InputError, match="galaxy.jpg: is a directory, not an image file"):
        load_image(items[0][0])


def _real_data(tmp_path, n=4, images=True):
    data = tmp_path / "images"
    data.mkdir()
    rows = [{"pgc": 100 + k, "inc": 60, "inc_flg": 0} for k in range(n)]
    write_catalog(tmp_path / "catalog.csv", rows, fmt="csv")
    if images:
        for row in rows:
            Image.fromarray(np.full((16, 16), 200, np.uint8)).save(data / f"pgc{row['pgc']}_d25x2_rot_g.png")
    return data, tmp_path / "catalog.csv"


def _build(tmp_path, *extra):
    return workflow_main(
        ["--bands", "g", "--models", "model4", "--tasks", "regression", "--size", "32", "--dry-run", "-q", *extra]
    )


@pytest.mark.parametrize(
    "case",
    [
        "data path missing",
        "data path empty",
        "no image matches",
        "catalog is a folder",
        "output dir is a file",
        "output dir under a file",
    ],
)
def test_build_time_input_errors_name_the_users_paths(tmp_path, capsys, case):
    data, catalog = _real_data(tmp_path, images=case != "no image matches")
    output = tmp_path / "run"
    expected = {
        "data path missing": f"--data-path {tmp_path / 'nowhere'}: folder not found",
        "data path empty": f"--data-path {tmp_path / 'empty'}: the folder holds no files",
        "no image matches": f"--data-path {data}: none of the catalog's galaxies has an image there",
        "catalog is a folder": f"--catalog {tmp_path}: not a regular file",
        "output dir is a file": "invalid --output-dir",
        "output dir under a file": "is a file, not a folder",
    }[case]
    if case == "data path missing":
        data = tmp_path / "nowhere"
    elif case == "data path empty":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "no image matches":
        (data / "unrelated.txt").write_text("x")
    elif case == "catalog is a folder":
        catalog = tmp_path
    elif case == "output dir is a file":
        output.write_text("I am a file")
    elif case == "output dir under a file":
        (tmp_path / "file").write_text("x")
        output = tmp_path / "file" / "run"
    code = _build(tmp_path, "--data-path", str(data), "--catalog", str(catalog), "--output-dir", str(output))
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_build_time_unreadable_catalog_is_one_line(tmp_path, capsys, monkeypatch):
    data, catalog = _real_data(tmp_path)
    import workflow.cli as cli

    real_access = cli.os.access
    monkeypatch.setattr(
        cli.os, "access", lambda path, mode: False if Path(path) == catalog else real_access(path, mode)
    )
    code = _build(tmp_path, "--data-path", str(data), "--catalog", str(catalog), "--output-dir", str(tmp_path / "r"))
    err = capsys.readouterr().err
    assert code == 2 and f"--catalog {catalog}: not readable (permission denied)" in err and "Traceback" not in err


def test_missing_inputs_report_says_what_is_in_place_of_an_image(tmp_path):
    data, catalog = _real_data(tmp_path)
    target = data / "pgc101_d25x2_rot_g.png"
    target.unlink()
    target.mkdir()
    assert (
        _build(tmp_path, "--data-path", str(data), "--catalog", str(catalog), "--output-dir", str(tmp_path / "run"))
        == 0
    )
    report = (tmp_path / "run" / "missing_inputs.csv").read_text()
    assert "is a directory, not an image file" in report
    assert json.loads((tmp_path / "run" / "run.json").read_text())["engine"] == "local"
