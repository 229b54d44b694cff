"""The QGIS plugin keeps copies of some of geoddu's names, as it runs where geoddu is not
importable (the `cli` set-up): they must equal geoddu's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from geoddu.engine.request import OUTPUT_GRIDS
from geoddu.io.warp import WARP_RESAMPLINGS

PLUGIN_PARENT = Path(__file__).resolve().parents[1] / "plugins" / "qgis"


def test_the_segment_dialogs_choices_are_the_engines():
    # In a process of its own: engine_base drops the geoddu modules it imported itself.
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
            "from geoddu_qgis.engine_base import OUTPUT_GRIDS, RESAMPLINGS; "
            "print(json.dumps([RESAMPLINGS, OUTPUT_GRIDS]))")
    out = subprocess.run([sys.executable, "-c", code, str(PLUGIN_PARENT)], capture_output=True,
                         text=True, timeout=60, check=True)
    resamplings, grids = json.loads(out.stdout)
    assert tuple(resamplings) == tuple(WARP_RESAMPLINGS)
    assert tuple(grids) == tuple(OUTPUT_GRIDS)
