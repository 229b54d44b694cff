"""The ``geoddu`` command as a subprocess (set-up ``cli``, or an ``env`` QGIS cannot import).

A segment job or a training run goes to the command's stdin as JSON (``--request -``), every
option by its request field name and any file name as it is: no path is on its command line.
The smaller commands (vectorize, sample, assess, card) take each path as one ``--name=PATH``
argument and the input after ``--``, so that a name starting with ``-`` stays a value; sample,
assess and card print their result on stdout (JSON, or the card's text).
The command answers with JSON progress lines on stderr (``geoddu.events``); the plugin reads
those alone, never the command's human text, but for the last ``Error: ...`` line of a command
that died before it could write an ``error`` event. Plain Python (standard library only).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading

from .engine_base import TOO_OLD, Engine, EngineCancelled, EngineError, request_outputs
from .output_guard import OutputGuard
from .setup_process import no_window
from .training_run import TrainEvents, train_summary

# --progress-format is the name every geoddu with JSON progress knows for segment (--progress
# came with `geoddu train --request`).
SEGMENT_ARGS = ("segment", "--request", "-", "--progress-format=json")
TRAIN_ARGS = ("train", "--request", "-", "--progress=json")
HARDWARE_ARGS = ("info", "--hardware", "--json")
#: The probe takes a second or two, timing a checkpoint a few more; a hung command is stopped.
HARDWARE_TIMEOUT_S = 600


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
        return self._run([*self.command, *SEGMENT_ARGS], request_outputs(request),
                         _progress_events(progress), cancel, log, stdin_text=json.dumps(request))

    def vectorize(self, src, dst, *, min_area=None, simplify=None, memory_limit=None,
                  progress=None, cancel=None, log=None):
        # `geoddu vectorize` reports no progress lines: the run shows as one step. Every option
        # comes first, the output as --output=PATH, and the source after `--`, so that names
        # starting with `-` are read as values.
        args = [*self.command, "vectorize", f"--output={dst}", "--overwrite", "--quiet"]
        if min_area:
            args.append(f"--min-area={float(min_area)!r}")
        if simplify:
            args.append(f"--simplify={float(simplify)!r}")
        if memory_limit:
            args.append(f"--memory-limit={memory_limit}")
        args += ["--", src]
        try:
            return self._run(args, [dst], None, cancel, log)
        except EngineError as exc:
            if "No such command" in str(exc):
                raise EngineError(TOO_OLD["vectorize"], exc.details) from None
            raise

    def train(self, request, *, progress=None, epoch=None, cancel=None, log=None, start=None):
        try:
            self._run([*self.command, *TRAIN_ARGS], [], TrainEvents(progress, epoch, start=start),
                      cancel, log, stdin_text=json.dumps(request))
        except EngineError as exc:
            if "No such option: --request" in str(exc):  # click's words, in an older geoddu
                raise EngineError(TOO_OLD["train"], exc.details) from None
            raise
        return train_summary(request["run_dir"])

    def hardware(self, *, model=None, refresh=False):
        # Options only, the checkpoint as --model=PATH: a name starting with `-` stays a value.
        args = [*self.command, *HARDWARE_ARGS]
        if model:
            args.append(f"--model={model}")
        if refresh:
            args.append("--refresh")
        try:
            done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  encoding="utf-8", errors="replace", timeout=HARDWARE_TIMEOUT_S,
                                  **no_window())
        except OSError as exc:
            raise EngineError(f"cannot run {self.command[0]}: {exc.strerror or exc}") from None
        except subprocess.TimeoutExpired:
            raise EngineError(f"geoddu info --hardware took over {HARDWARE_TIMEOUT_S} s; "
                              "stopped") from None
        tail = [line for line in done.stderr.splitlines() if line.strip()][-20:]
        if done.returncode != 0:
            message = _error_line(tail) or f"geoddu exited with status {done.returncode}"
            if "No such option: --hardware" in message:
                raise EngineError(TOO_OLD["hardware"], done.stderr) from None
            raise EngineError(message, done.stderr)
        try:
            report = json.loads(done.stdout)
        except ValueError:
            raise EngineError("geoddu info --hardware did not print JSON",
                              done.stdout[-2000:] + done.stderr) from None
        if not isinstance(report, dict) or "machine" not in report:
            raise EngineError("geoddu info --hardware printed no machine report", done.stdout)
        return report

    def sample(self, src, dst, *, n=None, expected_ua=None, target_se=None, min_per_class=0,
               seed=None, progress=None, cancel=None, log=None):
        # `geoddu sample --json` reports no progress lines: the run shows as one step. Options
        # as --name=VALUE and the map after `--`, so that names starting with `-` stay values.
        args = [*self.command, "sample", f"--output={dst}", "--overwrite", "--json",
                f"--min-per-class={int(min_per_class)}"]
        if n is not None:
            args.append(f"--n={int(n)}")
        if expected_ua is not None:
            args.append(f"--expected-ua={expected_ua}")
            if target_se is not None:
                args.append(f"--target-se={float(target_se)!r}")
        if seed is not None:
            args.append(f"--seed={int(seed)}")
        printed: list[str] = []
        self._run_newer("sample", [*args, "--", src], [dst], cancel, log, printed)
        return _printed_json(printed, "geoddu sample --json")

    def assess(self, src, reference, *, class_column=None, layer=None, design="stratified",
               report=None, json_path=None, csv_path=None, progress=None, cancel=None,
               log=None):
        args = [*self.command, "assess", f"--reference={reference}", f"--design={design}",
                "--overwrite"]
        for option, value in (("class-column", class_column), ("layer", layer),
                              ("report", report), ("csv", csv_path)):
            if value:
                args.append(f"--{option}={value}")
        # The figures come back as the JSON file asked for, else as JSON on stdout.
        args += [f"--json={json_path}", "--quiet"] if json_path else ["--json=-"]
        outputs = [path for path in (report, json_path, csv_path) if path]
        printed: list[str] = []
        self._run_newer("assess", [*args, "--", src], outputs, cancel, log, printed)
        if not json_path:
            return _printed_json(printed, "geoddu assess --json")
        try:
            with open(json_path, encoding="utf-8") as stream:
                return json.load(stream)
        except (OSError, ValueError) as exc:
            raise EngineError(f"{json_path}: geoddu assess wrote no readable JSON ({exc})"
                              ) from None

    def model_card(self, model, *, html=None, log=None):
        args = [*self.command, "card", f"--model={model}", "--text"]
        if html:
            args += [f"--html={html}", "--overwrite"]
        printed: list[str] = []
        self._run_newer("card", args, [html] if html else [], None, log, printed)
        return "\n".join(printed).strip()

    def _run_newer(self, job, args, outputs, cancel, log, printed) -> None:
        """Run a command newer than ``segment``, its stdout into ``printed``; a geoddu that
        does not know it (click's "No such command/option") is TOO_OLD[job]."""
        try:
            self._run(args, outputs, None, cancel, log, stdout=printed)
        except EngineError as exc:
            if "No such command" in str(exc) or "No such option" in str(exc):
                raise EngineError(TOO_OLD[job], exc.details) from None
            raise

    def _run(self, args, outputs, on_event, cancel, log, stdin_text=None,
             stdout: list[str] | None = None) -> str | None:
        """Run one geoddu command (``stdin_text`` on its stdin); hand its JSON events to
        ``on_event``; map failures to EngineError. ``stdout``: a list that gets the lines the
        command prints on stdout (its result), instead of the log.

        A failed or cancelled run leaves nothing at ``outputs``: what the command wrote there,
        and the temporary files it left beside them, are removed.
        """
        guard = OutputGuard(outputs)
        proc = self._start(args, stdin_text)
        lines: queue.Queue = queue.Queue()
        readers = [threading.Thread(target=_pump, args=(stream, name, lines), daemon=True)
                   for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))]
        for reader in readers:
            reader.start()
        if stdin_text is not None:
            _send(proc, stdin_text)
        self.killed = False
        try:
            outcome = self._follow(proc, lines, on_event, cancel, log, stdout)
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

        rc, cancelled, error_message, output, tail = outcome
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
            self.check_written(guard, outputs[0])
        except EngineError:
            guard.discard()
            raise
        return output or outputs[0]

    def _start(self, args, stdin_text) -> subprocess.Popen:
        popen_kw = {}
        if os.name == "nt":
            popen_kw["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP
                                         | getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            popen_kw["start_new_session"] = True  # so that our stop signal reaches only it
        try:
            # A list of arguments, no shell: any file name is passed as it is.
            stdin = subprocess.DEVNULL if stdin_text is None else subprocess.PIPE
            return subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                    errors="replace", shell=False, **popen_kw)
        except OSError as exc:
            raise EngineError(f"cannot run {self.command[0]}: {exc.strerror or exc}") from None

    def _follow(self, proc, lines: queue.Queue, on_event, cancel, log,
                stdout: list[str] | None = None) -> tuple:
        """Read the command's lines until both streams end: events to ``on_event`` (until a
        cancel), stdout to ``stdout`` when given, other lines to ``log``. Returns (exit
        status, cancelled, the error event's message, the done event's output, the last 20
        other lines)."""
        error_message = output = None
        tail: list[str] = []
        open_streams = 2
        cancelled = False
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
            if stdout is not None and name == "stdout":
                stdout.append(line)
                continue
            event = _parse_event(line) if name == "stderr" else None
            if event is None:
                if line.strip():
                    tail = (tail + [line])[-20:]
                    if log is not None:
                        log(line)
            elif event.get("event") == "error":
                error_message = str(event.get("message") or "geoddu failed")
            elif event.get("event") == "done":
                output = event.get("output")
            elif on_event is not None and not cancelled:
                on_event(event)
        return proc.wait(), cancelled, error_message, output, tail

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


def _progress_events(progress):
    """``progress(stage, done, total)`` fed by the command's ``progress`` events."""
    if progress is None:
        return None

    def on_event(event: dict) -> None:
        if event.get("event") == "progress":
            progress(str(event.get("stage", "")), int(event.get("done", 0)),
                     int(event.get("total", 0)))

    return on_event


def _printed_json(printed: list[str], what: str) -> dict:
    """The JSON object a command printed on stdout."""
    text = "\n".join(printed)
    try:
        value = json.loads(text)
    except ValueError:
        raise EngineError(f"{what} did not print JSON", text[-2000:]) from None
    if not isinstance(value, dict):
        raise EngineError(f"{what} printed no JSON object", text[-2000:])
    return value


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
