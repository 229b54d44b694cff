"""The set-up's steps as subprocesses (geoddu_qgis.engine_setup): output line by line to the
log, cancel checked between lines, the step's whole process group killed on cancel or error,
no console window on Windows. Standard library only."""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import threading
from collections.abc import Callable

INSTALLED_TAG = "geoddu-installed: "  # the check step's line with the installed versions

Log = Callable[[str], None]


class SetupError(RuntimeError):
    """The set-up failed; the message says which step and why."""


class SetupCancelled(SetupError):
    """The set-up was cancelled."""


def run_step(argv: list[str], log: Log, is_cancelled: Callable[[], bool] | None,
              title: str) -> list[str]:
    """Run one step, its output to ``log``; return its output lines."""
    env = child_env()
    env["PYTHONUNBUFFERED"] = "1"
    kwargs: dict = no_window()
    if os.name == "nt":
        kwargs["creationflags"] = (kwargs.get("creationflags", 0)
                                   | subprocess.CREATE_NEW_PROCESS_GROUP)
    else:
        kwargs["start_new_session"] = True  # its own process group: cancel kills pip's children
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, text=True,
                                errors="replace", bufsize=1, **kwargs)
    except OSError as exc:
        raise SetupError(f"{title}: cannot run {argv[0]}: {exc}") from exc
    lines: queue.Queue = queue.Queue()

    def reader():
        for line in proc.stdout:
            lines.put(line.rstrip("\r\n"))
        lines.put(None)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    tail: list[str] = []
    output: list[str] = []
    try:
        while True:
            if is_cancelled and is_cancelled():
                raise SetupCancelled(f"cancelled while: {title}")
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.strip() and "is ignored: it is neither a file nor a directory" not in line:
                output.append(line)
                if line.startswith(INSTALLED_TAG):
                    continue  # logged as the summary
                log(line)
                tail = (tail + [line])[-5:]
        code = proc.wait()
    except BaseException:
        kill_step(proc)
        raise
    finally:
        thread.join(timeout=5)
        if proc.stdout:
            proc.stdout.close()
    if code != 0:
        raise SetupError(f"{title} failed (exit {code}): " + " | ".join(tail[-3:]))
    return output


def kill_step(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)],
                           capture_output=True, **no_window())
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def child_env() -> dict:
    """The environment for the subprocesses: without what ties a Python to QGIS's set-up or to
    an activated virtualenv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONSTARTUP",
                        "__PYVENV_LAUNCHER__")}
    return env


def no_window() -> dict:
    """Popen keywords that keep a console window from flashing up on Windows."""
    if os.name == "nt":
        return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {}


def quote(arg: str) -> str:
    return shlex.quote(arg) if os.name != "nt" else subprocess.list2cmdline([arg])
