"""Output damage: every kind of change to a finished job's output is noticed and named."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from inclinet.errors import InputError
from inclinet.io import atomic_savez, load_npz
from inclinet.npzstream import NpzRows
from workflow import dag
from workflow.cli import main
from workflow.engines.common import output_problems

WRITE = (
    "import sys, numpy as np\n"
    "np.savez(sys.argv[1], images=np.arange(4096, dtype=np.uint8).reshape(4, 32, 32, 1))\n"
    "open(sys.argv[2], 'w').write('pgc,band,file,reason\\n1,g,x,why\\n')\n"
    "open(sys.argv[3], 'w').write('{\"ok\": 1}')\n"
)
OUTPUTS = ["out.npz", "out.report.csv", "out.json"]


def _flip(path, offset=None, count=64):
    """Invert ``count`` bytes in the middle of ``path`` in place, keeping its size and mtime."""
    info = path.stat()
    raw = bytearray(path.read_bytes())
    start = len(raw) // 2 if offset is None else offset
    raw[start : start + count] = bytes(255 - b for b in raw[start : start + count])
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def _run(tmp_path):
    jobs = [
        dag.JobSpec(
            id="w",
            stage="prep",
            executable=sys.executable,
            args=["-c", WRITE, *OUTPUTS],
            inputs=[],
            outputs=list(OUTPUTS),
        )
    ]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dag.save_jobs(run_dir, jobs)
    (run_dir / "run.json").write_text(
        json.dumps({"engine": "local", "config": {"retries": 0}, "engine_args": {"max_parallel": 1}})
    )
    assert main(["resume", str(run_dir), "-q"]) == 0
    return run_dir, jobs[0]


DAMAGE = {
    "flipped bytes in an npz (size and mtime kept)": ("out.npz", lambda p: _flip(p)),
    "truncated report": ("out.report.csv", lambda p: p.write_text(p.read_text()[:-5])),
    "emptied report": ("out.report.csv", lambda p: p.write_text("")),
    "same-size rewrite of a json": ("out.json", lambda p: p.write_text('{"ok": 2}')),
    "deleted npz": ("out.npz", lambda p: p.unlink()),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damage_is_found_by_verify_and_repaired_by_resume(tmp_path, capsys, case):
    run_dir, job = _run(tmp_path)
    name, damage = DAMAGE[case]
    damage(run_dir / "data" / name)
    capsys.readouterr()
    assert main(["status", str(run_dir), "--verify"]) == 1
    out = capsys.readouterr().out
    assert f"MISMATCH w: {run_dir / 'data' / name}:" in out
    assert main(["resume", str(run_dir), "-q"]) == 0
    if case.startswith("flipped"):
        # Size and mtime unchanged: only --verify (full checksums) sees it; resume trusts the record.
        record = json.loads((run_dir / "state" / "w.json").read_text())["outputs"]
        assert not output_problems(job, run_dir, record)
        assert output_problems(job, run_dir, record, full=True)
        assert output_problems(job, run_dir, None)  # the npz's own CRC check names it too
        assert main(["status", str(run_dir), "--verify"]) == 1
    else:
        assert "no longer match; running it again" in capsys.readouterr().err
        assert main(["status", str(run_dir), "--verify"]) == 0


def test_npz_readers_name_a_damaged_file(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    for compressed in (True, False):
        path = tmp_path / f"sample_{compressed}.npz"
        atomic_savez(
            path,
            compressed=compressed,
            images=images,
            labels=np.arange(8, dtype=np.int32),
            pgcIDs=np.arange(8, dtype=np.int32),
        )
        _flip(path, offset=path.stat().st_size // 4, count=16)
        with pytest.raises(InputError, match=f"{path.name}: not a readable npz"):
            load_npz(path)
        with pytest.raises(InputError, match=f"{path.name}: not a readable npz"):
            with NpzRows(path) as rows:
                rows.read([0])


def test_resume_repairs_damage_that_changed_the_modification_time(tmp_path, capsys):
    run_dir, job = _run(tmp_path)
    path = run_dir / "data" / "out.npz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))  # new mtime: resume re-hashes it
    capsys.readouterr()
    assert main(["resume", str(run_dir), "-q"]) == 0
    assert "out.npz: content changed since the job finished (SHA-256 differs)" in capsys.readouterr().err
    assert main(["status", str(run_dir), "--verify"]) == 0
    assert Path(run_dir / "logs" / "w.log").read_text().count("=== w attempt") == 2
