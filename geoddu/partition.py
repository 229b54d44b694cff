"""Cutting an H x W extent into N x M non-overlapping subimages, stitching, device assignment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GeodduError


@dataclass(frozen=True)
class Subimage:
    """One cell of the grid: its grid position and its pixel window."""

    row: int
    col: int
    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def index(self) -> tuple[int, int]:
        return self.row, self.col


@dataclass(frozen=True)
class Partition:
    """Heights of the N subimage rows and widths of the M subimage columns."""

    row_sizes: tuple[int, ...]
    col_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "row_sizes", tuple(int(s) for s in self.row_sizes))
        object.__setattr__(self, "col_sizes", tuple(int(s) for s in self.col_sizes))
        if not self.row_sizes or not self.col_sizes:
            raise GeodduError("a partition needs at least one subimage row and column")
        if min(self.row_sizes + self.col_sizes) <= 0:
            raise GeodduError(f"subimage sizes must be positive, got {self}")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def uniform(cls, height: int, width: int, rows: int, cols: int, multiple: int = 1) -> Partition:
        """N x M subimages as equal as possible, each a multiple of `multiple` (model stride)."""
        return cls(
            _split_evenly(height, rows, multiple, "height"),
            _split_evenly(width, cols, multiple, "width"),
        )

    @classmethod
    def from_subimage_size(cls, height: int, width: int, size: int | tuple[int, int]) -> Partition:
        """Subimages of `size` covering the extent; the last row/column is cut short (ragged)."""
        sh, sw = (size, size) if isinstance(size, int) else size
        return cls(_tile(height, sh), _tile(width, sw))

    def validate(self, height: int, width: int, multiple: int = 1) -> Partition:
        """Raise a clear error unless the subimages tile H x W and are multiples of `multiple`."""
        if sum(self.row_sizes) != height or sum(self.col_sizes) != width:
            raise GeodduError(
                f"subimage rows sum to {sum(self.row_sizes)} and columns to "
                f"{sum(self.col_sizes)}, but the image is {height} x {width}"
            )
        bad = [s for s in self.row_sizes + self.col_sizes if s % multiple]
        if bad:
            raise GeodduError(
                f"subimage sizes {sorted(set(bad))} are not multiples of the model stride "
                f"{multiple} (2^depth)"
            )
        return self

    # -- geometry -----------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        return len(self.row_sizes), len(self.col_sizes)

    @property
    def shape(self) -> tuple[int, int]:
        return sum(self.row_sizes), sum(self.col_sizes)

    @property
    def row_offsets(self) -> tuple[int, ...]:
        return tuple(int(v) for v in np.cumsum((0,) + self.row_sizes[:-1]))

    @property
    def col_offsets(self) -> tuple[int, ...]:
        return tuple(int(v) for v in np.cumsum((0,) + self.col_sizes[:-1]))

    def __len__(self) -> int:
        return len(self.row_sizes) * len(self.col_sizes)

    def subimages(self) -> list[Subimage]:
        """All cells in row-major order (the order used for device assignment)."""
        return [
            Subimage(i, j, ro, co, h, w)
            for i, (ro, h) in enumerate(zip(self.row_offsets, self.row_sizes, strict=True))
            for j, (co, w) in enumerate(zip(self.col_offsets, self.col_sizes, strict=True))
        ]

    def scaled(self, factor: int) -> Partition:
        """The same grid at 1/factor resolution (e.g. the bottleneck mosaic)."""
        return Partition(
            tuple(s // factor for s in self.row_sizes), tuple(s // factor for s in self.col_sizes)
        )

    # -- split / stitch on the last two axes (numpy arrays or torch tensors) -------------------
    def split(self, x: Any) -> list[list[Any]]:
        """Cut x (..., H, W) into a nested [row][col] list of views."""
        h, w = x.shape[-2:]
        if (h, w) != self.shape:
            raise GeodduError(f"array is {h} x {w} but the partition covers {self.shape}")
        cols = list(zip(self.col_offsets, self.col_sizes, strict=True))
        return [
            [x[..., ro : ro + rh, co : co + cw] for co, cw in cols]
            for ro, rh in zip(self.row_offsets, self.row_sizes, strict=True)
        ]

    @staticmethod
    def stitch(parts: Sequence[Sequence[Any]]) -> Any:
        """Inverse of split: concatenate a [row][col] nested list back into one array."""
        first = parts[0][0]
        if isinstance(first, np.ndarray):
            return np.concatenate([np.concatenate(list(r), axis=-1) for r in parts], axis=-2)
        import torch

        return torch.cat([torch.cat(list(r), dim=-1) for r in parts], dim=-2)

    # -- devices ------------------------------------------------------------------------------
    def assign(self, devices: int) -> list[list[Subimage]]:
        """Balanced contiguous blocks of subimages (row-major) for each of `devices` workers.

        Contiguous blocks keep neighbours on the same device, so the bottleneck halo that has to
        cross devices is as small as the grid allows. Block sizes differ by at most one.
        """
        return balanced_blocks(self.subimages(), devices)


def balanced_blocks(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """Split `items` into `parts` contiguous runs whose lengths differ by at most one."""
    if parts < 1:
        raise GeodduError("need at least one device")
    n = len(items)
    base, extra = divmod(n, parts)
    out, start = [], 0
    for k in range(parts):
        size = base + (1 if k < extra else 0)
        out.append(list(items[start : start + size]))
        start += size
    return out


def _split_evenly(total: int, parts: int, multiple: int, what: str) -> tuple[int, ...]:
    if parts < 1:
        raise GeodduError(f"need at least one subimage along the {what}")
    if total % multiple:
        raise GeodduError(
            f"image {what} {total} is not a multiple of the model stride {multiple} (2^depth)"
        )
    units = total // multiple
    if units < parts:
        raise GeodduError(
            f"cannot cut a {what} of {total} into {parts} subimages that are multiples "
            f"of {multiple}"
        )
    base, extra = divmod(units, parts)
    return tuple((base + (1 if k < extra else 0)) * multiple for k in range(parts))


def _tile(total: int, size: int) -> tuple[int, ...]:
    if size <= 0:
        raise GeodduError("subimage size must be positive")
    full, rest = divmod(total, size)
    return (size,) * full + ((rest,) if rest else ())
