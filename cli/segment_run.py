"""Running `geoddu segment`: one scene or a batch, in this process or as a torchrun rank.

Everything a front does lives here and nowhere in the engine: joining torchrun's process group,
deciding which executor runs, progress (rich bars or JSON lines), error lines and exit
statuses. Under torchrun every rank runs this; only rank 0 prints (progress, errors every rank
shares, the summary); an error only one rank hit is printed by that rank.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from geoddu.errors import GeodduError
from geoddu.events import done_event, emit_json, error_event, progress_event

from .launch import end_now
from .progress import progress_reporter

ProgressFn = Callable[[str, int, int], None]


def run_segment(
    sources: Sequence[str],
    output: str | None,
    output_dir: str | None,
    options: dict[str, Any],
    *,
    skip_existing: bool,
    timeout_s: float,
    quiet: bool,
    progress_format: str,
) -> int:
    """`geoddu segment`; returns the exit status. `options` are the request's fields other than
    the source and the output (a batch makes one request per scene from them)."""
    # The display starts before torch is even imported: on a terminal the set-up (importing
    # torch, loading and tracing the model, opening the scene) shows as a status line from the
    # first second. Under torchrun only rank 0 draws; torchrun's RANK says which we are
    # before the process group exists.
    draw = progress_format == "rich" and not quiet and os.environ.get("RANK", "0") == "0"
    distributed = False
    error: GeodduError | None = None
    try:
        with progress_reporter(quiet=not draw) as bars:
            bars.setup("starting: importing torch")
            from geoddu.parallel.group import (
                agree,
                broadcast,
                init_from_env,
                launched_by_torchrun,
                rank_and_world,
            )

            distributed = launched_by_torchrun()
            if distributed:
                # Under torchrun a failing peer makes the agent SIGTERM us: unwind like Ctrl-C
                # so the output's temporary files are removed.
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
                bars.setup("starting: joining the other ranks")
                device = init_from_env(timeout_s)
                if options.get("device") in (None, "cuda"):
                    options["device"] = str(device)  # cuda:LOCAL_RANK on GPU hosts, else CPU
            rank, world = rank_and_world()
            json_lines = progress_format == "json" and rank == 0
            try:
                if world > 1:
                    # Rank 0 alone expands folders and lists: hosts need not see the same files.
                    jobs = many = failure = None
                    if rank == 0:
                        try:
                            jobs, many = _jobs(sources, output, output_dir, options)
                        except GeodduError as exc:
                            failure = exc
                    agree(failure, None)
                    # _jobs settles output_dir in the options (a batch's goes into its jobs,
                    # a mosaic's into its one request): every rank takes rank 0's, else the
                    # other ranks' requests would still carry a batch's --output-dir.
                    settled = ("output_dir" in options, options.get("output_dir"))
                    jobs, many, settled = broadcast((jobs, many, settled), None)
                    options.pop("output_dir", None)
                    if settled[0]:
                        options["output_dir"] = settled[1]
                else:
                    jobs, many = _jobs(sources, output, output_dir, options)
                bars.setup(_setup_text(jobs, many, options))
                progress: ProgressFn | None = bars if draw and rank == 0 else None
                if json_lines:
                    progress = _json_progress
                result = _run(jobs, many, options, skip_existing, timeout_s, progress)
            except GeodduError as exc:
                error = exc
        # The display is closed before any error or summary line is written below it.
        if error is not None:
            from geoddu.parallel.group import AgreedError

            if json_lines:
                emit_json(error_event(str(error)))
            if rank == 0 or not isinstance(error, AgreedError):
                prefix = f"rank {rank}: " if rank and world > 1 else ""
                message = " ".join(str(error).split())
                print(f"Error: {prefix}{message}", file=sys.stderr, flush=True)
            return 1
    finally:
        if distributed:
            signal.signal(signal.SIGTERM, end_now)
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    failed = list(getattr(result, "failed", []))
    if rank == 0:
        if json_lines:
            if hasattr(result, "scenes"):
                emit_json(done_event(result.summary(), scenes=[s.__dict__ for s in result.scenes]))
            else:
                emit_json(done_event(result.summary(), output=str(result.output)))
        elif not quiet:
            for s in getattr(result, "scenes", []):
                print(f"[{s.status}] {s.summary or s.output}", flush=True)
            print(result.summary(), flush=True)
        for s in failed:
            print(f"Error: {s.summary}", file=sys.stderr, flush=True)
    return 1 if failed else 0




def print_plans(
    sources: Sequence[str], output: str | None, output_dir: str | None,
    options: dict[str, Any], *, as_json: bool,
) -> int:
    """`geoddu segment --plan`: each scene's plan (geoddu.engine.planner), printed; under
    torchrun, rank 0 prints the ranks' plan. Reads headers only, writes nothing."""
    import json

    from geoddu.engine.planner import plan_job
    from geoddu.engine.request import SegmentRequest

    if os.environ.get("RANK", "0") != "0":
        return 0
    jobs, many = _jobs(sources, output, output_dir, options)
    world = int(os.environ.get("WORLD_SIZE", "1"))

    def plan(src: Any, output: str | None) -> Any:
        request = SegmentRequest(src=src, output=output, **options)
        if request.mosaic:
            from geoddu.engine.mosaic import plan_mosaic

            return plan_mosaic(request, world=world)
        return plan_job(request, world=world)

    plans = [plan(s, o) for s, o in jobs]
    if as_json:
        data = [p.to_dict() for p in plans]
        print(json.dumps(data if many else data[0], indent=1))
    else:
        print("\n\n".join(p.describe() for p in plans))
    return 0


def _json_progress(stage: str, done: int, total: int) -> None:
    emit_json(progress_event(stage, done, total))


def _setup_text(jobs: list[tuple[str, str]], many: bool, options: dict[str, Any]) -> str:
    """The status line while the first scene is opened and the model loaded (on the CPU the
    model is also traced, which takes a few seconds)."""
    model = options.get("model")
    src = jobs[0][0]
    what = (f"{len(jobs)} scenes" if many
            else f"{len(src)} inputs as one scene" if isinstance(src, tuple)
            else Path(src).name if src else "the band files")
    name = Path(model).name if isinstance(model, (str, os.PathLike)) else "the model"
    return f"setting up: opening {what}, loading and tracing {name}"


def _run(jobs, many: bool, options: dict[str, Any], skip_existing: bool, timeout_s: float,
         progress: ProgressFn | None) -> Any:
    from geoddu.engine.request import SegmentRequest
    from geoddu.parallel.group import rank_and_world

    if many:
        from geoddu.engine.batch import segment_batch

        return segment_batch(jobs, options, skip_existing=skip_existing, progress=progress,
                             timeout_s=timeout_s)
    request = SegmentRequest(src=jobs[0][0], output=jobs[0][1], **options)
    if rank_and_world()[1] > 1:
        from geoddu.engine.execute_ranks import execute_on_ranks

        return execute_on_ranks(request, progress=progress)
    from geoddu.engine.execute import execute

    return execute(request, progress=progress)


def _jobs(
    sources: Sequence[str], output: str | None, output_dir: str | None, options: dict[str, Any]
) -> tuple[list[tuple[str, str]], bool]:
    """(src, dst) pairs from the command line, and whether this is a batch (--output-dir)."""
    from geoddu.engine.batch import batch_outputs, expand_sources

    from_request = options.pop("output_dir", None)  # --request's, or the option's again
    output_dir = output_dir or from_request
    if options.get("mosaic"):
        # One scene made of every input (geoddu.engine.mosaic): one request, which checks
        # -o / --output-dir itself.
        options["output_dir"] = output_dir
        return [(None if None in sources else tuple(sources), output)], False
    if output_dir is None:
        # -o names one output for one raster: SRC is taken as given (a folder is an error).
        if output is None:
            raise GeodduError("give -o/--output for one scene or --output-dir for several")
        if len(sources) != 1:
            raise GeodduError(f"{len(sources)} inputs: use --output-dir for several scenes, or "
                              "--mosaic to take them as one")
        return [(sources[0], output)], False
    if None in sources:
        raise GeodduError("--band-files and --stac make one scene: give -o/--output, not "
                          "--output-dir")
    if output is not None:
        raise GeodduError("give either -o/--output (one scene) or --output-dir")
    if not Path(output_dir).is_dir():
        raise GeodduError(f"{output_dir}: output directory does not exist")
    for flag in ("probabilities", "confidence", "vector", "resume"):
        if options.get(flag):
            raise GeodduError(f"--{flag} needs one scene with -o")
    srcs = expand_sources(sources)
    return list(zip(srcs, map(str, batch_outputs(srcs, output_dir)), strict=True)), True
