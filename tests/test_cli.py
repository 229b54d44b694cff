"""The `geoddu` command as users run it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import rasterio

GEODDU = [sys.executable, "-m", "geoddu_cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*GEODDU, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_info_json_reproduces_the_paper():
    r = run(
        "info",
        "--in-channels",
        "1",
        "--base-channels",
        "4",
        "--depth",
        "3",
        "--comm-features",
        "32",
        "--classes",
        "3",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["parameters"] == {
        **out["parameters"],
        "encoder_decoder": 30479,
        "communication": 77088,
        "total": 30479 + 77088,
    }
    assert out["receptive_field"] == {"without_communication": 92, "with_communication": 188}


def test_info_table_and_memory():
    r = run("info", "--no-up-bias", "--size", "1024", "1024", "--subimages", "4")
    assert r.returncode == 0, r.stderr
    assert "1,942,371" in r.stdout and "885,760" in r.stdout and "380 px" in r.stdout
    assert "176.0" in r.stdout  # encoder block 1 memory in MB, as in Table V


def test_init_then_info_and_segment(tmp_path, scene):
    classes = tmp_path / "classes.json"
    classes.write_text(
        json.dumps(
            [{"name": "water", "color": [0, 0, 255]}, {"name": "forest", "color": [0, 255, 0]}]
        )
    )
    ckpt = tmp_path / "m.pt"
    r = run(
        "init",
        "-o",
        ckpt,
        "--depth",
        "2",
        "--base-channels",
        "4",
        "--comm-features",
        "4",
        "--classes-file",
        classes,
        "--subimage-size",
        "32",
    )
    assert r.returncode == 0, r.stderr
    r = run("info", "--checkpoint", ckpt, "--json")
    info = json.loads(r.stdout)
    assert [c["name"] for c in info["checkpoint"]["classes"]] == ["water", "forest"]
    assert info["config"]["num_classes"] == 2
    out = tmp_path / "landcover.tif"
    r = run("segment", scene, "-o", out, "-m", ckpt, "--progress-format", "json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stderr.splitlines()]
    assert events[-1]["event"] == "done" and events[0]["event"] == "progress"
    with rasterio.open(out) as src:
        assert json.loads(src.tags()["CLASS_NAMES"]) == ["water", "forest"]
        assert src.colormap(1)[0][:3] == (0, 0, 255)
    r = run("segment", scene, "-o", out, "-m", ckpt)
    assert r.returncode == 1 and "--overwrite" in r.stderr


def _one_line_error(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr


def test_bad_input_gives_one_line_errors(tmp_path, scene, checkpoint):
    out = tmp_path / "o.tif"
    _one_line_error(run("segment", tmp_path / "nope.tif", "-o", out, "-m", checkpoint), "nope.tif")
    text = tmp_path / "notes.tif"
    text.write_text("hello")
    _one_line_error(run("segment", text, "-o", out, "-m", checkpoint), "not a raster")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    _one_line_error(run("segment", scene, "-o", out, "-m", bad), "checkpoint")
    _one_line_error(run("segment", scene, "-o", out, "-m", tmp_path / "none.pt"), "not found")
    _one_line_error(
        run("segment", scene, "-o", tmp_path / "no" / "o.tif", "-m", checkpoint), "does not exist"
    )
    _one_line_error(run("segment", scene, "-o", out, "-m", checkpoint, "--bands", "1,2"), "band")
    _one_line_error(run("segment", scene, "-o", out, "-m", checkpoint, "--gpus", "4"), "CUDA")
    assert not out.exists()


def test_help_explains():
    r = run("segment", "--help")
    assert r.returncode == 0 and "communication network" in r.stdout and "--gpus" in r.stdout


def _only_error_line(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 1, exactly one stderr line, starting with 'Error:', no traceback."""
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip() and lines[0].startswith("Error:"), r.stderr
    assert "Traceback" not in r.stderr and "weights_only" not in r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_segment_refuses_bad_checkpoints_in_one_line(tmp_path, scene, checkpoint):
    import torch

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.tif"
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 8)
    half = tmp_path / "half.pt"
    half.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    zero_std = tmp_path / "zero-std.pt"
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["normalization"]["std"][1] = 0.0
    torch.save(ckpt, zero_std)
    damaged = "not a geoddu checkpoint, or the file is damaged"
    for bad, needle in ((noise, damaged), (half, damaged),
                        (zero_std, "normalization.std[1]: must be above 0")):
        r = run("segment", scene, "-o", out, "-m", bad)
        _only_error_line(r, f"{bad}: {needle}")
        assert not out.exists()
        assert not list(out_dir.glob("*geoddu-tmp*")) and not list(out_dir.iterdir())


def test_init_refuses_inconsistent_classes(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    two = tmp_path / "two.json"
    two.write_text(json.dumps([{"name": "water", "color": [0, 0, 255]},
                               {"name": "land", "color": [0, 255, 0]}]))
    ckpt = tmp_path / "m.pt"
    _only_error_line(run("init", "-o", ckpt, "--classes-file", empty), f"{empty}: lists no classes")
    _only_error_line(run("init", "-o", ckpt, "--classes", "3", "--classes-file", two),
                     f"--classes 3 but {two} lists 2 classes")
    # Out of range on the command line already: click's usage error, as one line (exit 2).
    r = run("init", "-o", ckpt, "--classes", "256")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "1<=x<=255" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob(".*"))
    # The same count given twice is no contradiction.
    r = run("init", "-o", ckpt, "--classes", "2", "--classes-file", two, "--depth", "2",
            "--base-channels", "4", "--comm-features", "4", "--subimage-size", "32")
    assert r.returncode == 0, r.stderr and ckpt.is_file()


def test_resume_from_a_damaged_last_checkpoint_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"PK\x03\x04 cut short by a full disk")
    r = run("train", "-o", run_dir, "--resume")
    _only_error_line(r, f"{run_dir / 'last.pt'}: not a geoddu checkpoint, or the file is damaged")
