"""`geoddu card`: print a checkpoint's model card, or edit its user fields in place."""

from __future__ import annotations

import json

import click

from .options import json_option, model_option, overwrite_option


@click.command(short_help="Print a checkpoint's model card; --set/--unset edit its user fields.")
@model_option("The checkpoint whose card to print or edit.", required=True, exists=True)
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Set a user field: description, license, citation, authors (separate "
                   "several with ';'), intended_use, limitations. Repeatable.")
@click.option("--unset", "removals", multiple=True, metavar="KEY",
              help="Remove a user field. Repeatable.")
@click.option("--clear", is_flag=True,
              help="Remove the whole card (geoddu's fields too; also a card that fails the "
                   "checks), then apply --set.")
@click.option("--text", "as_text", is_flag=True,
              help="Print the card as plain lines, FIELD: VALUE (what the QGIS plugin logs), "
                   "instead of a table.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="Also write the card as a self-contained HTML page.")
@overwrite_option
@json_option
def card(model: str, assignments: tuple[str, ...], removals: tuple[str, ...], clear: bool,
         as_text: bool, html_out: str | None, overwrite: bool, as_json: bool) -> None:
    """Print the model card of a checkpoint: what it was trained on (data, bands, pixel size,
    classes, normalisation), how well it did (validation metrics of the saved epoch), on what
    and when, and the user's fields (description, licence, citation, authors, intended use,
    limitations). See docs/model-cards.md.

    With --set and --unset, edit the user fields and write the checkpoint back atomically
    (a temporary file renamed over it); the weights are not touched.

    \b
    Examples:
      geoddu card -m runs/k2/best.pt
      geoddu card -m best.pt --set license=CC-BY-4.0 --set "authors=A. Doe; B. Roe"
      geoddu card -m best.pt --unset limitations --json
      geoddu card -m damaged.pt --clear
      geoddu card -m best.pt --text --html card.html
    """
    # Heavy imports here: `geoddu card --help` must not import torch.
    from geoddu.card import USER_FIELDS, card_html, card_text, parse_assignment
    from geoddu.checkpoint import read_card, update_card
    from geoddu.errors import GeodduError
    from geoddu.io.atomic import AtomicOutput, check_distinct_paths, os_error_line

    if as_text and as_json:
        raise click.UsageError("give --text or --json, not both")
    fields = dict(parse_assignment(a) for a in assignments)
    for key in removals:
        if key not in USER_FIELDS:
            raise GeodduError(f"--unset {key}: not a user field (one of {', '.join(USER_FIELDS)})")
        if key in fields:
            raise GeodduError(f"--set {key} and --unset {key}: give one")
    html = None
    if html_out is not None:
        # Checked (and held) before the checkpoint is read or edited: a bad path changes nothing.
        check_distinct_paths({"--html": html_out}, {"checkpoint": model})
        html = AtomicOutput(html_out, overwrite=overwrite)
    try:
        if fields or removals or clear:
            result = update_card(model, fields, remove=removals, clear=clear)
        else:
            result = read_card(model)
        if html is not None:
            try:
                html.temp.write_text(card_html(result, model), encoding="utf-8")
            except OSError as exc:
                raise GeodduError(os_error_line(exc, html_out)) from exc
    except BaseException:
        if html is not None:
            html.discard()
        raise
    if html is not None:
        html.commit()
    if as_text:
        click.echo(card_text(result, model))
        return
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    print_card(result, model)


def print_card(card: dict, title: str) -> None:
    """The card as a two-column table (also used by `geoddu info -m`)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from geoddu.card import card_lines, no_card_line

    if not card:
        # Plain echo: one line however narrow the terminal (rich would wrap it).
        click.echo(no_card_line(title))
        return
    console = Console()
    table = Table("field", "value", title=f"Model card of {title}", show_lines=False)
    for key, text in card_lines(card):
        # rich markup in a card is text, not formatting: a card may come from anyone.
        table.add_row(key, escape(text))
    console.print(table)
