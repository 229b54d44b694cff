"""Plugins > geoddu > Set up engine…, headless: the plugin's QgsTask makes a Python environment
with torch and the geoddu wheel that build_zip.py ships, points the provider's settings at it, and
that environment segments a raster.

The install needs the package registry (torch==2.13.0 and geoddu's dependencies): without it the
test is skipped, with the reason. Here the registry's torch==2.13.0 is the CPU wheel on disk, so
the torch requirement is given with no index arguments (the plugin's default is PyTorch's index).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from qgis_testdata import HEIGHT, PLUGIN_PARENT, WIDTH

TORCH = "torch==2.13.0"
SETTINGS = ("GEODDU_ENGINE", "GEODDU_PYTHON_ENV")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Skip (with the reason) unless pip can get torch from the package registry."""
    cli = os.environ.get("GEODDU_TEST_CLI") or ""
    python = os.path.join(os.path.dirname(cli), "python") if cli else ""
    if not os.path.isfile(python):
        python = sys.executable
    folder = tmp_path_factory.mktemp("pip-check")
    try:
        done = subprocess.run([python, "-m", "pip", "download", "--no-deps", "-q",
                               "--disable-pip-version-check", TORCH, "-d", str(folder)],
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip could not get {TORCH} from the package registry within 120 s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"pip cannot get {TORCH} from the package registry: {last}")


@pytest.fixture(scope="module")
def wheel(qgis_app, registry, tmp_path_factory):
    """geoddu's wheel, built as build_zip.py builds it for the plugin zip."""
    if str(PLUGIN_PARENT) not in sys.path:
        sys.path.insert(0, str(PLUGIN_PARENT))
    import build_zip

    return build_zip.build_wheel(tmp_path_factory.mktemp("wheels"))


@pytest.fixture
def restore_settings(plugin):
    from processing.core.ProcessingConfig import ProcessingConfig

    before = {name: ProcessingConfig.getSetting(name) for name in SETTINGS}
    yield
    for name, value in before.items():
        ProcessingConfig.setSettingValue(name, value)


def _wait(task, done, timeout):
    from qgis.PyQt.QtCore import QCoreApplication

    deadline = time.monotonic() + timeout
    while not done and time.monotonic() < deadline:
        QCoreApplication.processEvents()
        time.sleep(0.05)
    if not done:
        task.cancel()
        pytest.fail(f"the set-up did not finish within {timeout} s")


def test_set_up_engine_then_segment_through_it(plugin, data, wheel, restore_settings,
                                               monkeypatch, tmp_path):
    from geoddu_qgis import discovery, engine_setup, settings
    from geoddu_qgis.plugin import EngineSetupTask
    from osgeo import gdal
    from qgis.core import QgsApplication

    for var in ("GEODDU_ENGINE", "GEODDU_CLI", "GEODDU_PYTHON_ENV"):
        monkeypatch.delenv(var, raising=False)
    env_dir = tmp_path / "engine-env"
    plan = engine_setup.make_plan(env_dir=str(env_dir), torch_requirement=TORCH,
                                  torch_pip_args=[], geoddu_source=str(wheel),
                                  pip_args=["--no-compile"])  # saves CI ~20 s of .pyc writing
    # QGIS's own Python, sharing its packages, numpy pinned to the one QGIS runs.
    assert plan.python == sys.executable and plan.system_site_packages
    import numpy

    assert plan.extra_requirements == [f"numpy=={numpy.__version__}"]

    log: list[str] = []

    def collect(message, tag, level):
        if tag == "geoddu":
            log.append(message)

    QgsApplication.messageLog().messageReceived.connect(collect)
    progress: list[float] = []
    done: list[bool] = []
    task = EngineSetupTask(plan, lambda ok, t: done.append(ok))
    task.progressChanged.connect(progress.append)
    started = time.monotonic()
    QgsApplication.taskManager().addTask(task)
    try:
        _wait(task, done, timeout=600)
    finally:
        QgsApplication.messageLog().messageReceived.disconnect(collect)
    took = time.monotonic() - started
    assert done == [True], f"{task.error}\n" + "\n".join(log[-20:])
    print(f"set-up took {took:.0f} s")

    # Progress step by step, the subprocesses' output in the log, the marker written last.
    assert progress and max(progress) >= 75 and progress == sorted(progress)
    assert any(line.startswith("[2/4] Installing torch==2.13.0") for line in log)
    assert any("Successfully installed" in line and "geoddu" in line for line in log)
    assert engine_setup.is_ready(str(env_dir))

    # The release pins: pip got them, and every pinned package is installed at its pin (QGIS's
    # numpy and the torch requirement are the plan's own pins); the log and the task say so.
    result = task.result
    assert result.env_dir == str(env_dir) and plan.constraints
    assert any(" -c " in line and line.startswith("[3/4]") for line in log)
    release = {p.name: p.version for p in plan.pins()}
    assert release and result.pinned == {**release, **plan.own_pins()}
    for name, version in result.pinned.items():
        assert (result.installed[name] or "").split("+")[0] == version, name
    assert any(line.startswith("Installed: ") and "as pinned" in line for line in log)
    # Hashes: the reference platform downloaded the release's own files.
    assert set(result.hashes.values()) <= {"ok", "no hash"}, result.hashes
    import json

    marker = json.loads((env_dir / engine_setup.MARKER).read_text())
    assert marker["installed"] == result.installed and marker["pinned"] == result.pinned

    # The provider is pointed at it, and finds it.
    assert settings.engine_settings()["mode"] == "env"
    assert settings.engine_settings()["python_env"] == str(env_dir)
    command = discovery.env_cli_command(str(env_dir))
    assert command == [str(env_dir / "bin" / "geoddu")]

    # The environment's own geoddu command segments a raster.
    out = tmp_path / "classes.tif"
    run = subprocess.run(command + ["segment", data["image"], "-o", str(out), "--model",
                                    data["model"]], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    ds = gdal.Open(str(out))
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (WIDTH, HEIGHT, 1)
    ds = None


def test_cancel_kills_the_step_and_removes_the_environment(qgis_app, tmp_path):
    if str(PLUGIN_PARENT) not in sys.path:
        sys.path.insert(0, str(PLUGIN_PARENT))
    from geoddu_qgis import engine_setup
    from geoddu_qgis.setup_process import SetupCancelled

    env_dir = tmp_path / "engine-env"
    plan = engine_setup.make_plan(env_dir=str(env_dir), torch_requirement=TORCH,
                                  torch_pip_args=[], geoddu_source=str(tmp_path / "x.whl"),
                                  system_site_packages=False, extra_requirements=[])
    steps: list[int] = []
    log: list[str] = []

    def cancelled():  # as soon as the torch install runs
        return steps[-1] >= 2

    with pytest.raises(SetupCancelled, match="torch"):
        engine_setup.run_setup(plan, log=log.append,
                               progress=lambda k, n, title: steps.append(k),
                               is_cancelled=cancelled, record=pytest.fail)
    assert steps == [1, 2]
    assert not env_dir.exists()  # nothing half-made is left
    assert not engine_setup.is_ready(str(env_dir))


def test_torch_build_and_defaults(qgis_app, tmp_path):
    if str(PLUGIN_PARENT) not in sys.path:
        sys.path.insert(0, str(PLUGIN_PARENT))
    from geoddu_qgis import engine_setup

    assert engine_setup.default_torch_pip_args(gpu=False) == ["--index-url",
                                                              engine_setup.CPU_INDEX]
    assert engine_setup.default_torch_pip_args(gpu=True) == ["--index-url",
                                                             engine_setup.CUDA_INDEX]
    plan = engine_setup.make_plan(profile_dir=str(tmp_path), geoddu_source="geoddu.whl",
                                  environ={"GEODDU_SETUP_TORCH_ARGS": "",
                                           "GEODDU_SETUP_TORCH": "torch==2.13.0"})
    assert plan.env_dir == str(tmp_path / "geoddu" / "engine-env")
    assert plan.torch_requirement == "torch==2.13.0" and plan.torch_pip_args == []
    # A folder that is not a Python environment is never taken over.
    (tmp_path / "geoddu" / "engine-env").mkdir(parents=True)
    (tmp_path / "geoddu" / "engine-env" / "mine.txt").write_text("keep")
    with pytest.raises(engine_setup.SetupError, match="not a Python environment"):
        engine_setup.run_setup(plan, log=lambda line: None)
    assert (tmp_path / "geoddu" / "engine-env" / "mine.txt").read_text() == "keep"


def test_release_pins_go_to_pip_and_hashes_are_checked(qgis_app, tmp_path):
    """Without the registry: which pins pip is given, and the hash check on pip's report."""
    if str(PLUGIN_PARENT) not in sys.path:
        sys.path.insert(0, str(PLUGIN_PARENT))
    import json

    from geoddu_qgis import engine_setup, setup_pins

    # The release file is found (a checkout here; the zip ships it next to the plugin), every
    # line an exact pin, torch at the version CI installs.
    release = engine_setup.find_constraints()
    assert release and os.path.isfile(release)
    text = open(release, encoding="utf-8").read()
    pins = {p.name.lower(): p for p in setup_pins.parse_constraints(text)}
    assert pins["torch"].version == "2.13.0" and not pins["torch"].hashes
    assert {"rasterio", "numpy", "click", "shapely"} <= set(pins)
    assert all(len(h) == 64 for p in pins.values() for h in p.hashes)
    assert setup_pins.pinned_platform(text)

    sha = "a" * 64
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# platform: sys_platform=linux platform_machine=x86_64 "
                           "python_version=3.11\n"
                           f"click==8.1.0 --hash=sha256:{sha}\nnumpy==2.0.0 --hash=sha256:{sha}\n"
                           "torch==2.13.0\n")
    plan = engine_setup.make_plan(env_dir=str(tmp_path / "env"), python=sys.executable,
                                  torch_requirement="torch==2.13.0", torch_pip_args=[],
                                  geoddu_source="geoddu.whl",
                                  extra_requirements=["numpy==1.24.2"],
                                  constraints=str(constraints), environ={})
    # The plan's own requirements (QGIS's numpy, the torch requirement) win over the pins.
    assert [p.name for p in plan.pins()] == ["click"]
    assert plan.own_pins() == {"torch": "2.13.0", "numpy": "1.24.2"}
    install = plan.steps()[2][1]
    assert install[install.index("-c") + 1] == plan.pin_file()
    assert "--require-hashes" not in install
    # Unset, the variable picks no pins at all.
    assert engine_setup.make_plan(env_dir=str(tmp_path / "e"), python=sys.executable,
                                  geoddu_source="g.whl", torch_pip_args=[],
                                  environ={"GEODDU_SETUP_CONSTRAINTS": ""}).constraints is None

    os.makedirs(plan.env_dir)

    def report(platform_machine, digest):
        with open(plan.report_file(), "w") as fh:
            json.dump({"environment": {"sys_platform": "linux", "python_version": "3.11",
                                       "platform_machine": platform_machine},
                       "install": [{"metadata": {"name": "click", "version": "8.1.0"},
                                    "download_info": {"archive_info": {
                                        "hashes": {"sha256": digest}}}}]}, fh)

    log: list[str] = []
    report("x86_64", sha)
    assert setup_pins.check_hashes(plan, plan.pins(), log.append) == {"click": "ok"}
    report("x86_64", "b" * 64)  # the pins' own platform: another file is an error
    with pytest.raises(engine_setup.SetupError, match="do not match the release's hashes"):
        setup_pins.check_hashes(plan, plan.pins(), log.append)
    report("arm64", "b" * 64)  # another platform's wheel: reported, not refused
    assert setup_pins.check_hashes(plan, plan.pins(), log.append) == {"click": "other file"}
    assert "Not the release's files" in log[-1]

    result = engine_setup.SetupResult(plan.env_dir, installed={"click": "8.1.0", "numpy": "1.26",
                                                               "rich": None},
                                      pinned={"click": "8.1.0", "numpy": "1.24.2",
                                              "rich": "13.0"}, hashes={"click": "ok"})
    assert result.summary() == ["click 8.1.0 (as pinned, hash ok)",
                                "numpy 1.26 (differs from the pin 1.24.2)",
                                "rich - (missing, pinned 13.0)"]
