"""`geoddu assess`: accuracy and error-adjusted areas of a class map from reference data."""

from __future__ import annotations

import click

from .options import overwrite_option, quiet_option


@click.command(short_help="Accuracy and error-adjusted class areas from reference data.")
@click.argument("src", metavar="MAP", type=str)
@click.option("--reference", "-r", required=True, type=str, metavar="REF",
              help="Reference points or polygons (any vector GDAL reads, any CRS: reprojected "
                   "to the map's), or a reference raster on exactly the map's grid.")
@click.option("--class-column", default=None, metavar="COLUMN",
              help="The reference layer's column holding each unit's class: a class name of "
                   "the map (case-insensitive) or a class id. Required for vector references.")
@click.option("--layer", default=None, help="Layer of a multi-layer reference file.")
@click.option("--design", type=click.Choice(["stratified", "simple"]), default="stratified",
              show_default=True,
              help="stratified: a stratified random sample with the map classes as strata "
                   "(Olofsson et al. 2014). simple: a simple random or systematic sample.")
@click.option("--json", "json_out", is_flag=False, flag_value="-", default=None,
              metavar="[FILE]", help="Write the results as JSON to FILE, or print them when "
                                     "no FILE is given.")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="Write every figure as a CSV row (tidy format).")
@click.option("--report", "report_out", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="Write a self-contained HTML report (matrices as heat maps).")
@click.option("--into", "into", type=str, default=None, metavar="MODEL.pt",
              help="Also write the figures into the model card of the checkpoint that made the "
                   "map (its \"accuracy\" field), in place and atomically; the weights are not "
                   "touched. Checked before any work.")
@overwrite_option
@quiet_option
def assess(src, reference, class_column, layer, design, json_out, csv_out, report_out, into,
           overwrite, quiet) -> None:
    """Assess the class map MAP against reference data, as recommended by Olofsson et al.
    (2014): the sample error matrix, the error matrix in proportions of area, overall, user's
    and producer's accuracy with 95% confidence intervals, F1 and IoU per class, quantity and
    allocation disagreement, and the error-adjusted area of each class (hectares, with its
    95% interval) beside the mapped area.

    Points: the map class is read at each point. Polygons: their pixels are counted (a pixel
    count, whose intervals are too narrow: docs/accuracy.md). A reference raster must be on
    the map's grid. Units outside the map, on nodata, or with an empty or unknown class are
    counted and listed, never dropped silently. The map needs a projected CRS for hectares.

    \b
    Examples:
      geoddu assess landcover.tif --reference points.gpkg --class-column reference
      geoddu assess landcover.tif -r points.gpkg --class-column ref --json out.json
      geoddu assess landcover.tif -r survey.tif --report report.html --csv figures.csv
      geoddu assess landcover.tif -r points.gpkg --class-column ref --design simple --json
      geoddu assess landcover.tif -r points.gpkg --class-column ref --into runs/k2/best.pt
    """
    from geoddu.accuracy.assess import assess as run_assess
    from geoddu.accuracy.report import open_outputs, to_json, write_outputs

    to_stdout = json_out == "-"
    files = {"json": None if to_stdout else json_out, "csv": csv_out, "report": report_out}
    outputs = open_outputs(files, map_path=src, overwrite=overwrite,
                           inputs={"--into": into, "--reference": reference})
    try:
        # With --into the model is checked before any work and its card written last, so a bad
        # model leaves no output and a failed card write discards them.
        result = run_assess(src, reference, class_column=class_column, layer=layer,
                            design=design, into=into)
    except BaseException:
        for out in outputs.values():
            out.discard()
        raise
    write_outputs(result, outputs)
    if into is not None and not quiet:
        click.echo(f"Wrote the figures into the model card of {into} (field \"accuracy\"; "
                   f"`geoddu card -m {into}` shows it)", err=True)
    if to_stdout:
        click.echo(to_json(result))
        return
    for note in result.notes:
        click.echo(f"Note: {note}", err=True)
    if quiet:
        e = result.estimates
        click.echo(f"overall accuracy {e.overall:.4f} ± {e.ci(e.overall_se):.4f}")
        return
    _print_tables(result)


def _fmt(value, digits: int = 3) -> str:
    import math

    v = float(value)
    return "–" if not math.isfinite(v) else f"{v:.{digits}f}"


def _pm(value, se, z: float, digits: int = 3) -> str:
    import math

    v, s = float(value), float(se)
    if not math.isfinite(v):
        return "–"
    return f"{v:.{digits}f}" if not math.isfinite(s) else f"{v:.{digits}f} ± {z * s:.{digits}f}"


def _table(title: str, first: str, *numeric: str):
    """A rich table whose first column is text and the others right-aligned figures."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column(first)
    for name in numeric:
        table.add_column(name, justify="right")
    return table


def _print_tables(result) -> None:
    from rich.console import Console
    from rich.table import Table

    e = result.estimates
    names = e.classes
    console = Console()
    console.print(f"{result.map_path} against {result.reference_path} "
                  f"({result.reference_kind}, {result.sample.used} {result.sample_unit} used; "
                  f"design {e.design}; intervals 95%)")
    counts = _table("Sample error matrix", "map \\ reference", *names, "total")
    for i, name in enumerate(names):
        counts.add_row(name, *(str(int(v)) for v in e.counts[i]), str(int(e.counts[i].sum())))
    counts.add_row("total", *(str(int(v)) for v in e.counts.sum(axis=0)),
                   str(int(e.counts.sum())))
    console.print(counts)
    props = _table("Error matrix in proportions of area", "map \\ reference", *names,
                   "total")
    for i, name in enumerate(names):
        props.add_row(name, *(f"{v:.4f}" for v in e.proportions[i]),
                      f"{e.proportions[i].sum():.4f}")
    props.add_row("total", *(f"{v:.4f}" for v in e.proportions.sum(axis=0)),
                  f"{e.proportions.sum():.4f}")
    console.print(props)
    per = _table("Per class", "class", "user's acc.", "producer's acc.", "F1", "IoU",
                 "mapped (ha)", "estimated area (ha)")
    for i, name in enumerate(names):
        area = "–" if not e.area[i] == e.area[i] else \
            f"{e.area[i]:,.1f} ± {e.ci(e.area_se[i]):,.1f}"
        per.add_row(name, _pm(e.users[i], e.users_se[i], e.z),
                    _pm(e.producers[i], e.producers_se[i], e.z), _fmt(e.f1[i]), _fmt(e.iou[i]),
                    f"{e.mapped_area[i]:,.1f}", area)
    console.print(per)
    console.print(f"[bold]overall accuracy {_pm(e.overall, e.overall_se, e.z, 4)}[/bold]; "
                  f"quantity disagreement {e.quantity_disagreement:.4f}, allocation "
                  f"disagreement {e.allocation_disagreement:.4f}")
    if result.sample.skipped:
        skipped = Table("feature", "reason", "value", "pixels", title="Left out")
        for item in result.sample.skipped:
            skipped.add_row("-" if item.index is None else str(item.index), item.reason,
                            item.value or "", str(item.pixels or ""))
        console.print(skipped)
