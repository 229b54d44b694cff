"""The geoddu engine imported into this Python (set-ups ``import`` and ``env``): requests built
with geoddu's own classes and run here, in Processing's background thread.

Plain Python (standard library only, no QGIS import).
"""

from __future__ import annotations

import importlib
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

    def vectorize(self, src, dst, *, min_area=None, simplify=None, progress=None, cancel=None,
                  log=None):
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
                    ("cancel", cancel)) if value is not None}
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
