"""The `geoddu` command as users run it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio
from geoddu.cli.main import cli

GEODDU = [sys.executable, "-m", "geoddu.cli"]


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
    r = run("info", "-m", ckpt, "--json")
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
    assert r.returncode == 0, r.stderr
    assert json.loads(run("info", "-m", ckpt, "--json").stdout)["config"]["num_classes"] == 2


def test_resume_from_a_damaged_last_checkpoint_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"PK\x03\x04 cut short by a full disk")
    r = run("train", "-o", run_dir, "--resume")
    _only_error_line(r, f"{run_dir / 'last.pt'}: not a geoddu checkpoint, or the file is damaged")


# -- answers at once ------------------------------------------------------------------------

# Modules that take seconds to import (torch alone 1.5-3 s) and that no --help or --version
# needs: the commands import them when they run.
HEAVY = ("torch", "rasterio", "geopandas")
# Runs `geoddu ARGV...` in this process as the console script would, then lists the modules
# it imported (click exits through SystemExit, atexit still runs).
_LIST_MODULES = """
import atexit, runpy, sys
out, argv = sys.argv[1], sys.argv[2:]
atexit.register(lambda: open(out, "w").write("\\n".join(sorted(sys.modules))))
sys.argv = ["geoddu", *argv]
runpy.run_module("geoddu.cli", run_name="__main__")
"""


@pytest.mark.parametrize(
    "argv",
    [["--version"], ["--help"], *([name, "--help"] for name in sorted(cli.commands))],
    ids=lambda argv: " ".join(argv),
)
def test_help_and_version_do_not_import_torch(argv, tmp_path):
    listing = tmp_path / "modules.txt"
    r = subprocess.run([sys.executable, "-c", _LIST_MODULES, str(listing), *argv],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and not r.stderr
    modules = listing.read_text().split()
    assert "geoddu.cli.main" in modules
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"geoddu {' '.join(argv)} imported {heavy[:5]}"


def test_the_light_model_constants_are_the_models():
    from geoddu import checkpoint_metadata, model_config
    from geoddu.models import ddunet
    from geoddu.models.resnet import RESNET_ENCODERS

    # One definition: the torch modules use geoddu.model_config's, and its encoder list names
    # exactly the encoders the model builds.
    assert model_config.ENCODERS == ("unet", *RESNET_ENCODERS)
    assert ddunet.DEFAULT_CONFIG is model_config.DEFAULT_CONFIG
    assert ddunet.ENCODERS is model_config.ENCODERS
    # The checkpoint's checks (geoddu.checkpoint_metadata) use the same limits.
    assert (checkpoint_metadata.MAX_CLASSES, checkpoint_metadata.MAX_DEPTH) == (
        model_config.MAX_CLASSES, model_config.MAX_DEPTH)


# -- one flag for one thing -------------------------------------------------------------------

def test_every_checkpoint_option_is_m_model():
    named = []
    for name, command in cli.commands.items():
        for param in command.params:
            if param.name in ("model", "model_path", "init_model") or "--model" in param.opts:
                assert param.opts == ["-m", "--model"], (name, param.opts)
                named.append(name)
            assert "--checkpoint" not in param.opts or param.hidden, (name, param.opts)
    assert sorted(named) == ["card", "evaluate", "export", "info", "segment", "train"]


def test_info_takes_m_and_still_the_old_checkpoint_flag(tmp_path, checkpoint):
    new = run("info", "-m", checkpoint, "--json")
    assert new.returncode == 0, new.stderr
    old = run("info", "--checkpoint", checkpoint, "--json")
    assert old.returncode == 0 and json.loads(old.stdout) == json.loads(new.stdout)
    assert "--checkpoint is now -m/--model" in old.stderr
    assert "--checkpoint" not in run("info", "--help").stdout


def test_init_bands_is_a_band_list(tmp_path):
    ckpt = tmp_path / "m.pt"
    small = ("--depth", "2", "--base-channels", "4", "--comm-features", "4")
    r = run("init", "-o", ckpt, "--bands", "4,1,2", *small)
    assert r.returncode == 0, r.stderr
    info = json.loads(run("info", "-m", ckpt, "--json").stdout)
    assert info["checkpoint"]["bands"] == [4, 1, 2] and info["config"]["in_channels"] == 3
    # --in-channels stays the count; both given must agree.
    r = run("init", "-o", ckpt, "--overwrite", "--bands", "1,2", "--in-channels", "2", *small)
    assert r.returncode == 0, r.stderr
    _only_error_line(run("init", "-o", tmp_path / "x.pt", "--bands", "1,2", "--in-channels", "3"),
                     "--in-channels 3 but --bands lists 2 bands")
    r = run("init", "-o", tmp_path / "x.pt", "--bands", "0,1")
    assert r.returncode == 2 and "band numbers start at 1" in r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "x.pt").exists()


def test_init_and_train_read_the_same_classes_file(tmp_path):
    # YAML as `geoddu train --classes-file` reads it: names alone or with colours.
    classes = tmp_path / "classes.yaml"
    classes.write_text("classes:\n  - water\n  - {name: forest, color: [0, 128, 0]}\n"
                       "column: landuse\n")
    ckpt = tmp_path / "m.pt"
    r = run("init", "-o", ckpt, "--classes-file", classes, "--depth", "2", "--base-channels",
            "4", "--comm-features", "4")
    assert r.returncode == 0, r.stderr
    saved = json.loads(run("info", "-m", ckpt, "--json").stdout)["checkpoint"]["classes"]
    assert [c["name"] for c in saved] == ["water", "forest"] and saved[1]["color"] == [0, 128, 0]
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe[")
    _only_error_line(run("init", "-o", ckpt, "--overwrite", "--classes-file", bad),
                     f"{bad}: not valid JSON (not UTF-8 text)")
    bad.write_text('[{"name": "a", "color": 7}]')
    _only_error_line(run("init", "-o", ckpt, "--overwrite", "--classes-file", bad), "colour")


# -- progress ------------------------------------------------------------------------------

# What a progress line looks like in a file or a pipe: "label: what", never a bar.
_LINE = re.compile(r"^[a-z0-9 :+]+: (started|\d+/\d+ \w+|done in )")


def _plain_progress(stderr: str) -> list[str]:
    assert "\r" not in stderr and "\x1b" not in stderr and "━" not in stderr, stderr
    lines = stderr.splitlines()
    for line in lines:
        assert _LINE.match(line), line
    return lines


def test_segment_and_vectorize_progress_is_one_line_per_event_in_a_pipe(tmp_path, scene,
                                                                         checkpoint):
    out = tmp_path / "map.tif"
    r = run("segment", scene, "-o", out, "-m", checkpoint)
    assert r.returncode == 0, r.stderr
    lines = _plain_progress(r.stderr)
    assert lines[0].startswith("encode: started, 1/") and "subimages" in lines[0]
    assert re.match(r"decode \+ write: (\d+)/\1 subimages, done in ", lines[-1])
    r = run("vectorize", out, "-o", tmp_path / "v.gpkg", "--simplify", "1")
    assert r.returncode == 0, r.stderr
    lines = _plain_progress(r.stderr)
    stages = [line.split(":")[0] for line in lines]
    assert stages == ["polygonize", "simplify", "simplify", "write polygons", "write polygons"]
    assert lines[-1].startswith("write polygons: done in ")


def test_plain_progress_lines_come_at_a_modest_rate(monkeypatch, capsys):
    from geoddu.cli import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    reporter = progress.StageProgress(terminal=False)
    reporter.setup("loading the model")  # a terminal's status line only: nothing here
    for done in range(1, 62):  # a subimage a second, for a minute
        clock[0] = float(done)
        reporter("encode", done, 61)
    reporter.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "encode: started, 1/61 subimages, 0:00:00 elapsed"
    assert lines[1] == ("encode: 11/61 subimages, 1.1 subimages/s, 0:00:10 elapsed, "
                        "0:00:45 remaining")
    assert lines[-1] == "encode: 61/61 subimages, done in 0:01:00 (1.0 subimages/s)"
    assert len(lines) == 7  # start, every 10 s, end


def test_segment_without_a_model_says_where_models_come_from(tmp_path, scene):
    r = run("segment", scene, "-o", tmp_path / "out.tif")
    line = _only_error_line(r, "no model (-m/--model)", "geoddu train", "docs/models.md")
    assert "Missing option" not in line and not (tmp_path / "out.tif").exists()


def test_segment_plan_prints_what_the_run_then_does(tmp_path, checkpoint):
    """`--plan` on a real GeoTIFF: exit 0, nothing written; then the run does what it said
    (schedule, encoder runs, progress totals), through the CLI and the --request route."""
    import numpy as np

    import geoddu
    from geoddu.engine.request import SegmentRequest

    data = np.random.default_rng(7).integers(1, 255, (3, 150, 205), dtype=np.uint8)
    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=205, height=150, count=3,
                       dtype="uint8", crs="EPSG:32631",
                       transform=rasterio.transform.from_origin(500000, 4000000, 10, 10)) as dst:
        dst.write(data)
    out = tmp_path / "out.tif"
    args = ("segment", scene, "-o", out, "-m", checkpoint, "--device", "cpu,cpu",
            "--probabilities", tmp_path / "p.tif")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run(*args, "--plan")
    assert r.returncode == 0, r.stderr
    # 7 columns on two devices: strips of 4 and 3; the first encodes its right context
    # column, the second its left one (5 cells each) as well.
    assert "schedule   one pass, 45 encoder runs" in r.stdout
    assert "strips of columns 0-3:" in r.stdout and "strips of columns 4-6:" in r.stdout
    assert f"probabilities {tmp_path / 'p.tif'}" in r.stdout and "expected peak" in r.stdout
    r = run(*args, "--plan", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert (plan["schedule"]["label"], plan["encoder_runs"]) == ("one pass", 45)
    assert plan["totals"] == {"encode": 45, "communicate": 10, "decode": 35}
    assert [[s["cols"] for s in d["strips"]] for d in plan["devices"]] == [[[0, 4]], [[4, 7]]]
    assert plan["memory"]["peak_bytes"]["host"] == sum(p["bytes"] for p in plan["memory"]["parts"])
    # The same plan from a request file.
    request = SegmentRequest(
        src=scene, output=out, model=checkpoint, device="cpu,cpu", probabilities=tmp_path / "p.tif"
    )
    (tmp_path / "req.json").write_text(request.to_json())
    r = run("segment", "--request", tmp_path / "req.json", "--plan", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == plan
    # The run: the same schedule, the planned totals, the planned encoder runs.
    r = run(*args, "--progress-format", "json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stderr.splitlines()]
    last = {e["stage"]: (e["done"], e["total"]) for e in events if e["event"] == "progress"}
    assert last == {stage: (n, n) for stage, n in plan["totals"].items()}
    assert "in one pass" in events[-1]["summary"]
    result = geoddu.segment(scene, tmp_path / "api.tif", checkpoint, device="cpu,cpu")
    assert result.encoder_runs == plan["encoder_runs"]
    _only_error_line(run(*args, "--json"), "--json goes with --plan")
