"""Drive the geoddu engine, whatever way it is installed: one :class:`Engine` interface.

The Processing algorithms find an engine (:func:`.discovery.find_engine`), then call
``engine.segment(request)``, ``engine.vectorize(...)`` (polygons) or ``engine.train(request)``
(a training run), ``request`` being a plain dict of the engine's request fields
(:mod:`.engine_base` says which); and ``engine.sample(...)``, ``engine.assess(...)`` (accuracy)
and ``engine.model_card(model)``, which return what ``geoddu sample --json``, ``geoddu assess
--json`` and ``geoddu card --text`` print. This module gathers what they use, each part in its own
module:

- :mod:`.engine_base`: the :class:`Engine` contract, its errors, stage names and the overall
  percentage;
- :mod:`.in_process_engine`: geoddu imported into QGIS's Python (set-ups ``import``, ``env``);
- :mod:`.cli_engine`: the ``geoddu`` command as a subprocess, the request as JSON on its stdin
  and JSON progress lines back;
- :mod:`.training_run`: a training run's events as progress and epoch lines, and its summary.

Plain Python (standard library only, no QGIS import), so that it can be read and tested on its
own.
"""

from __future__ import annotations

from .cli_engine import CliEngine
from .engine_base import (
    OUTPUT_FIELDS,
    STAGES,
    TOO_OLD,
    VECTOR_STAGES,
    CancelFn,
    Engine,
    EngineCancelled,
    EngineError,
    EngineNotFound,
    EpochFn,
    LogFn,
    OverallPercent,
    ProgressFn,
    check_written,
    one_line,
    request_outputs,
    vector_stages,
)
from .in_process_engine import InProcessEngine
from .training_run import BEST, LAST, TrainEvents, number, train_summary

__all__ = [
    "BEST", "LAST", "OUTPUT_FIELDS", "STAGES", "TOO_OLD", "VECTOR_STAGES", "CancelFn",
    "CliEngine", "Engine", "EngineCancelled", "EngineError", "EngineNotFound", "EpochFn",
    "InProcessEngine", "LogFn", "OverallPercent", "ProgressFn", "TrainEvents", "check_written",
    "number", "one_line", "request_outputs", "train_summary", "vector_stages",
]
