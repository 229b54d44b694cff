"""`--ranks N` / `--gpus N`: run this same command again as N local ranks under torchrun.

Training on several devices means one process per device (gradients are summed across
processes; one process driving several GPUs is the deprecated `DataParallel` pattern), so on a
single host `geoddu train --gpus 4` is `torchrun --standalone --nproc-per-node 4 geoddu train`
spelled for the user. torchrun itself (its elastic agent) starts, watches and tears down the
ranks: a rank that dies ends the job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def strip_options(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """argv without the options `names` (each taking one value, `--x N` or `--x=N`)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in names:
            skip = True
            continue
        if any(arg.startswith(f"{n}=") for n in names):
            continue
        out.append(arg)
    return out


def command_args(command: str) -> list[str]:
    """The arguments given after `command` on this process's command line."""
    argv = sys.argv[1:]
    return argv[argv.index(command) + 1 :] if command in argv else argv


def run_local_ranks(nproc: int, command: str, args: Sequence[str]) -> int:
    """`geoddu COMMAND ARGS` as `nproc` ranks on this host; returns torchrun's exit status."""
    cmd = [*TORCHRUN, "--nproc-per-node", str(nproc), "-m", "geoddu.cli", command, *args]
    env = dict(os.environ)
    # Each rank is one of nproc processes on this host's cores: without this every rank would
    # start as many threads as there are cores.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    try:
        # sys.stderr, not descriptor 2: the CLI keeps native libraries' chatter on the latter.
        return subprocess.run(cmd, env=env, stderr=sys.stderr).returncode
    except KeyboardInterrupt:
        return 130


def end_now(signum: int, frame: object) -> None:
    """SIGTERM once the run is over (torchrun's agent stops the other ranks when one has
    failed). The outputs are renamed or removed by then, so there is nothing to unwind, and
    raising SystemExit would land in whatever runs at that moment: in the interpreter's exit
    hooks it printed "Exception ignored in atexit callback" and a traceback after the rank's
    one Error line. End at once instead, with SIGTERM's status."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a write this signal interrupted; nothing to save
            pass
    os._exit(128 + signum)
