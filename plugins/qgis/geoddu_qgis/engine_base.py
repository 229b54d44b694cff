"""The engine contract the Processing algorithms program against: :class:`Engine`, its errors,
the stage names and the overall percentage. Plain Python (standard library only, no QGIS
import), so that it can be read and tested on its own.

A run is described once, as a plain dict of request fields: the keys are the field names of
``geoddu.engine.request.SegmentRequest`` (src, output, model, bands, subimage_size, device,
gpus, precision, probabilities, confidence, cog, overwrite, aoi, aoi_layer, aoi_where, vector,
vector_min_area, vector_simplify, ...) for a segment job and of ``geoddu.train.request.
TrainRequest`` (run_dir, dataset, data, arch, base_channels, epochs, batch_size, subimages, lr,
seed, device, patch_size, class_column, resume, overwrite, ...) for a training run; a field left
out is the engine's default. The plugin cannot import the request classes (geoddu may be only a
command, the ``cli`` route), so the dict is its side of the contract: the engine checks it,
in-process with ``from_dict``, through the command as JSON on ``--request -``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from .output_guard import OutputGuard

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]
LogFn = Callable[[str], None]
EpochFn = Callable[[dict], None]

#: Request fields that name an output file: a failed run leaves nothing at any of them.
OUTPUT_FIELDS = ("output", "probabilities", "confidence", "vector")

#: The choices of a segment request's ``resample`` (GDAL warp kernels: geoddu.io.warp's
#: WARP_RESAMPLINGS) and ``output_grid`` (geoddu.engine.request's OUTPUT_GRIDS); copies, as
#: the plugin runs where geoddu is not importable (tests/test_plugin_copies.py holds them equal).
RESAMPLINGS = ("nearest", "bilinear", "cubic", "cubicspline", "lanczos", "average", "rms",
               "mode", "min", "max", "med", "q1", "q3", "sum")
OUTPUT_GRIDS = ("scene", "model")


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


#: What an engine older than the plugin lacks, by job: the one-line error for it.
TOO_OLD = {
    "vectorize": "this geoddu cannot write polygons (no `geoddu vectorize`); update geoddu",
    "segment": "this geoddu is older than the plugin (no geoddu.engine.request); update geoddu",
    "train": "this geoddu is older than the plugin (no geoddu.train.request, no `geoddu train "
             "--request`); update geoddu",
    "hardware": "this geoddu cannot describe the hardware (no `geoddu info --hardware`); "
                "update geoddu",
    "sample": "this geoddu cannot draw accuracy samples (no `geoddu sample`); update geoddu",
    "assess": "this geoddu cannot assess accuracy (no `geoddu assess`); update geoddu",
    "card": "this geoddu cannot show model cards (no `geoddu card --text`); update geoddu",
}


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
    """One way of running geoddu. Subclasses implement :meth:`segment`, :meth:`vectorize` and
    :meth:`train`."""

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

    def vectorize(self, src: str, dst: str, *, min_area: float | None = None,
                  simplify: float | None = None, memory_limit: str | None = None,
                  progress: ProgressFn | None = None,
                  cancel: CancelFn | None = None, log: LogFn | None = None) -> str:
        """Polygonise the class map ``src`` into the vector file ``dst`` (format by extension,
        overwritten); same errors as :meth:`segment`."""
        raise NotImplementedError

    def train(self, request: dict, *, progress: ProgressFn | None = None,
              epoch: EpochFn | None = None, cancel: CancelFn | None = None,
              log: LogFn | None = None, start: EpochFn | None = None) -> dict:
        """Run the training ``request`` (a dict of ``TrainRequest`` fields, see the module
        docstring): what ``geoddu train --dataset folder`` does. Returns
        :func:`.training_run.train_summary` of its run folder.

        ``progress("train", done, total)`` follows the run batch by batch over all its epochs;
        ``epoch(row)`` gets each finished epoch: ``epoch``, ``epochs``, ``train_loss``,
        ``val_loss``, ``val_miou`` and ``best``; ``start(info)`` once the run starts, with its
        ``device`` and ``precision``. All come from the engine's training events,
        the same in-process and through the command. Raises :class:`EngineCancelled` when
        ``cancel()`` turned True (checked between batches: the checkpoints of the epochs done
        stay, RUN_DIR/last.pt resumes the run) and :class:`EngineError` on any failure.
        Nothing in the run folder is removed: the trainer replaces its checkpoints atomically,
        so it never holds a half-written one.
        """
        raise NotImplementedError

    def hardware(self, *, model: str | None = None, refresh: bool = False) -> dict:
        """What the machine the engine runs on has, and what each precision does there: the
        dict of ``geoddu.hardware_report.hardware_report`` (``geoddu info --hardware --json``),
        keys ``machine``, ``probes``, ``auto``, ``cache`` and, with ``model`` (a checkpoint),
        ``checkpoint``. Raises :class:`EngineError` with the engine's one-line message."""
        raise NotImplementedError

    def sample(self, src: str, dst: str, *, n: int | None = None,
               expected_ua: str | None = None, target_se: float | None = None,
               min_per_class: int = 0, seed: int | None = None,
               progress: ProgressFn | None = None, cancel: CancelFn | None = None,
               log: LogFn | None = None) -> dict:
        """Draw a stratified random sample of points from the class map ``src`` into the point
        layer ``dst`` (format by extension, overwritten): what ``geoddu sample`` does
        (``geoddu.accuracy.sample``). ``n`` points in total, or Olofsson's sample size from
        ``expected_ua`` (the text ``--expected-ua`` takes, e.g. ``"0.85,water=0.95"``) and
        ``target_se``; then ``min_per_class``; ``seed`` None draws one. Returns the object
        ``geoddu sample --json`` prints (``output``, ``points``, ``seed``, ``design``,
        ``n_requested``, ``strata``...). Same errors as :meth:`segment`."""
        raise NotImplementedError

    def assess(self, src: str, reference: str, *, class_column: str | None = None,
               layer: str | None = None, design: str = "stratified",
               report: str | None = None, json_path: str | None = None,
               csv_path: str | None = None, progress: ProgressFn | None = None,
               cancel: CancelFn | None = None, log: LogFn | None = None) -> dict:
        """Assess the class map ``src`` against ``reference`` (points or polygons with their
        class in ``class_column``, ``layer`` of a multi-layer file; or a raster on the map's
        grid): what ``geoddu assess`` does (``geoddu.accuracy.assess``), writing the HTML
        ``report``, the JSON and the CSV asked for (overwritten, all or none). Returns the
        assessment as ``geoddu assess --json`` writes it. Same errors as :meth:`segment`."""
        raise NotImplementedError

    def model_card(self, model: str, *, html: str | None = None,
                   log: LogFn | None = None) -> str:
        """The model card of the checkpoint ``model`` as plain ``field: value`` lines under a
        heading (``geoddu card --text``, ``geoddu.card.card_text``: the rows ``geoddu info
        -m`` shows), or the line saying it has none; with ``html``, also written there as a
        page (``geoddu.card.card_html``, overwritten). Raises :class:`EngineError`."""
        raise NotImplementedError

    @staticmethod
    def check_written(guard: OutputGuard, path: str) -> None:
        """A run that reported success must have written ``path``; else it failed."""
        if not guard.written(path):
            raise EngineError(f"{path}: geoddu reported success but did not write it")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


check_written = Engine.check_written


def one_line(message: str) -> str:
    """The first non-empty line of ``message``, stripped."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else ""
