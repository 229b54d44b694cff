"""Drive the geoddu engine, whatever way it is installed: one :class:`Engine` interface.

This module is plain Python (standard library only, no QGIS import) so that it can be read and
tested on its own. The Processing algorithms find an engine (:func:`.discovery.find_engine`),
then call ``engine.segment(request)``, ``engine.vectorize(...)`` (polygons) or
``engine.train(request)`` (a training run, see :data:`TRAIN_FIELDS`).

A run is described once, as a plain dict of request fields: the keys are the field names of
``geoddu.engine.request.SegmentRequest`` (src, output, model, bands, subimage_size, device,
gpus, precision, probabilities, confidence, cog, overwrite, aoi, aoi_layer, aoi_where, vector,
vector_min_area, vector_simplify, ...), and a field left out is the engine's default. The plugin
cannot import ``SegmentRequest`` itself (geoddu may be only a command, the ``cli`` route), so
the dict is its side of the contract: :class:`InProcessEngine` builds the request from it with
``SegmentRequest.from_dict``, :class:`CliEngine` sends it as JSON to ``geoddu segment --request
-`` on the command's stdin. No option is restated here, and no path is ever on a command line.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable

from .output_guard import OutputGuard
from .training_run import (  # noqa: F401 - LAST and train_summary are used by the algorithm
    LAST,
    TRAIN_FIELDS,
    EpochFn,
    number,
    parse_epoch_line,
    train_args,
    train_summary,
)

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]
LogFn = Callable[[str], None]

#: Request fields that name an output file: a failed run leaves nothing at any of them.
OUTPUT_FIELDS = ("output", "probabilities", "confidence", "vector")


def _stage_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The engine's stage names (``geoddu.events``), in the order a run goes through them."""
    # The plugin must also run where geoddu is not importable (the `cli` route: geoddu is only
    # a command), so it keeps its own copy of geoddu.events' names; geoddu's win when importable.
    own = (("encode", "communicate", "decode"), ("sieve", "polygonize", "simplify", "write"))
    loaded = set(sys.modules)
    try:
        from geoddu import events

        return tuple(events.SEGMENT_STAGES), tuple(events.VECTOR_STAGES)
    except Exception:  # not importable here, broken, or a geoddu older than geoddu.events
        return own
    finally:
        # Reading names must not pick the geoddu that find_engine() imports later (an env's).
        for name in set(sys.modules) - loaded:
            if name == "geoddu" or name.startswith("geoddu."):
                del sys.modules[name]


#: Stages a segment run reports, in order; used to turn per-stage progress into one percentage.
#: VECTOR_STAGES: the same for polygonising.
STAGES, VECTOR_STAGES = _stage_names()


def vector_stages(min_area=None, simplify=None) -> tuple[str, ...]:
    """The stages a vectorize run goes through: the sieve only with a minimum area, the
    simplification only with a tolerance."""
    skipped = {"sieve": not min_area, "simplify": not simplify}
    return tuple(stage for stage in VECTOR_STAGES if not skipped.get(stage, False))


class EngineError(Exception):
    """The engine failed; ``str(error)`` is the engine's one-line message.

    ``details`` holds extra text (a traceback, the tail of stderr) for a log, or ``""``.
    """

    def __init__(self, message: str, details: str = ""):
        super().__init__(one_line(message))
        self.details = details


class EngineCancelled(EngineError):
    """The run was cancelled between subimages; no output file was left behind."""


NO_POLYGONS = "this geoddu cannot write polygons (no `geoddu vectorize`); update geoddu"
NO_REQUESTS = "this geoddu is older than the plugin (no geoddu.engine.request); update geoddu"


class EngineNotFound(EngineError):
    """No way to run geoddu was found; the message says what was tried and how to fix it."""


class OverallPercent:
    """The engine's per-stage ``(stage, done, total)`` reports as one 0-100 figure over
    ``stages``: the mean of each stage's own fraction done. Stages may interleave (a one-pass
    segment run encodes, communicates and decodes row by row), so the figure never goes back;
    for stages run one after another it is the stage's position plus its fraction."""

    def __init__(self, stages=STAGES) -> None:
        self.stages = tuple(stages)
        self.fractions: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> float:
        frac = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
        if stage not in self.stages:
            return 100.0 * frac
        self.fractions[stage] = max(self.fractions.get(stage, 0.0), frac)
        # A stage reported after a later one has started is done in a run that goes in order.
        for earlier in self.stages[: self.stages.index(stage)]:
            if earlier not in self.fractions:
                self.fractions[earlier] = 1.0
        return 100.0 * sum(self.fractions.values()) / len(self.stages)


def request_outputs(request: dict) -> list[str]:
    """The output paths a request names, the class map first."""
    return [request[key] for key in OUTPUT_FIELDS if request.get(key)]


class Engine:
    """One way of running geoddu. Subclasses implement :meth:`segment` and :meth:`vectorize`."""

    kind = "?"

    def __init__(self, description: str):
        self.description = description

    def segment(self, request: dict, *, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None, log: LogFn | None = None) -> str:
        """Run the segment job ``request`` (a dict of request fields, see the module
        docstring); return the class map's path.

        Raises :class:`EngineCancelled` when ``cancel()`` turned True, :class:`EngineError`
        with the engine's one-line message on any failure; either way nothing is left at the
        request's outputs (``output``, ``probabilities``, ``confidence``, ``vector``).
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

    def train(self, request: dict, *, progress: ProgressFn | None = None,
              epoch: EpochFn | None = None, cancel: CancelFn | None = None,
              log: LogFn | None = None) -> dict:
        """Run the training ``request`` (a dict of :data:`TRAIN_FIELDS`): what ``geoddu train
        --dataset folder`` does. Returns :func:`train_summary` of its run folder.

        ``progress("train", done, total)`` follows the run (batches in-process, epochs through
        the command); ``epoch(row)`` gets each finished epoch: ``epoch``, ``epochs``,
        ``train_loss``, ``val_loss``, ``val_miou`` and ``best``. Raises
        :class:`EngineCancelled` when ``cancel()`` turned True (checked between batches: the
        checkpoints of the epochs done stay, RUN_DIR/last.pt resumes the run) and
        :class:`EngineError` on any failure. Nothing in the run folder is removed: the trainer
        replaces its checkpoints atomically, so it never holds a half-written one.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


class InProcessEngine(Engine):
    """geoddu imported into this Python: builds its ``SegmentRequest`` and executes it here."""

    def __init__(self, module, kind: str, where: str):
        self.module = module
        self.kind = kind
        version = getattr(module, "__version__", "?")
        super().__init__(f"geoddu {version} imported in-process from {where}")

    def segment(self, request, *, progress=None, cancel=None, log=None):
        name = self.module.__name__ + ".engine.request"

        def run():
            try:
                request_type = importlib.import_module(name).SegmentRequest
            except ModuleNotFoundError as exc:
                if exc.name != name:
                    raise
                raise EngineError(NO_REQUESTS, f"{type(exc).__name__}: {exc}") from None
            job = request_type.from_dict(request)
            execute = importlib.import_module(self.module.__name__ + ".engine.execute").execute
            execute(job, progress=progress, cancel=cancel)

        self._call(run, request_outputs(request))
        return request["output"]

    def vectorize(self, src, dst, *, min_area=None, simplify=None, progress=None, cancel=None,
                  log=None):
        function = getattr(self.module, "vectorize", None)
        if function is None:
            try:
                function = importlib.import_module(
                    self.module.__name__ + ".io.polygonize").vectorize
            except (ImportError, AttributeError) as exc:
                raise EngineError(NO_POLYGONS, f"{type(exc).__name__}: {exc}") from None
        options = {key: value for key, value in
                   (("min_area", min_area), ("simplify", simplify), ("progress", progress),
                    ("cancel", cancel)) if value is not None}
        self._call(lambda: function(src, dst, overwrite=True, **options), [dst])
        return dst

    def train(self, request, *, progress=None, epoch=None, cancel=None, log=None):
        _checked_train_args(request)  # the same checks as through the command
        package = self.module.__name__
        state = {"epochs": 0, "batches": 1, "start": 0}

        def run():
            trainer = importlib.import_module(package + ".train")
            cancelled = importlib.import_module(package + ".errors").Cancelled

            def check() -> None:
                if cancel is not None and cancel():
                    raise cancelled("cancelled")

            def on_start(info):
                state.update(epochs=int(info["epochs"]), batches=max(int(info["batches"]), 1),
                             start=int(info["start_epoch"]))
                if progress is not None:
                    progress("train", state["start"] * state["batches"],
                             state["epochs"] * state["batches"])
                check()

            def on_batch(number, b, n, loss, lr):
                if progress is not None:
                    progress("train", (number - 1) * state["batches"] + b,
                             state["epochs"] * state["batches"])
                check()

            def on_validate(done, total):
                check()

            def on_epoch(row):
                if epoch is not None:
                    epoch({"epoch": row["epoch"], "epochs": state["epochs"],
                           "train_loss": number(row.get("train_loss")),
                           "val_loss": number(row.get("val_loss")),
                           "val_miou": number(row.get("val_miou")),
                           "best": bool(row.get("best"))})

            callbacks = trainer.Callbacks(on_start=on_start, on_batch=on_batch,
                                          on_validate=on_validate, on_epoch=on_epoch)
            if request.get("resume"):
                trainer.resume_training(
                    request["run_dir"], data=request.get("data"), epochs=request.get("epochs"),
                    device=request.get("device"), callbacks=callbacks)
                return
            dataset = request.get("dataset") or "folder"
            # What `geoddu train` (cli/train.py) does with the same options.
            config = trainer.preset(
                dataset, subimages=trainer.parse_grid(request.get("subimages")),
                **{key: request.get(key) for key in ("epochs", "batch_size", "lr", "seed",
                                                     "device")})
            model_options = {key: request[key] for key in ("base_channels",)
                             if request.get(key) is not None}
            dataset_options = {key: request.get(key) for key in
                               ("patch_size", "seed", "val_fraction", "classes_file",
                                "class_column")}
            dataset_options["seed"] = dataset_options["seed"] or 0
            trainer.start_training(
                dataset, request["data"], request["run_dir"], config, arch=request.get("arch"),
                model_options=model_options,
                dataset_options={k: v for k, v in dataset_options.items() if v is not None},
                overwrite=bool(request.get("overwrite")), callbacks=callbacks)

        self._call(run, [])
        return train_summary(request["run_dir"])

    def _call(self, run, outputs):
        """Call ``run()``; on any failure remove what it left at (or beside) ``outputs``."""
        errors = importlib.import_module(self.module.__name__ + ".errors")
        guard = OutputGuard(outputs)
        try:
            try:
                run()
            except EngineError:
                raise
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
            if outputs:
                check_written(guard, outputs[0])
        except EngineError:
            guard.discard()
            raise


def check_written(guard: OutputGuard, path: str) -> None:
    """A run that reported success must have written ``path``; else it failed."""
    if not guard.written(path):
        raise EngineError(f"{path}: geoddu reported success but did not write it")


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

    def segment(self, request, *, progress=None, cancel=None, log=None):
        # The whole request goes to the command's stdin as JSON: every option by its request
        # field name, and any file name as it is (no path on the command line at all).
        args = [*self.command, "segment", "--request", "-", "--progress-format=json"]
        return self._run(args, request_outputs(request), progress, cancel, log,
                         stdin_text=json.dumps(request))

    def vectorize(self, src, dst, *, min_area=None, simplify=None, progress=None, cancel=None,
                  log=None):
        # `geoddu vectorize` reports no progress lines: the run shows as one step. Every option
        # comes first, the output as --output=PATH, and the source after `--`, so that names
        # starting with `-` are read as values.
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

    def train(self, request, *, progress=None, epoch=None, cancel=None, log=None):
        # `geoddu train` has no JSON progress: its plain epoch lines (printed when not --quiet)
        # are read instead, and the run advances one step per epoch. COLUMNS keeps rich from
        # wrapping them.
        args = [*self.command, "train", *_checked_train_args(request)]

        def on_line(line: str) -> bool:
            row = parse_epoch_line(line)
            if row is None:
                return False
            if progress is not None:
                progress("train", row["epoch"], row["epochs"])
            if epoch is not None:
                epoch(row)
            return True

        self._run(args, [], progress, cancel, log, on_line=on_line,
                  env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
        return train_summary(request["run_dir"])

    def _run(self, args, outputs, progress, cancel, log, stdin_text=None, env=None,
             on_line=None) -> str | None:
        """Run one geoddu command (``stdin_text`` on its stdin); relay its JSON progress; map
        failures to EngineError.

        A failed or cancelled run leaves nothing at ``outputs``: what the command wrote there,
        and the temporary files it left beside them, are removed. ``on_line(line)`` sees each
        plain (non-JSON) line of stderr first; True: it was handled (not logged). ``env``: the
        command's environment (default: this process's).
        """
        guard = OutputGuard(outputs)
        popen_kw = {}
        if os.name == "nt":
            popen_kw["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP
                                         | getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            popen_kw["start_new_session"] = True  # so that our stop signal reaches only it
        try:
            # A list of arguments, no shell: any file name is passed as it is.
            stdin = subprocess.DEVNULL if stdin_text is None else subprocess.PIPE
            proc = subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                    errors="replace", shell=False, env=env, **popen_kw)
        except OSError as exc:
            raise EngineError(f"cannot run {self.command[0]}: {exc.strerror or exc}") from None

        lines: queue.Queue = queue.Queue()
        readers = [threading.Thread(target=_pump, args=(stream, name, lines), daemon=True)
                   for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))]
        for reader in readers:
            reader.start()
        if stdin_text is not None:
            _send(proc, stdin_text)

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
                    if on_line is not None and name == "stderr" and not cancelled \
                            and on_line(line):
                        continue
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
        if not outputs:
            return output
        try:
            check_written(guard, outputs[0])
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


def _send(proc: subprocess.Popen, text: str) -> None:
    """Write ``text`` to the command's stdin and close it (a command that has already gone
    shows as a failed run, from its exit status)."""
    try:
        proc.stdin.write(text)
        proc.stdin.close()
    except OSError:  # BrokenPipeError: it exited without reading
        try:
            proc.stdin.close()
        except OSError:
            pass


def _checked_train_args(request: dict) -> list[str]:
    try:
        return train_args(request)
    except ValueError as exc:
        raise EngineError(str(exc)) from None


def one_line(message: str) -> str:
    """The first non-empty line of ``message``, stripped."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else ""
