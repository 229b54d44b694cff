"""The geoddu engine imported into this Python (set-ups ``import`` and ``env``): requests built
with geoddu's own classes and run here, in Processing's background thread.

Plain Python (standard library only, no QGIS import).
"""

from __future__ import annotations

import importlib
import json
import traceback

from .engine_base import TOO_OLD, Engine, EngineCancelled, EngineError, request_outputs
from .output_guard import OutputGuard
from .training_run import TrainEvents, train_summary


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
            job = self._import(name, TOO_OLD["segment"]).SegmentRequest.from_dict(request)
            execute = importlib.import_module(self.module.__name__ + ".engine.execute").execute
            execute(job, progress=progress, cancel=cancel)

        self._call(run, request_outputs(request))
        # A mosaic's per-tile maps (output_dir) stand in for the class map.
        return request.get("output") or request.get("output_dir")

    def vectorize(self, src, dst, *, min_area=None, simplify=None, memory_limit=None,
                  progress=None, cancel=None, log=None):
        function = None
        # geoddu.vectorize (the package), or geoddu.io.polygonize in geoddu before 0.2
        for where in (".vectorize", ".io.polygonize"):
            try:
                function = importlib.import_module(self.module.__name__ + where).vectorize
                break
            except (ImportError, AttributeError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
        if function is None:
            raise EngineError(TOO_OLD["vectorize"], problem)
        options = {key: value for key, value in
                   (("min_area", min_area), ("simplify", simplify), ("progress", progress),
                    ("cancel", cancel), ("memory_limit", memory_limit)) if value is not None}
        self._call(lambda: function(src, dst, overwrite=True, **options), [dst])
        return dst

    def train(self, request, *, progress=None, epoch=None, cancel=None, log=None, start=None):
        package = self.module.__name__

        def run():
            train_model = self._import(package + ".train.api", TOO_OLD["train"]).train_model
            request_type = self._import(package + ".train.request", TOO_OLD["train"])
            cancelled = importlib.import_module(package + ".errors").Cancelled

            def check() -> None:
                if cancel is not None and cancel():
                    raise cancelled("cancelled")

            # The same events, and the same handling of them, as the command's JSON lines.
            train_model(request_type.TrainRequest.from_dict(request),
                        on_event=TrainEvents(progress, epoch, check, start))

        self._call(run, [])
        return train_summary(request["run_dir"])

    def hardware(self, *, model=None, refresh=False):
        name = self.module.__name__ + ".hardware_report"
        found = {}

        def run():
            report = self._import(name, TOO_OLD["hardware"]).hardware_report
            found["report"] = report(model=model, refresh=refresh)

        self._call(run, [])
        return found["report"]

    def sample(self, src, dst, *, n=None, expected_ua=None, target_se=None, min_per_class=0,
               seed=None, progress=None, cancel=None, log=None):
        package = self.module.__name__
        found = {}

        def run():
            sampling = self._import(package + ".accuracy.sampling", TOO_OLD["sample"])
            ua = None
            if expected_ua is not None:  # parsed as `geoddu sample --expected-ua` parses it
                ua = importlib.import_module(
                    package + ".accuracy.allocation").parse_expected_ua(expected_ua)
            result = sampling.sample(src, dst, n=n, min_per_class=min_per_class, expected_ua=ua,
                                     target_se=target_se if ua is not None else None,
                                     seed=seed, overwrite=True, progress=progress,
                                     cancel=cancel)
            found["summary"] = result.to_dict()

        self._call(run, [dst])
        return found["summary"]

    def assess(self, src, reference, *, class_column=None, layer=None, design="stratified",
               report=None, json_path=None, csv_path=None, progress=None, cancel=None,
               log=None):
        package = self.module.__name__
        outputs = [path for path in (report, json_path, csv_path) if path]
        found = {}

        def run():
            assess = self._import(package + ".accuracy.assess", TOO_OLD["assess"]).assess
            render = importlib.import_module(package + ".accuracy.report")
            cancelled = importlib.import_module(package + ".errors").Cancelled

            def step(stage: str, done: int, total: int) -> None:
                # The assessment takes no cancel callback: its progress reports are where a
                # cancel can stop it.
                if cancel is not None and cancel():
                    raise cancelled("cancelled; no output was written")
                if progress is not None:
                    progress(stage, done, total)

            # What `geoddu assess` does: outputs checked first, written together at the end.
            files = render.open_outputs({"json": json_path, "csv": csv_path, "report": report},
                                        map_path=src, overwrite=True)
            try:
                result = assess(src, reference, class_column=class_column, layer=layer,
                                design=design, progress=step)
            except BaseException:
                for out in files.values():
                    out.discard()
                raise
            render.write_outputs(result, files)
            # As `geoddu assess --json` prints it: the same dict through either route.
            found["result"] = json.loads(render.to_json(result))

        self._call(run, outputs)
        return found["result"]

    def model_card(self, model, *, html=None, log=None):
        package = self.module.__name__
        found = {}

        def run():
            cards = self._import(package + ".card", TOO_OLD["card"])
            if not hasattr(cards, "card_text"):
                raise EngineError(TOO_OLD["card"])
            card = importlib.import_module(package + ".checkpoint").read_card(model)
            if html:
                write = importlib.import_module(package + ".io.atomic").write_atomically
                write(html, lambda temp: temp.write_text(cards.card_html(card, model),
                                                         encoding="utf-8"))
            found["text"] = cards.card_text(card, model)

        self._call(run, [html] if html else [])
        return found["text"]

    @staticmethod
    def _import(name: str, missing: str):
        """The engine's module ``name``; an EngineError saying ``missing`` if this geoddu
        has none."""
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            raise EngineError(missing, f"{type(exc).__name__}: {exc}") from None

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
                self.check_written(guard, outputs[0])
        except EngineError:
            guard.discard()
            raise
