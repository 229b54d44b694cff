"""Find the geoddu engine and drive it, whatever way it is installed.

This module is plain Python (standard library only, no QGIS import) so that it can be read and
tested on its own. The Processing algorithm calls :func:`find_engine` and then
``engine.segment(...)``; every set-up below answers that one interface:

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
(the plugin passes its Processing settings). In ``auto`` mode the set-ups are tried in the order
above.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import shutil
import signal
import site
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable

ENV_MODE = "GEODDU_ENGINE"
ENV_PYTHON_ENV = "GEODDU_PYTHON_ENV"
ENV_CLI = "GEODDU_CLI"
MODES = ("auto", "import", "env", "cli")

#: Stages the engine reports, in order; used to turn per-stage progress into one percentage.
STAGES = ("encode", "communicate", "decode")

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]
LogFn = Callable[[str], None]


class EngineError(Exception):
    """The engine failed; ``str(error)`` is the engine's one-line message.

    ``details`` holds extra text (a traceback, the tail of stderr) for a log, or ``""``.
    """

    def __init__(self, message: str, details: str = ""):
        super().__init__(_one_line(message))
        self.details = details


class EngineCancelled(EngineError):
    """The run was cancelled between subimages; no output file was left behind."""


NO_POLYGONS = "this geoddu cannot write polygons (no `geoddu vectorize`); update geoddu"


class EngineNotFound(EngineError):
    """No way to run geoddu was found; the message says what was tried and how to fix it."""


def overall_percent(stage: str, done: int, total: int, stages=STAGES) -> float:
    """Map the engine's per-stage ``(stage, done, total)`` onto 0-100 over all ``stages``."""
    frac = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
    if stage in stages:
        return 100.0 * (stages.index(stage) + frac) / len(stages)
    return 100.0 * frac


class Engine:
    """One way of running geoddu. Subclasses implement :meth:`segment`."""

    kind = "?"

    def __init__(self, description: str):
        self.description = description

    def segment(
        self,
        src: str,
        dst: str,
        model: str,
        *,
        device: str | None = None,
        gpus: int | None = None,
        subimage_size: int | None = None,
        bands: list[int] | None = None,
        precision: str | None = None,
        probabilities: str | None = None,
        confidence: str | None = None,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        log: LogFn | None = None,
    ) -> str:
        """Segment ``src`` into the class map ``dst`` (overwritten); return the output path.

        Options left at None are the engine's defaults (``geoddu.segment``'s keywords).
        ``probabilities`` and ``confidence`` are optional extra output paths. Raises
        :class:`EngineCancelled` when ``cancel()`` turned True, :class:`EngineError` with the
        engine's one-line message on any failure.
        """
        raise NotImplementedError

    def vectorize(
        self,
        src: str,
        dst: str,
        *,
        min_area: float | None = None,
        simplify: float | None = None,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        log: LogFn | None = None,
    ) -> str:
        """Polygonise the class map ``src`` into the vector file ``dst`` (format by extension,
        overwritten); same errors as :meth:`segment`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


class InProcessEngine(Engine):
    """geoddu imported into this Python: calls ``geoddu.segment`` directly."""

    def __init__(self, module, kind: str, where: str):
        self.module = module
        self.kind = kind
        version = getattr(module, "__version__", "?")
        super().__init__(f"geoddu {version} imported in-process from {where}")

    def segment(self, src, dst, model, *, progress=None, cancel=None, log=None, **options):
        outputs = [dst] + [options[k] for k in ("probabilities", "confidence") if options.get(k)]
        self._call(self.module.segment, src, dst, model, outputs=outputs, progress=progress,
                   cancel=cancel, **options)
        return dst

    def vectorize(self, src, dst, *, progress=None, cancel=None, log=None, **options):
        function = getattr(self.module, "vectorize", None)
        if function is None:
            try:
                function = importlib.import_module(
                    self.module.__name__ + ".io.polygonize").vectorize
            except (ImportError, AttributeError) as exc:
                raise EngineError(NO_POLYGONS, f"{type(exc).__name__}: {exc}") from None
        self._call(function, src, dst, outputs=[dst], progress=progress, cancel=cancel,
                   **options)
        return dst

    def _call(self, function, *args, outputs, progress=None, cancel=None, **options):
        """Call the engine; on any failure remove what it left at (or beside) ``outputs``."""
        errors = importlib.import_module(self.module.__name__ + ".errors")
        kwargs = {key: value for key, value in options.items() if value not in (None, [], "")}
        kwargs["overwrite"] = True
        if progress is not None:
            kwargs["progress"] = progress
        if cancel is not None:
            kwargs["cancel"] = cancel
        guard = OutputGuard(outputs)
        try:
            try:
                function(*args, **kwargs)
            except errors.Cancelled as exc:
                raise EngineCancelled(str(exc) or "cancelled; no output was written") from None
            except errors.GeodduError as exc:
                raise EngineError(str(exc)) from None
            except Exception as exc:  # an engine bug: keep the traceback for the log
                raise EngineError(f"{type(exc).__name__}: {exc}",
                                  traceback.format_exc()) from None
            except BaseException:  # KeyboardInterrupt, SystemExit: clean up, then go on
                guard.discard()
                raise
            guard.check_written(outputs[0])
        except EngineError:
            guard.discard()
            raise


class CliEngine(Engine):
    """The ``geoddu`` command as a subprocess, reporting progress as JSON lines on stderr."""

    kind = "cli"

    #: Seconds to wait after the polite stop signal before killing a cancelled subprocess.
    stop_grace_s = 10.0
    killed = False

    def __init__(self, command: list[str], kind: str = "cli"):
        self.command = list(command)
        self.kind = kind
        super().__init__("geoddu command " + " ".join(self.command))

    def arguments(self, src, dst, model, *, device=None, gpus=None, subimage_size=None,
                  bands=None, precision=None, probabilities=None, confidence=None, aoi=None,
                  aoi_layer=None) -> list[str]:
        """The command line for one run (``geoddu segment ... --progress-format json``).

        A list of arguments, never a shell string: any file name works (spaces, quotes, ``;``,
        ``$``). Every option comes first, a path as ``--option=PATH`` so that even a value
        starting with ``-`` is read as a value, and the source comes after ``--`` so that a
        file named ``-scene.tif`` is not taken for an option.
        """
        args = [*self.command, "segment", f"--output={dst}", f"--model={model}", "--overwrite",
                "--progress-format=json"]
        if device:
            args.append(f"--device={device}")
        if gpus:
            args.append(f"--gpus={int(gpus)}")
        if subimage_size:
            args.append(f"--subimage-size={int(subimage_size)}")
        if bands:
            args.append("--bands=" + ",".join(str(int(b)) for b in bands))
        if precision:
            args.append(f"--precision={precision}")
        if probabilities:
            args.append(f"--probabilities={probabilities}")
        if confidence:
            args.append(f"--confidence={confidence}")
        if aoi:
            args.append(f"--aoi={aoi}")
        if aoi_layer:
            args.append(f"--aoi-layer={aoi_layer}")
        return [*args, "--", src]

    def segment(self, src, dst, model, *, progress=None, cancel=None, log=None, **options):
        args = self.arguments(src, dst, model, **options)
        outputs = [dst] + [options[k] for k in ("probabilities", "confidence") if options.get(k)]
        return self._run(args, outputs, progress, cancel, log)

    def vectorize(self, src, dst, *, min_area=None, simplify=None, progress=None, cancel=None,
                  log=None):
        # `geoddu vectorize` reports no progress lines: the run shows as one step.
        args = [*self.command, "vectorize", f"--output={dst}", "--overwrite", "--quiet"]
        if min_area:
            args.append(f"--min-area={float(min_area)!r}")
        if simplify:
            args.append(f"--simplify={float(simplify)!r}")
        args += ["--", src]
        try:
            return self._run(args, [dst], progress, cancel, log)
        except EngineError as exc:
            if "No such command" in str(exc):
                raise EngineError(NO_POLYGONS, exc.details) from None
            raise

    def _run(self, args, outputs, progress, cancel, log) -> str:
        """Run one geoddu command; relay its JSON progress; map failures to EngineError.

        A failed or cancelled run leaves nothing at ``outputs``: what the command wrote there,
        and the temporary files it left beside them, are removed.
        """
        guard = OutputGuard(outputs)
        popen_kw = {}
        if os.name == "nt":
            popen_kw["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP
                                         | getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            popen_kw["start_new_session"] = True  # so that our stop signal reaches only it
        try:
            # A list of arguments, no shell: file names are passed as they are.
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                    errors="replace", shell=False, **popen_kw)
        except OSError as exc:
            raise EngineError(f"cannot run {self.command[0]}: {exc.strerror or exc}") from None

        lines: queue.Queue = queue.Queue()
        readers = [threading.Thread(target=_pump, args=(stream, name, lines), daemon=True)
                   for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))]
        for reader in readers:
            reader.start()

        error_message = None
        output = None
        tail: list[str] = []
        open_streams = 2
        cancelled = False
        self.killed = False
        try:
            while open_streams:
                if cancel is not None and not cancelled and cancel():
                    cancelled = True
                    self._stop(proc)
                try:
                    name, line = lines.get(timeout=0.1)
                except queue.Empty:
                    continue
                if line is None:
                    open_streams -= 1
                    continue
                line = line.rstrip("\r\n")
                event = _parse_event(line) if name == "stderr" else None
                if event is None:
                    if line.strip():
                        tail = (tail + [line])[-20:]
                        if log is not None:
                            log(line)
                    continue
                kind = event.get("event")
                if kind == "progress" and progress is not None and not cancelled:
                    progress(str(event.get("stage", "")), int(event.get("done", 0)),
                             int(event.get("total", 0)))
                elif kind == "done":
                    output = event.get("output")
                elif kind == "error":
                    error_message = str(event.get("message") or "geoddu failed")
            rc = proc.wait()
        except BaseException:  # a callback failed, or this thread was interrupted
            if proc.poll() is None:
                proc.kill()
                self.killed = True
            proc.wait()
            guard.discard()
            raise
        finally:
            for reader in readers:
                reader.join(timeout=5)
            for stream in (proc.stdout, proc.stderr):
                stream.close()

        failed = rc != 0 or error_message is not None
        if cancelled or failed:
            guard.discard()
        if cancelled:
            raise EngineCancelled("cancelled; no output was written")
        if failed:
            message = (error_message or _error_line(tail)
                       or (f"geoddu was stopped by signal {-rc}" if rc < 0
                           else f"geoddu exited with status {rc}"))
            raise EngineError(message, "\n".join(tail))
        try:
            guard.check_written(outputs[0])
        except EngineError:
            guard.discard()
            raise
        return output or outputs[0]

    def _stop(self, proc: subprocess.Popen) -> None:
        """Ask the subprocess to stop (SIGINT / CTRL_BREAK), then kill it after a grace period."""
        try:
            if os.name == "nt":
                proc.send_signal(signal.CTRL_BREAK_EVENT)
            else:
                proc.send_signal(signal.SIGINT)
            proc.wait(timeout=self.stop_grace_s)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            proc.kill()
            self.killed = True  # it could not remove its temporary files itself


def _error_line(tail: list[str]) -> str:
    """The command's one-line error: its last ``Error: ...`` line, else its last line."""
    for line in reversed(tail):
        if line.startswith("Error: "):
            return line[len("Error: "):]
    return tail[-1] if tail else ""


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
        tried.append(f"import geoddu: {type(exc).__name__}: {_one_line(str(exc))}")
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
        name.endswith(".pth") for name in _listdir(env)
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
            return [candidate, "-m", "geoddu_cli"]
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


def _pump(stream, name: str, lines: queue.Queue) -> None:
    try:
        for line in iter(stream.readline, ""):
            lines.put((name, line))
    finally:
        lines.put((name, None))


def _parse_event(line: str) -> dict | None:
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def _file_state(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


class OutputGuard:
    """The state of a run's output paths before it, so that a failed run can leave nothing.

    :meth:`discard` removes every output path (and GDAL/SQLite side-car) that the run created
    or changed, and the engine's temporary files (``.NAME.geoddu-tmp-*``) beside them that
    appeared during the run: those of a subprocess that was killed, or that crashed, and could
    not remove its own. Files that were there before the run and that it did not touch stay.
    """

    SIDECARS = ("", ".aux.xml", ".ovr", ".msk", "-journal", "-wal", "-shm")

    def __init__(self, outputs):
        self.paths = [os.path.abspath(path) for path in outputs if path]
        self.before = {path + suffix: _file_state(path + suffix)
                       for path in self.paths for suffix in self.SIDECARS}
        self.temps_before = {path: set(_engine_temporaries(path)) for path in self.paths}

    def discard(self) -> None:
        for path, state in self.before.items():
            _remove_if_new(path, state)
        for path in self.paths:
            for entry in _engine_temporaries(path):
                if entry not in self.temps_before[path]:
                    _remove_path(entry)

    def check_written(self, path: str) -> None:
        """A run that reported success must have written ``path``; else it failed."""
        if not os.path.isfile(path) or _file_state(path) == self.before.get(
                os.path.abspath(path)):
            raise EngineError(f"{path}: geoddu reported success but did not write it")


def _remove_if_new(path: str, before) -> None:
    """Remove ``path`` if the run created or changed it (a failed run leaves no output)."""
    if _file_state(path) is not None and _file_state(path) != before:
        _remove_path(path)


def _engine_temporaries(path: str) -> list[str]:
    """The engine's temporary files (and folders) for output ``path``:
    ``.NAME.geoddu-tmp-*`` beside it."""
    folder, name = os.path.split(os.path.abspath(path))
    prefix = f".{name}.geoddu-tmp-"
    return [os.path.join(folder, entry) for entry in _listdir(folder)
            if entry.startswith(prefix)]


def _remove_path(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    except OSError:
        pass


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _one_line(message: str) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else ""
