"""`geoddu synth`: the paper's synthetic circles-and-line set, written to disk."""

from __future__ import annotations

import click

from .options import output_option, overwrite_option, quiet_option


@click.command(short_help="Generate the paper's synthetic dataset.")
@output_option("Folder to write (synthetic.json + train/val/test.npz).", required=True,
               folder=True)
@click.option("--k", "k", type=click.IntRange(1), default=2, show_default=True,
              help="Subimages per image: images are (k*32) x 32 px. The paper uses "
                   "2, 3, 4, 6, 8 and 16.")
@click.option("--train", "n_train", type=click.IntRange(0), default=4000, show_default=True,
              help="Training images.")
@click.option("--val", "n_val", type=click.IntRange(0), default=1000, show_default=True,
              help="Validation images.")
@click.option("--test", "n_test", type=click.IntRange(0), default=1000, show_default=True,
              help="Test images.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed: the same seed and k give the same images.")
@overwrite_option
@quiet_option
def synth(output, k, n_train, n_val, n_test, seed, overwrite, quiet) -> None:
    """Write the synthetic dataset of the paper (Sec. III-D1): grey images of (k*32) x 32 px
    with two white circles of radius 4, each wholly inside a different 32 x 32 subimage, and
    masks with three classes: background, the line segment between the two centres (only in
    the mask) and the circles. A subimage alone cannot tell where its line goes: only
    communication between subimages can.

    \b
    Examples:
      geoddu synth -o data/synthetic-k2 --k 2
      geoddu synth -o data/synthetic-k6 --k 6 --train 1000 --val 250 --test 500 --seed 1
      geoddu train --dataset synthetic --data data/synthetic-k2 -o runs/k2
    """
    from geoddu.data import synthetic

    out = synthetic.write(output, k, train=n_train, val=n_val, test=n_test, seed=seed,
                          overwrite=overwrite)
    if not quiet:
        click.echo(f"wrote {out}: k={k}, {32 * k} x 32 px, {n_train}/{n_val}/{n_test} "
                   f"train/val/test images, seed {seed}")
