"""`geoddu sample`: a stratified random sample of points from a class map, to label by eye."""

from __future__ import annotations

import json

import click

from geoddu.errors import GeodduError

from .options import json_option, output_option, overwrite_option, quiet_option


def parse_expected_ua(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None:
        return None
    # Light: geoddu.accuracy.allocation imports nothing heavy, so --help stays fast.
    from geoddu.accuracy.allocation import parse_expected_ua as parse

    try:
        return parse(value)
    except GeodduError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command(short_help="Draw a stratified random sample of points from a class map.")
@click.argument("src", type=str, metavar="MAP")
@output_option("Point layer to write; the format comes from the extension: .gpkg, "
               ".geojson/.json, .fgb (FlatGeobuf), .shp (Shapefile).", required=True)
@click.option("--n", "n", type=click.IntRange(1), default=None, metavar="N",
              help="Points in total, allocated in proportion to each class's mapped area "
                   "(then --min-per-class).")
@click.option("--expected-ua", callback=parse_expected_ua, metavar="[UA,]CLASS=UA,...",
              help="Instead of --n: Olofsson et al. (2014) sample size from the user's "
                   "accuracy you expect per class (class id or name), e.g. 0.8 for all, or "
                   "0.85,water=0.95,3=0.7 (a default, then exceptions). With --target-se.")
@click.option("--target-se", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None, metavar="SE",
              help="With --expected-ua: the standard error of the overall accuracy to reach; "
                   "n = (sum W_i sqrt(U_i (1 - U_i)) / SE)^2.  [default: 0.01]")
@click.option("--min-per-class", type=click.IntRange(0), default=0, show_default=True,
              metavar="M",
              help="At least M points per class (all its pixels if it has fewer); the other "
                   "classes give up points in proportion. Olofsson et al. suggest 50-100.")
@click.option("--seed", type=click.IntRange(0), default=None, metavar="S",
              help="Random seed: the same seed gives the same points on any machine. Without "
                   "it a seed is drawn and printed, so the sample can be drawn again.")
@overwrite_option
@quiet_option
@json_option
def sample(src, output, n, expected_ua, target_se, min_per_class, seed, overwrite,
           quiet, as_json) -> None:
    """Draw a stratified random sample (strata = map classes) of pixels from the class map
    MAP and write them as points at the pixel centres, in the map's CRS, for accuracy
    assessment (Olofsson et al. 2014): label each point's `reference` field by eye in QGIS,
    then assess the map with the labelled points.

    Each point carries point_id, map_class, map_class_name (from the map's category names),
    stratum_pixels, stratum_weight (the class's share of the valid pixels), row, col and an
    empty `reference`. Nodata is never sampled and no pixel is drawn twice. The map is read
    twice in windows of 1024 x 1024 pixels (count the classes, then pick the drawn pixels), so
    memory grows with the sample, not the map; the windows are fixed, so the same map and seed
    always give the same points. The layer is written to a temporary file and renamed when
    complete: a failed run leaves nothing.

    \b
    Examples:
      geoddu sample landcover.tif -o points.gpkg --n 600 --min-per-class 50 --seed 1
      geoddu sample landcover.tif -o points.gpkg --expected-ua 0.85,water=0.95 \\
          --target-se 0.01 --min-per-class 50 --seed 1
      geoddu sample landcover.tif -o points.geojson --n 300 --seed 7 --json
    """
    if (n is None) == (expected_ua is None):
        raise click.UsageError("give --n N or --expected-ua (Olofsson's sample size), not both"
                               if n is not None else "give --n N or --expected-ua")
    if target_se is not None and expected_ua is None:
        raise click.UsageError("--target-se goes with --expected-ua")
    from .progress import progress_reporter

    with progress_reporter(quiet or as_json) as progress:
        progress.setup(f"opening {src}")
        from geoddu.accuracy import sample as run_sample

        result = run_sample(src, output, n=n, min_per_class=min_per_class,
                            expected_ua=expected_ua, target_se=target_se, seed=seed,
                            overwrite=overwrite, progress=progress)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    elif not quiet:
        _print_table(result)
        click.echo(result.summary())


def _print_table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    olofsson = result.draw.design == "olofsson"
    table = Table(title="Strata (map classes)")
    columns = [("class", "right"), ("name", "left"), ("mapped pixels", "right"),
               ("area (ha)", "right"), ("weight W", "right"), ("points", "right")]
    if olofsson:
        columns.insert(5, ("expected UA", "right"))
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for s in result.strata:
        cells = [str(s.class_id), s.name, f"{s.pixels:,}",
                 "-" if s.area_ha is None else f"{s.area_ha:,.2f}", f"{s.weight:.4f}",
                 str(s.points)]
        if olofsson:
            cells.insert(5, f"{s.expected_ua:g}")
        table.add_row(*cells)
    total_area = None if any(s.area_ha is None for s in result.strata) else sum(
        s.area_ha for s in result.strata)
    cells = ["", "total", f"{sum(s.pixels for s in result.strata):,}",
             "-" if total_area is None else f"{total_area:,.2f}", "1.0000", str(result.points)]
    if olofsson:
        cells.insert(5, "")
    table.add_row(*cells, style="bold")
    Console().print(table)
