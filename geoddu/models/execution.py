"""How the subimages of one DDU-Net forward are run: the model's composition (`DDUNet.run`)
asks an execution for two things and nothing else.

* `map(fn, items, cells)`: `fn(*item)` for each subimage's item (a stage of the model, one
  subimage's arguments); `cells` are the items' places among the process's subimages.
* `mosaic(fn, maps)`: `fn` over the mosaic of every subimage's F bottleneck maps, cut back
  into one tensor per subimage.

`Stacked` is the default (inference): equal-size subimages stacked into one batch per stage,
few large kernels. Training wraps the model in executions of its own
(`geoddu.train.execution`: streams that meet at BatchNorm, spatial ranks), the ONNX export in
one that writes the split and stitch as reshapes (`geoddu.export_onnx`). They change how the
stages run, never what they compute: the composition is the model's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from ..partition import Partition

Grid = tuple[int, int]


class SubimageExecution(Protocol):
    def map(self, fn: Callable[..., Any], items: Sequence[tuple], cells: Sequence[int]
            ) -> list[Any]: ...

    def mosaic(self, fn: Callable[[torch.Tensor], torch.Tensor],
               maps: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...


class Stacked:
    """Equal-size subimages stacked into one batch per stage; the mosaic stitched by `grid`
    (rows, columns of the subimages, row-major)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def map(self, fn: Callable[..., Any], items: Sequence[tuple], cells: Sequence[int]
            ) -> list[Any]:
        return batched_apply(fn, items)

    def mosaic(self, fn: Callable[[torch.Tensor], torch.Tensor],
               maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return on_mosaic(fn, maps, self.grid)


def on_mosaic(fn: Callable[[torch.Tensor], torch.Tensor], maps: Sequence[torch.Tensor],
              grid: Grid) -> list[torch.Tensor]:
    """`fn` over the stitched mosaic of `maps` (row-major on `grid`), cut back into cells."""
    rows, cols = grid
    mosaic = Partition.stitch([maps[i * cols : (i + 1) * cols] for i in range(rows)])
    coarse = Partition(
        tuple(m.shape[-2] for m in maps[::cols]), tuple(m.shape[-1] for m in maps[:cols])
    )
    return [m for row in coarse.split(fn(mosaic)) for m in row]


def flatten_grid(parts: Sequence[Sequence[Any]]) -> tuple[list[Any], Grid]:
    """A [row][col] grid -> (its cells row-major, (rows, cols))."""
    rows, cols = len(parts), len(parts[0])
    return [parts[i][j] for i in range(rows) for j in range(cols)], (rows, cols)


def as_grid(flat: Sequence[Any], grid: Grid) -> list[list[Any]]:
    cols = grid[1]
    return [list(flat[i * cols : (i + 1) * cols]) for i in range(grid[0])]


def batched_apply(fn: Callable[..., Any], items: Sequence[tuple]) -> list[Any]:
    """`fn(*item)` for each item, stacking items of equal shapes into one batch."""
    groups: dict[Any, list[int]] = {}
    for k, item in enumerate(items):
        groups.setdefault(shape_key(item), []).append(k)
    out: list[Any] = [None] * len(items)
    for idx in groups.values():
        if len(idx) == 1:
            out[idx[0]] = fn(*items[idx[0]])
            continue
        batch = tree_cat([items[k] for k in idx])
        n = batch_size(items[idx[0]])
        for pos, res in enumerate(tree_split(fn(*batch), n)):
            out[idx[pos]] = res
    return out


# -- trees of tensors with a batch axis first (a subimage's skips, bottleneck, maps) -----------
# Leaves are tensors or None (no maps); containers are lists and tuples.
def shape_key(item: Any) -> Any:
    if item is None or isinstance(item, torch.Tensor):
        return None if item is None else tuple(item.shape)
    return tuple(shape_key(x) for x in item)


def batch_size(item: Any) -> int:
    if isinstance(item, torch.Tensor):
        return item.shape[0]
    return next(batch_size(x) for x in item if x is not None)


def tree_rows(tree: Any, rows: range) -> Any:
    if tree is None or isinstance(tree, torch.Tensor):
        if tree is None or (rows.start == 0 and rows.stop >= tree.shape[0]):
            # all rows: the tensor itself (a slice's backward would zero-fill a copy)
            return tree
        return tree[rows.start : rows.stop]
    return type(tree)(tree_rows(t, rows) for t in tree)


def tree_cat(items: Sequence[Any]) -> Any:
    first = items[0]
    if first is None or isinstance(first, torch.Tensor):
        return None if first is None else torch.cat(list(items), dim=0)
    return type(first)(tree_cat([it[k] for it in items]) for k in range(len(first)))


def tree_split(tree: Any, n: int) -> list[Any]:
    """Every tensor of a tree cut into pieces of n rows (torch.split: one autograd node, whose
    backward is one cat rather than a zero-filled full gradient per piece)."""
    if isinstance(tree, torch.Tensor):
        return list(tree.split(n))
    split = [tree_split(t, n) for t in tree]
    return [type(tree)(s[k] for s in split) for k in range(len(split[0]))]
