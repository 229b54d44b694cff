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
