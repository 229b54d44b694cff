"""Set up the geoddu engine: a Python environment with torch and geoddu, made for the plugin.

Plain Python (standard library only, no QGIS import), so it can be tested without QGIS. The
plugin's *Plugins > geoddu > Set up engine…* action runs :func:`run_setup` in a ``QgsTask`` and
then points the plugin's *Python environment* setting at the result (set-up ``env`` of
:mod:`discovery`).

Steps (each a subprocess; its output goes line by line to ``log``, ``progress(k, n, title)``
is called as step ``k`` of ``n`` starts):

1. ``python -m venv ENV`` with a base Python chosen by :func:`base_python`: QGIS's own
   interpreter when it can be found and run (``sys.executable`` on Linux, where QGIS embeds the
   system Python; ``python.exe`` / ``bin/python3`` under ``sys.prefix`` on Windows (OSGeo4W,
   the standalone installer) and macOS, where ``sys.executable`` is QGIS itself), else
   ``python3`` (``python``) on ``PATH``. With QGIS's own Python the environment is made with
   ``--system-site-packages`` and numpy pinned to the version QGIS runs, so that the plugin can
   import the engine into QGIS (the environment shares QGIS's numpy); with another Python the
   plugin runs the environment's ``geoddu`` command instead.
2. ``pip install torch==<TORCH_VERSION>`` from PyTorch's CPU index, or its CUDA index when
   ``nvidia-smi`` runs (an NVIDIA GPU with a driver); on macOS from the default registry. The
   requirement and the pip arguments are configurable (``GEODDU_SETUP_TORCH``,
   ``GEODDU_SETUP_TORCH_ARGS``; an empty value means the default registry).
3. ``pip install <geoddu wheel> -c <constraints>``: the wheel shipped in the plugin zip
   (``geoddu_qgis/wheels/geoddu-*.whl``, built by ``build_zip.py``), or, for a plugin run from a
   checkout, the checkout itself; its dependencies come from the default registry, at the exact
   versions pinned at release (:data:`CONSTRAINTS`, see :func:`find_constraints`).
4. A check that the environment imports geoddu and torch and has the ``geoddu`` command; it
   lists the installed version of every pinned package, which :func:`run_setup` logs and returns.

Hashes: the release file has ``--hash`` options, but pip cannot take them from a constraints
file (a hash there switches on hash-checking mode, which then demands hashes on the requirements
themselves, the unpinned geoddu wheel among them: every install fails), and torch has none (its
files come from PyTorch's index). So pip gets the pins without hashes and no ``--require-hashes``;
the set-up checks the hashes itself from pip's ``--report`` (pip 22.2 or newer): on the platform
the pins were made on a file with another hash fails the set-up, elsewhere it is only reported.

The environment is only *ready* once the marker file :data:`MARKER` is written, last. A failed or
cancelled set-up kills the running step, removes an environment folder it created, and never
leaves the marker; the settings are only changed after success.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .setup_pins import (
    Pin,
    base_version,
    canonical,
    check_hashes,
    parse_constraints,
    pip_has_report,
    write_pins,
)
from .setup_process import (
    INSTALLED_TAG,
    SetupError,
    child_env,
    no_window,
    quote,
    run_step,
)

TORCH_VERSION = "2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
MARKER = "geoddu-engine.json"
CONSTRAINTS = "constraints.txt"  # in the plugin folder; geoddu/assets/ in a checkout
PIN_FILE = "geoddu-constraints.txt"  # in the environment: the pins pip is given
REPORT_FILE = "geoddu-pip-report.json"  # in the environment: what step 3 downloaded
ENV_FOLDER = ("geoddu", "engine-env")  # under the QGIS profile folder

# Configuration through environment variables (the arguments of make_plan win over them).
ENV_DIR = "GEODDU_SETUP_DIR"
ENV_PYTHON = "GEODDU_SETUP_PYTHON"
ENV_TORCH = "GEODDU_SETUP_TORCH"
ENV_TORCH_ARGS = "GEODDU_SETUP_TORCH_ARGS"
ENV_CONSTRAINTS = "GEODDU_SETUP_CONSTRAINTS"  # another constraints file; empty: none

PIP_QUIET = ["--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
PLUGIN_DIR = Path(__file__).resolve().parent

Log = Callable[[str], None]
Progress = Callable[[int, int, str], None]


@dataclass
class SetupResult:
    """What :func:`run_setup` made: the folder, and each pinned package's installed version
    (None: not installed), pinned version, and whether its downloaded file's hash matched."""

    env_dir: str
    installed: dict = field(default_factory=dict)  # name -> version or None
    pinned: dict = field(default_factory=dict)  # name -> version, as pip was given them
    hashes: dict = field(default_factory=dict)  # name -> "ok", "other file", "no hash"

    def summary(self) -> list[str]:
        lines = []
        for name, version in sorted(self.installed.items(), key=lambda kv: kv[0].lower()):
            pin = self.pinned.get(name)
            if pin is None:
                state = "not pinned"
            elif version is None:
                state = f"missing, pinned {pin}"
            elif base_version(version) == base_version(pin):
                state = "as pinned"
            else:
                state = f"differs from the pin {pin}"
            check = self.hashes.get(name)
            lines.append(f"{name} {version or '-'} ({state}" + (f", hash {check})" if check
                                                                  else ")"))
        return lines


@dataclass
class SetupPlan:
    env_dir: str
    python: str  # the base interpreter that makes the environment
    torch_requirement: str
    torch_pip_args: list[str]
    geoddu_source: str  # a wheel, or a project folder
    extra_requirements: list[str] = field(default_factory=list)  # e.g. numpy==<QGIS's>
    system_site_packages: bool = False
    pip_args: list[str] = field(default_factory=list)  # for every pip install, e.g. --no-compile
    constraints: str | None = None  # the release pins (None: unpinned)

    def pins(self) -> list[Pin]:
        """The release pins pip is given: all but those of packages the plan names itself
        (numpy pinned to QGIS's, a torch requirement of its own), which win."""
        if not self.constraints:
            return []
        with open(self.constraints, encoding="utf-8") as fh:
            pins = parse_constraints(fh.read())
        own = {canonical(re.split(r"[\s<>=!~;\[@]", r.strip(), maxsplit=1)[0])
               for r in [self.torch_requirement, *self.extra_requirements]}
        return [p for p in pins if canonical(p.name) not in own]

    def own_pins(self) -> dict:
        """The plan's own ``name==version`` requirements (they replace the release's)."""
        out = {}
        for req in [self.torch_requirement, *self.extra_requirements]:
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)", req)
            if match:
                out[match.group(1)] = match.group(2)
        return out

    def pin_file(self) -> str:
        return os.path.join(self.env_dir, PIN_FILE)

    def report_file(self) -> str:
        return os.path.join(self.env_dir, REPORT_FILE)

    def env_python(self) -> str:
        if os.name == "nt":
            return os.path.join(self.env_dir, "Scripts", "python.exe")
        return os.path.join(self.env_dir, "bin", "python")

    def steps(self) -> list[tuple[str, list[str]]]:
        py = self.env_python()
        venv = [self.python, "-m", "venv"]
        if self.system_site_packages:
            venv.append("--system-site-packages")
        names = [p.name for p in self.pins()] if self.constraints else []
        check = ("import geoddu, torch; geoddu.segment; "
                 "print('geoddu', getattr(geoddu, '__version__', '?'), 'torch', torch.__version__,"
                 " 'cuda', torch.cuda.is_available()); "
                 "import importlib.metadata as md, json; v = {}\n"
                 f"for n in {names!r} + ['geoddu', 'torch', 'numpy']:\n"
                 "    try: v[n] = md.version(n)\n"
                 "    except md.PackageNotFoundError: v[n] = None\n"
                 f"print({INSTALLED_TAG!r} + json.dumps(v))")
        # Torch's own index is the only index of step 2, so its dependencies are not pinned
        # there (that index may lack the pinned releases); step 3 brings them to the pins.
        pinned = ["-c", self.pin_file()] if self.constraints else []
        return [
            ("Creating the Python environment", venv + [self.env_dir]),
            (f"Installing {self.torch_requirement}",
             [py, "-m", "pip", "install", *PIP_QUIET, *self.pip_args, self.torch_requirement,
              *self.extra_requirements, *self.torch_pip_args]),
            ("Installing geoddu and its dependencies",
             [py, "-m", "pip", "install", *PIP_QUIET, *self.pip_args, *pinned,
              self.geoddu_source, *self.extra_requirements]),
            ("Checking the environment", [py, "-c", check]),
        ]

    def describe(self) -> str:
        index = " ".join(self.torch_pip_args) or "the default package registry"
        lines = [
            f"Folder: {self.env_dir}",
            f"Python: {self.python}" + (" (with its packages)" if self.system_site_packages
                                        else ""),
            f"PyTorch: {self.torch_requirement} from {index}",
            f"geoddu: {self.geoddu_source}",
        ]
        if self.extra_requirements:
            lines.append("Pinned: " + " ".join(self.extra_requirements))
        lines.append(f"Release pins: {self.constraints}" if self.constraints
                     else "Release pins: none (the newest versions pip finds)")
        return "\n".join(lines)


# --- choosing what to install -------------------------------------------------------------------


def _probe(python: str) -> tuple[int, int] | None:
    """(major, minor) of ``python`` if it runs and can make environments, else None."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys, venv, ensurepip; print(*sys.version_info[:2])"],
            capture_output=True, text=True, timeout=60, env=child_env(),
            **no_window())
    except (OSError, subprocess.SubprocessError):
        return None
    try:
        major, minor = map(int, done.stdout.split())
    except ValueError:
        return None
    return (major, minor) if done.returncode == 0 else None


def _own_python_candidates() -> list[str]:
    """Paths where the Python that runs this code (QGIS's) may be, best first."""
    candidates = []
    exe = sys.executable or ""
    if os.path.basename(exe).lower().startswith("python"):
        candidates.append(exe)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for prefix in dict.fromkeys((sys.base_prefix, sys.prefix, sys.exec_prefix)):
        if os.name == "nt":
            names = ["python.exe", os.path.join("bin", "python.exe")]
        else:
            names = [os.path.join("bin", f"python{version}"), os.path.join("bin", "python3")]
        candidates += [os.path.join(prefix, name) for name in names]
    return [c for c in dict.fromkeys(candidates) if os.path.isfile(c)]


def base_python(environ: dict | None = None) -> tuple[str, bool]:
    """The interpreter to make the environment with, and whether it is QGIS's own Python.

    ``GEODDU_SETUP_PYTHON`` wins; then QGIS's interpreter (see the module docstring); then
    ``python3`` or ``python`` on ``PATH``. Raises :class:`SetupError` when none can make a
    virtual environment (Debian: ``apt install python3-venv``).
    """
    environ = os.environ if environ is None else environ
    own_version = tuple(sys.version_info[:2])
    explicit = environ.get(ENV_PYTHON)
    if explicit:
        version = _probe(explicit)
        if version is None:
            raise SetupError(f"{ENV_PYTHON}={explicit} cannot make a virtual environment")
        return explicit, False
    for candidate in _own_python_candidates():
        if _probe(candidate) == own_version:
            return candidate, True
    for name in ("python3", "python"):
        found = shutil.which(name)
        if found and _probe(found) is not None:
            return found, False
    raise SetupError(
        "no Python that can make a virtual environment was found (QGIS's Python, or python3 on "
        "PATH); on Debian/Ubuntu install the package python3-venv, or set " + ENV_PYTHON)


def has_nvidia_gpu() -> bool:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        return subprocess.run([exe, "-L"], capture_output=True, timeout=20,
                              **no_window()).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def default_torch_pip_args(gpu: bool | None = None) -> list[str]:
    """pip arguments that pick the torch build: CUDA with an NVIDIA GPU, else CPU."""
    if sys.platform == "darwin":
        return []  # the default registry's macOS wheels are the CPU/MPS build
    gpu = has_nvidia_gpu() if gpu is None else gpu
    return ["--index-url", CUDA_INDEX if gpu else CPU_INDEX]


def find_constraints(plugin_dir: Path = PLUGIN_DIR) -> str | None:
    """The release pins: ``constraints.txt`` in the plugin (the zip has it), else the
    checkout's ``geoddu/assets/constraints.txt`` for a plugin run from a checkout."""
    for candidate in (plugin_dir / CONSTRAINTS,
                      plugin_dir.parents[2] / "geoddu" / "assets" / CONSTRAINTS
                      if len(plugin_dir.parents) > 2 else None):
        if candidate is not None and candidate.is_file():
            return str(candidate)
    return None


def find_geoddu_source(plugin_dir: Path = PLUGIN_DIR) -> str:
    """The geoddu wheel shipped in the plugin, or the checkout the plugin runs from."""
    wheels = sorted((plugin_dir / "wheels").glob("geoddu-*.whl"))
    if wheels:
        return str(wheels[-1])
    checkout = plugin_dir.parents[2] if len(plugin_dir.parents) > 2 else None
    if checkout and (checkout / "pyproject.toml").is_file() and (checkout / "geoddu").is_dir():
        return str(checkout)
    raise SetupError(f"no geoddu wheel in {plugin_dir / 'wheels'}: install the plugin from the "
                     "zip that build_zip.py builds")


def default_env_dir(profile_dir: str | None) -> str:
    """``<QGIS profile>/geoddu/engine-env`` (``~/.geoddu/engine-env`` without a profile)."""
    if not profile_dir:
        return os.path.join(os.path.expanduser("~"), ".geoddu", ENV_FOLDER[1])
    return os.path.join(profile_dir, *ENV_FOLDER)


def make_plan(env_dir: str | None = None, profile_dir: str | None = None,
              python: str | None = None, torch_requirement: str | None = None,
              torch_pip_args: list[str] | None = None, geoddu_source: str | None = None,
              extra_requirements: list[str] | None = None,
              system_site_packages: bool | None = None, pip_args: list[str] | None = None,
              constraints: str | None = None, environ: dict | None = None) -> SetupPlan:
    """What :func:`run_setup` will do. Arguments win over the ``GEODDU_SETUP_*`` variables,
    which win over the defaults (see the module docstring)."""
    environ = os.environ if environ is None else environ
    env_dir = env_dir or environ.get(ENV_DIR) or default_env_dir(profile_dir)
    if python:
        own = False
    else:
        python, own = base_python(environ)
    if torch_requirement is None:
        torch_requirement = environ.get(ENV_TORCH) or f"torch=={TORCH_VERSION}"
    if torch_pip_args is None:
        if ENV_TORCH_ARGS in environ:
            torch_pip_args = shlex.split(environ[ENV_TORCH_ARGS], posix=os.name != "nt")
        else:
            torch_pip_args = default_torch_pip_args()
    if extra_requirements is None:
        extra_requirements = []
        numpy = sys.modules.get("numpy")
        if own and numpy is not None and getattr(numpy, "__version__", None):
            # The environment is imported into QGIS, which has this numpy loaded.
            extra_requirements.append(f"numpy=={numpy.__version__}")
    if constraints is None:
        constraints = (environ[ENV_CONSTRAINTS] if ENV_CONSTRAINTS in environ
                       else find_constraints())
    return SetupPlan(
        env_dir=os.path.abspath(os.path.expanduser(env_dir)), python=python,
        torch_requirement=torch_requirement, torch_pip_args=list(torch_pip_args),
        geoddu_source=geoddu_source or find_geoddu_source(),
        extra_requirements=list(extra_requirements),
        system_site_packages=own if system_site_packages is None else system_site_packages,
        pip_args=list(pip_args or []), constraints=constraints or None)


# --- running it ---------------------------------------------------------------------------------


def is_ready(env_dir: str) -> bool:
    """Whether ``env_dir`` is an environment this module completed."""
    return os.path.isfile(os.path.join(env_dir, MARKER))


def run_setup(plan: SetupPlan, log: Log = print, progress: Progress | None = None,
              is_cancelled: Callable[[], bool] | None = None,
              record: Callable[[str], None] | None = None) -> SetupResult:
    """Make the environment of ``plan``; return its folder and what was installed there (also
    logged, and kept in the marker file). ``record(folder)`` is called at the end (the plugin
    saves it in its settings there).

    Raises :class:`SetupCancelled` when ``is_cancelled()`` turns true (the running step is
    killed), :class:`SetupError` when a step fails. Either way an environment folder made by this
    call is removed, and a folder that existed is left without the ready marker.
    """
    env_dir = plan.env_dir
    if os.path.exists(env_dir) and os.listdir(env_dir) and not os.path.isfile(
            os.path.join(env_dir, "pyvenv.cfg")):
        raise SetupError(f"{env_dir} exists and is not a Python environment: choose another "
                         "folder")
    created = not os.path.exists(env_dir)
    marker = os.path.join(env_dir, MARKER)
    if os.path.exists(marker):
        os.remove(marker)  # not ready while it changes
    steps = plan.steps()
    pins = plan.pins()
    started = time.monotonic()
    result = SetupResult(env_dir, pinned={**{p.name: p.version for p in pins},
                                          **plan.own_pins()})
    try:
        for k, (title, argv) in enumerate(steps, 1):
            if progress:
                progress(k, len(steps), title)
            if k == 2 and plan.constraints:  # the environment exists now
                write_pins(plan.pin_file(), pins, plan.constraints)
            if k == 3 and plan.constraints and pip_has_report(argv[0]):
                argv = argv[:4] + ["--report", plan.report_file()] + argv[4:]
            log(f"[{k}/{len(steps)}] {title}: {' '.join(quote(a) for a in argv)}")
            output = run_step(argv, log, is_cancelled, title)
        installed = [line[len(INSTALLED_TAG):] for line in output
                     if line.startswith(INSTALLED_TAG)]
        result.installed = json.loads(installed[-1]) if installed else {}
        if plan.constraints:
            result.hashes = check_hashes(plan, pins, log)
        geoddu_cli = _env_command(env_dir)
        if geoddu_cli is None:
            raise SetupError(f"{env_dir} has no geoddu command after the installation")
        info = {"python": plan.python, "torch": plan.torch_requirement,
                "torch_pip_args": plan.torch_pip_args, "geoddu": plan.geoddu_source,
                "geoddu_cli": geoddu_cli, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "constraints": plan.constraints, "installed": result.installed,
                "pinned": result.pinned, "hashes": result.hashes}
        tmp = marker + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=1)
        os.replace(tmp, marker)
    except BaseException:
        if created:
            shutil.rmtree(env_dir, ignore_errors=True)
        raise
    log("Installed: " + "; ".join(result.summary()))
    log(f"Environment ready in {time.monotonic() - started:.0f} s: {env_dir}")
    if record:
        record(env_dir)
    return result


def _env_command(env_dir: str) -> str | None:
    for rel in (("bin", "geoddu"), ("Scripts", "geoddu.exe")):
        candidate = os.path.join(env_dir, *rel)
        if os.path.isfile(candidate):
            return candidate
    return None
