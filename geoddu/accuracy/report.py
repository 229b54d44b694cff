"""An assessment written out: JSON, a tidy CSV, and a self-contained HTML report (the error
matrix as a table with heat-map cell colours; no plotting library)."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .assess import Assessment

__all__ = ["CSV_COLUMNS", "open_outputs", "to_csv", "to_html", "to_json", "write_outputs"]

CSV_COLUMNS = ("metric", "class", "reference_class", "estimate", "se", "ci_low", "ci_high")


def to_json(result: Assessment) -> str:
    return json.dumps(result.to_dict(), indent=2)


def to_csv(result: Assessment) -> str:
    """One figure a row: matrices cell by cell (class = map class), then per-class and
    overall figures with their standard error and 95% interval where they have one."""
    e = result.estimates
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    names = e.classes

    def row(metric: str, cls: str, ref: str, value: Any, se: Any = None) -> None:
        value = _num(value)
        se = _num(se)
        low = high = None
        if value is not None and se is not None:
            low, high = value - e.z * se, value + e.z * se
        w.writerow([metric, cls, ref, *("" if v is None else repr(float(v))
                                        for v in (value, se, low, high))])

    for i, a in enumerate(names):
        for j, b in enumerate(names):
            row("sample_count", a, b, e.counts[i, j])
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            row("area_proportion", a, b, e.proportions[i, j])
    for i, a in enumerate(names):
        row("mapped_pixels", a, "", result.mapped_pixels[i])
        row("mapped_area_ha", a, "", e.mapped_area[i])
        row("area_ha", a, "", e.area[i], e.area_se[i])
        row("area_fraction", a, "", e.area_proportion[i], e.area_proportion_se[i])
        row("users_accuracy", a, "", e.users[i], e.users_se[i])
        row("producers_accuracy", a, "", e.producers[i], e.producers_se[i])
        row("f1", a, "", e.f1[i])
        row("iou", a, "", e.iou[i])
    row("overall_accuracy", "", "", e.overall, e.overall_se)
    row("quantity_disagreement", "", "", e.quantity_disagreement)
    row("allocation_disagreement", "", "", e.allocation_disagreement)
    return out.getvalue()


def _num(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _fmt(value: Any, digits: int = 3) -> str:
    v = _num(value)
    return "–" if v is None else f"{v:.{digits}f}"


def _pm(value: Any, se: Any, z: float, digits: int = 3) -> str:
    v, s = _num(value), _num(se)
    if v is None:
        return "–"
    return f"{v:.{digits}f}" if s is None else f"{v:.{digits}f} ± {z * s:.{digits}f}"


def _ha(value: Any, se: Any = None, z: float = 1.96) -> str:
    v, s = _num(value), _num(se)
    if v is None:
        return "–"
    return f"{v:,.1f}" if s is None else f"{v:,.1f} ± {z * s:,.1f}"


def _cell_colour(share: float, diagonal: bool) -> str:
    """Green for agreement, red for confusion; the deeper, the larger the row's share."""
    t = max(0.0, min(1.0, share))
    base = (46, 139, 87) if diagonal else (200, 40, 40)
    r, g, b = (round(255 + (c - 255) * t) for c in base)
    return f"#{r:02x}{g:02x}{b:02x}"


def _matrix_html(title: str, matrix: np.ndarray, names: list[str], fmt: str) -> str:
    e = np.asarray(matrix, dtype=float)
    rows_total = e.sum(axis=1)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = []
    for i, name in enumerate(names):
        cells = []
        for j in range(len(names)):
            share = e[i, j] / rows_total[i] if rows_total[i] > 0 else 0.0
            text = format(e[i, j], fmt)
            cells.append(f'<td style="background:{_cell_colour(share, i == j)}">{text}</td>')
        body.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}"
                    f"<td class=t>{format(rows_total[i], fmt)}</td></tr>")
    cols = "".join(f"<td class=t>{format(v, fmt)}</td>" for v in e.sum(axis=0))
    body.append(f"<tr><th>total</th>{cols}<td class=t>{format(e.sum(), fmt)}</td></tr>")
    return (f"<h2>{html.escape(title)}</h2><table><tr><th>map \\ reference</th>{head}"
            f"<th>total</th></tr>{''.join(body)}</table>")


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:.3em .6em;
text-align:right}th{background:#f3f3f3}td.t{font-weight:600}p.note{color:#8a4b00}"""


def to_html(result: Assessment) -> str:
    """A self-contained page (no scripts, no external files)."""
    e = result.estimates
    d = result.to_dict()
    names = e.classes
    z = e.z
    per_class = "".join(
        f"<tr><th>{html.escape(n)}</th><td>{e.counts[i].sum()}</td>"
        f"<td>{_pm(e.users[i], e.users_se[i], z)}</td>"
        f"<td>{_pm(e.producers[i], e.producers_se[i], z)}</td>"
        f"<td>{_fmt(e.f1[i])}</td><td>{_fmt(e.iou[i])}</td>"
        f"<td>{_ha(e.mapped_area[i])}</td><td>{_ha(e.area[i], e.area_se[i], z)}</td></tr>"
        for i, n in enumerate(names))
    skipped = "".join(f"<li>{n} {html.escape(reason)}</li>"
                      for reason, n in result.sample.skipped_counts.items())
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in result.notes)
    title = html.escape(Path(result.map_path).name)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Accuracy of {title}</title>
<style>{_STYLE}</style></head><body>
<h1>Accuracy assessment of {html.escape(result.map_path)}</h1>
<p>Reference: {html.escape(result.reference_path)} ({html.escape(result.reference_kind)};
{result.sample.used} {html.escape(result.sample_unit)} used). Design: {html.escape(e.design)}
(Olofsson et al. 2014). Pixel area {d['pixel_area_m2']:g} m². Intervals are 95% (± {z} SE).</p>
{notes}
<p><b>Overall accuracy {_pm(e.overall, e.overall_se, z)}</b>; quantity disagreement
{_fmt(e.quantity_disagreement, 4)}, allocation disagreement {_fmt(e.allocation_disagreement, 4)}
(Pontius &amp; Millones 2011).</p>
<h2>Per class</h2><table><tr><th>class</th><th>sample (map)</th><th>user's accuracy</th>
<th>producer's accuracy</th><th>F1</th><th>IoU</th><th>mapped area (ha)</th>
<th>estimated area (ha)</th></tr>{per_class}</table>
{_matrix_html("Sample error matrix (counts)", e.counts, names, "g")}
{_matrix_html("Error matrix in proportions of area", e.proportions, names, ".4f")}
<h2>Left out</h2><ul>{skipped or "<li>nothing</li>"}</ul>
</body></html>
"""


RENDER = {"json": to_json, "csv": to_csv, "report": to_html}


def open_outputs(paths: dict[str, str | os.PathLike[str] | None], *, map_path: str,
                 overwrite: bool,
                 inputs: dict[str, str | os.PathLike[str] | None] | None = None
                 ) -> dict[str, Any]:
    """Check every output before any work (distinct, not the map nor another of `inputs`,
    absent unless ``overwrite``): {"json"|"csv"|"report": AtomicOutput}."""
    from geoddu.io.atomic import AtomicOutput, check_distinct_paths

    given = {k: v for k, v in paths.items() if v is not None}
    check_distinct_paths({f"--{k}": v for k, v in given.items()},
                         {"map": map_path, **(inputs or {})})
    outputs: dict[str, Any] = {}
    try:
        for kind, path in given.items():
            outputs[kind] = AtomicOutput(path, overwrite=overwrite)
    except BaseException:
        for out in outputs.values():
            out.discard()
        raise
    return outputs


def write_outputs(result: Assessment, outputs: dict[str, Any]) -> None:
    """Write each output to its temporary file, then rename them all together: a failed
    run leaves none of them."""
    from geoddu.io.atomic import commit_all

    try:
        for kind, out in outputs.items():
            out.temp.write_text(RENDER[kind](result), encoding="utf-8")
    except BaseException:
        for out in outputs.values():
            out.discard()
        raise
    commit_all(outputs.values())
