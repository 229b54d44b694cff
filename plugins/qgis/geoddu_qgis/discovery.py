"""Find the geoddu engine, whatever way it is installed: :func:`find_engine`.

Plain Python (standard library only, no QGIS import). Every set-up below gives an
:class:`~.engine_bridge.Engine`, tried in this order in ``auto`` mode:

``import``
    ``import geoddu`` works in QGIS's own Python (geoddu and torch installed into it, or put on
    ``PYTHONPATH``). The engine runs in-process, in Processing's background thread.
``env``
    A configured Python environment (a virtualenv or conda env made with the *same* Python version
    as QGIS) holds geoddu. Its ``site-packages`` is put in front of ``sys.path`` and geoddu is
    imported from there. If that env cannot be imported into QGIS's Python (another Python
    version, say), its own ``geoddu`` command is run instead, as in ``cli``.
``cli``
    The ``geoddu`` command (the one on ``PATH``, or a configured one) runs as a subprocess with
    ``--progress-format json``; progress and errors come back as JSON lines on its stderr.

Configuration, strongest first: environment variables ``GEODDU_ENGINE`` (``auto``, ``import``,
``env`` or ``cli``), ``GEODDU_PYTHON_ENV`` and ``GEODDU_CLI``; then the values the caller passes
(the plugin passes its Processing settings).
"""

from __future__ import annotations

import importlib
import os
import shutil
import site
import sys

from .engine_bridge import CliEngine, Engine, EngineNotFound, InProcessEngine, one_line
from .output_guard import listdir

ENV_MODE = "GEODDU_ENGINE"
ENV_PYTHON_ENV = "GEODDU_PYTHON_ENV"
ENV_CLI = "GEODDU_CLI"
MODES = ("auto", "import", "env", "cli")


def find_engine(mode: str | None = None, python_env: str | None = None, cli: str | None = None,
                environ: dict | None = None) -> Engine:
    """Return the first usable engine for ``mode`` (see the module docstring).

    Environment variables override the arguments. Raises :class:`EngineNotFound` listing what
    was tried.
    """
    environ = os.environ if environ is None else environ
    mode = (environ.get(ENV_MODE) or mode or "auto").strip().lower()
    python_env = environ.get(ENV_PYTHON_ENV) or python_env or ""
    cli = environ.get(ENV_CLI) or cli or ""
    if mode not in MODES:
        raise EngineNotFound(f"unknown geoddu engine mode {mode!r}; use one of {', '.join(MODES)}")

    tried: list[str] = []
    if mode in ("auto", "import"):
        engine = _try_import(tried)
        if engine is not None:
            return engine
    if mode in ("auto", "env"):
        if python_env:
            engine = _try_env(python_env, tried)
            if engine is not None:
                return engine
        elif mode == "env":
            tried.append(f"no Python environment configured ({ENV_PYTHON_ENV} or the plugin "
                         "setting)")
    if mode in ("auto", "cli"):
        engine = _try_cli(cli, tried)
        if engine is not None:
            return engine
    raise EngineNotFound(
        "geoddu engine not found (" + "; ".join(tried) + "). Install geoddu into QGIS's Python, "
        f"or set a Python environment ({ENV_PYTHON_ENV}) or the geoddu command ({ENV_CLI}) in "
        "Settings > Options > Processing > Providers > geoddu."
    )


def _try_import(tried: list[str], kind: str = "import", where: str = "QGIS's Python"):
    try:
        module = importlib.import_module("geoddu")
        # geoddu imports its engine (torch, rasterio) lazily: touch it now so that a broken
        # dependency shows here, where another set-up can still be tried.
        segment = getattr(module, "segment", None)
    except Exception as exc:  # ImportError, or a broken dependency (numpy ABI, torch DLLs, ...)
        tried.append(f"import geoddu: {type(exc).__name__}: {one_line(str(exc))}")
        return None
    if not callable(segment):
        tried.append(f"import geoddu: {getattr(module, '__file__', '?')} has no segment()")
        return None
    return InProcessEngine(module, kind, where)


def _try_env(path: str, tried: list[str]):
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        tried.append(f"Python environment {path}: not a folder")
        return None
    site_packages = env_site_packages(path)
    if site_packages:
        added = _prepend_site_dir(site_packages)
        _forget_failed_import("geoddu")
        engine = _try_import(tried, "env", path)
        if engine is not None:
            return engine
        for entry in added:  # undo: the env is not importable here
            if entry in sys.path:
                sys.path.remove(entry)
        _forget_failed_import("geoddu")
    else:
        tried.append(f"Python environment {path}: no site-packages for Python "
                     f"{sys.version_info.major}.{sys.version_info.minor}")
    command = env_cli_command(path)
    if command:
        return CliEngine(command, kind="env")
    tried.append(f"Python environment {path}: no geoddu command in it")
    return None


def _try_cli(cli: str, tried: list[str]):
    if cli:
        exe = os.path.expanduser(cli)
        found = shutil.which(exe) or (exe if os.path.isfile(exe) else None)
        if found:
            return CliEngine([found])
        tried.append(f"geoddu command {cli}: not found")
        return None
    found = shutil.which("geoddu")
    if found:
        return CliEngine([found])
    tried.append("no geoddu command on PATH")
    return None


def env_site_packages(env: str) -> str | None:
    """The site-packages folder of ``env`` for *this* Python version, or None.

    ``env`` may be an environment's root (venv, virtualenv, conda) or a site-packages folder.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        os.path.join(env, "lib", version, "site-packages"),
        os.path.join(env, "lib64", version, "site-packages"),
        os.path.join(env, "Lib", "site-packages"),  # Windows venv / conda
        os.path.join(env, "local", "lib", version, "dist-packages"),
        os.path.join(env, "lib", version, "dist-packages"),
    ]
    for candidate in candidates:
        if os.path.isdir(candidate):
            if candidate.endswith(os.path.join("Lib", "site-packages")):
                # A Windows env does not name its Python version: trust it only if its python
                # DLL matches ours.
                dll = f"python{sys.version_info.major}{sys.version_info.minor}.dll"
                if not (os.path.exists(os.path.join(env, dll))
                        or os.path.exists(os.path.join(env, "Scripts", dll))):
                    continue
            return candidate
    if os.path.isdir(os.path.join(env, "geoddu")) or any(
        name.endswith(".pth") for name in listdir(env)
    ):
        return env  # the folder itself is a site-packages
    return None


def env_cli_command(env: str) -> list[str] | None:
    """How to run the geoddu CLI of environment ``env``, or None."""
    for rel in (("bin", "geoddu"), ("Scripts", "geoddu.exe"), ("geoddu.exe",)):
        candidate = os.path.join(env, *rel)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return [candidate]
    for rel in (("bin", "python"), ("bin", "python3"), ("Scripts", "python.exe"),
                ("python.exe",)):
        candidate = os.path.join(env, *rel)
        if os.path.isfile(candidate):
            return [candidate, "-m", "geoddu.cli"]
    return None


def _prepend_site_dir(site_dir: str) -> list[str]:
    """Put ``site_dir`` (and what its .pth files add) at the front of sys.path."""
    before = list(sys.path)
    site.addsitedir(site_dir)
    added = [entry for entry in sys.path if entry not in before]
    for entry in added:
        sys.path.remove(entry)
    sys.path[0:0] = added
    importlib.invalidate_caches()
    return added


def _forget_failed_import(name: str) -> None:
    module = sys.modules.get(name)
    if module is None:
        return
    try:
        usable = callable(getattr(module, "segment", None))
    except Exception:
        usable = False
    if not usable:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
