"""`geoddu card --text` and `--html`: the card as the QGIS plugin shows it (its log and its
Model card page), from the engine's one formatter (geoddu.card.card_lines)."""

from __future__ import annotations

from click.testing import CliRunner
from geoddu.cli.main import cli

from geoddu.card import card_lines, card_text
from geoddu.checkpoint import update_card


def _card(*args: str):
    return CliRunner().invoke(cli, ["card", *args])


def test_text_and_html_show_the_cards_rows(checkpoint, tmp_path):
    model = str(checkpoint)
    bare = _card("-m", model, "--text")
    assert bare.exit_code == 0, bare.output
    assert bare.output.strip() == f"{model}: no model card (set fields with `geoddu card -m " \
                                  f"{model} --set description=...`)"
    card = update_card(model, {"description": "Water <b>&</b> forest", "authors": ["A", "B"],
                               "metrics": {"epoch": 3, "val_miou": 0.51234}})
    shown = _card("-m", model, "--text", "--html", str(tmp_path / "card.html"))
    assert shown.exit_code == 0, shown.output
    assert shown.output.strip() == card_text(card, model)
    assert shown.output.splitlines() == [f"Model card of {model}",
                                         *(f"  {key}: {text}" for key, text in card_lines(card))]
    assert "  metrics: epoch=3, val_miou=0.5123" in shown.output.splitlines()
    page = (tmp_path / "card.html").read_text(encoding="utf-8")
    assert "<th>description</th><td>Water &lt;b&gt;&amp;&lt;/b&gt; forest</td>" in page
    assert "<th>authors</th><td>A; B</td>" in page
    assert "<script" not in page


def test_html_refusals_change_nothing(checkpoint, tmp_path):
    model = str(checkpoint)
    before = checkpoint.read_bytes()
    page = tmp_path / "card.html"
    page.write_text("old\n")
    refused = _card("-m", model, "--set", "license=MIT", "--html", str(page))
    assert refused.exit_code != 0 and "exists; pass --overwrite" in refused.output
    assert checkpoint.read_bytes() == before and page.read_text() == "old\n"
    again = _card("-m", model, "--html", model, "--overwrite")
    assert again.exit_code != 0 and "is the checkpoint" in again.output
    assert checkpoint.read_bytes() == before
    both = _card("-m", model, "--text", "--json")
    assert both.exit_code != 0 and "--text or --json" in both.output
    replaced = _card("-m", model, "--html", str(page), "--overwrite")
    assert replaced.exit_code == 0 and "Model card of" in page.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.html", "model.pt"]
