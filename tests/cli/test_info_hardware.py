"""`geoddu info --hardware` as users run it: real subprocesses, a real probe, a real checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import make_checkpoint

from geoddu.parallel import PRECISIONS
from geoddu.precision_probe import CACHE_ENV, CACHE_FILE

GEODDU = [sys.executable, "-m", "geoddu.cli"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def run(cache, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, CACHE_ENV: str(cache)}
    return subprocess.run([*GEODDU, "info", "--hardware", *map(str, args)], env=env,
                          capture_output=True, text=True)


def test_json_says_what_the_machine_has_and_what_auto_picks(cache):
    r = run(cache, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    cpu = out["machine"]["cpu"]
    assert cpu["logical_threads"] == os.cpu_count()
    assert cpu["bf16"] in ("yes", "no", "unknown") and cpu["int8"] in ("yes", "no", "unknown")
    assert isinstance(out["machine"]["cuda"], list) and out["machine"]["torch"]
    [probe] = [p for p in out["probes"] if p["device"] == "cpu"]
    assert probe["choice"] == out["auto"]["cpu"] and probe["choice"] in PRECISIONS
    assert probe["seconds"]["fp32"] > 0 and probe["gflops"]["fp32"] > 0
    assert not probe["cached"]
    assert out["cache"] == str(cache / CACHE_FILE) and (cache / CACHE_FILE).exists()
    # The second run reads the cache: the same figures.
    again = json.loads(run(cache, "--json", "--device", "cpu").stdout)
    assert [p["device"] for p in again["probes"]] == ["cpu"]
    assert again["probes"][0]["cached"]
    assert again["probes"][0]["seconds"] == probe["seconds"]


def test_table_and_checkpoint_throughput(cache, tmp_path):
    """-m: the checkpoint's Mpx/s in fp32 and in each reduced precision the CPU runs."""
    ckpt = make_checkpoint(tmp_path / "tiny.pt")
    r = run(cache, "--json", "-m", ckpt)
    assert r.returncode == 0, r.stderr
    [timed] = json.loads(r.stdout)["checkpoint"]
    assert timed["path"] == str(ckpt) and timed["device"] == "cpu"
    assert timed["size"] == [512, 512]  # 16 x 16 subimages of 32 px
    probe = json.loads(r.stdout)["probes"][0]
    assert list(timed["mpx_per_s"]) == list(probe["seconds"])  # fp32, and bf16 where it runs
    assert all(rate > 0 for rate in timed["mpx_per_s"].values())

    r = run(cache, "-m", ckpt)
    assert r.returncode == 0, r.stderr
    for text in ("CPU", "bf16 instructions", "Precision probe", "--precision auto on cpu:",
                 "Mpx/s", "tiny.pt on cpu"):
        assert text in r.stdout, text


@pytest.mark.parametrize("args, message", [
    (["--device", "cuda:7"], "Error: device cuda:7 asked for, but this machine has"),
    (["--device", "tpu"], "Error: unknown device 'tpu'"),
    (["-m", "no-such.pt"], "Error: no-such.pt: checkpoint not found"),
    (["--size", "64", "64"], "Error: --hardware takes -m, --device, --refresh and --json only"),
])
def test_bad_input_is_one_line(cache, args, message):
    r = run(cache, *args)
    assert r.returncode != 0
    assert r.stderr.strip().startswith(message), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_refresh_and_device_need_hardware():
    r = subprocess.run([*GEODDU, "info", "--refresh"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("Error: --device and --refresh go with --hardware")


def test_a_corrupt_cache_is_a_warning_not_a_failure(tmp_path):
    (tmp_path / CACHE_FILE).write_text("{ half a file")
    r = run(tmp_path, "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("Warning: ignoring the unreadable precision cache")
    assert json.loads(r.stdout)["probes"][0]["cached"] is False
    json.loads((tmp_path / CACHE_FILE).read_text())  # rewritten whole


def test_versions_beside_the_release_pins(cache, tmp_path):
    """Each pinned package's installed and pinned version, and whether they match."""
    from importlib.metadata import version

    from geoddu.pins import CONSTRAINTS_ENV, DEFAULT_CONSTRAINTS, parse_constraints

    r = run(cache, "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    versions = json.loads(r.stdout)["versions"]
    assert versions["constraints"] == str(DEFAULT_CONSTRAINTS)
    shipped = parse_constraints(DEFAULT_CONSTRAINTS.read_text())
    assert [row["name"] for row in versions["packages"]] == [p.name for p in shipped]
    torch = next(row for row in versions["packages"] if row["name"] == "torch")
    assert torch == {"name": "torch", "installed": version("torch"), "pinned": "2.13.0",
                     "status": "ok"}  # 2.13.0+cpu is the pinned 2.13.0

    pins = tmp_path / "constraints.txt"
    pins.write_text("# a release of another time\n"
                    f"click=={version('click')} --hash=sha256:{'0' * 64}\n"
                    "rich==0.0.1\nno-such-package==1.0\n")
    env = {**os.environ, CACHE_ENV: str(cache), CONSTRAINTS_ENV: str(pins)}
    r = subprocess.run([*GEODDU, "info", "--hardware", "--json", "--device", "cpu"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["versions"] == {"constraints": str(pins), "packages": [
        {"name": "click", "installed": version("click"), "pinned": version("click"),
         "status": "ok"},
        {"name": "rich", "installed": version("rich"), "pinned": "0.0.1", "status": "differs"},
        {"name": "no-such-package", "installed": None, "pinned": "1.0", "status": "missing"},
    ]}
    r = subprocess.run([*GEODDU, "info", "--hardware", "--device", "cpu"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[1]: line for line in r.stdout.splitlines()
            if line.startswith("│") and len(line.split()) > 2}
    assert "differs" in rows["rich"] and "missing" in rows["no-such-package"]
    assert "ok" in rows["click"]

    (tmp_path / "gone").mkdir()
    env[CONSTRAINTS_ENV] = str(tmp_path / "gone" / "constraints.txt")
    r = subprocess.run([*GEODDU, "info", "--hardware", "--json", "--device", "cpu"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    gone = json.loads(r.stdout)["versions"]
    assert gone["packages"] == [] and gone["error"] == "No such file or directory"
