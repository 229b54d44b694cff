"""Joining window-local regions across window borders: union-find and the border lines.

Windows are visited in row-major order; only the last pixel row of the window row above and
the last column of the window to the left are kept, never pixel arrays.
"""

from __future__ import annotations

import numpy as np

from geoddu.vectorize.class_windows import NONE


class UnionFind:
    """Union-find over integer ids; only ids that were ever joined take memory."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while root in parent:
            root = parent[root]
        while x != root:  # path compression: later finds are O(1)
            nxt = parent[x]
            parent[x] = root
            x = nxt
        return root


def unique_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(np.column_stack((a, b)).astype(np.int64), axis=0)


class Seams:
    """The pixels along the window borders already processed, as (class, global id) lines.

    Windows come in row-major order; a window meets the bottom line of the window row above
    and the right column of the window to its left. Only those lines are kept.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.above_cls = np.full(width, NONE, np.uint8)
        self.above_gid = np.zeros(width, np.int64)
        self.below_cls = np.full(width, NONE, np.uint8)
        self.below_gid = np.zeros(width, np.int64)
        self.left_cls: np.ndarray | None = None
        self.left_gid: np.ndarray | None = None

    def meet(
        self, r0: int, c0: int, lines: dict[str, tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (earlier gid, this window's gid) facing each other: same class, other class."""
        same: list[np.ndarray] = []
        diff: list[np.ndarray] = []
        w = lines["top"][0].size
        faces = []
        if r0 > 0:
            faces.append((self.above_cls[c0 : c0 + w], self.above_gid[c0 : c0 + w], *lines["top"]))
        if c0 > 0 and self.left_cls is not None:
            faces.append((self.left_cls, self.left_gid, *lines["left"]))
        for prev_cls, prev_gid, cur_cls, cur_gid in faces:
            valid = (prev_cls != NONE) & (cur_cls != NONE)
            eq = valid & (prev_cls == cur_cls)
            ne = valid & (prev_cls != cur_cls)
            same.append(unique_pairs(prev_gid[eq], cur_gid[eq]))
            diff.append(unique_pairs(prev_gid[ne], cur_gid[ne]))
        bottom_cls, bottom_gid = lines["bottom"]
        self.below_cls[c0 : c0 + w] = bottom_cls
        self.below_gid[c0 : c0 + w] = bottom_gid
        self.left_cls, self.left_gid = lines["right"]
        empty = np.empty((0, 2), np.int64)
        return (
            np.concatenate(same) if same else empty,
            np.concatenate(diff) if diff else empty,
        )

    def next_row(self) -> None:
        self.above_cls, self.below_cls = self.below_cls, self.above_cls
        self.above_gid, self.below_gid = self.below_gid, self.above_gid
        self.below_cls.fill(NONE)
        self.below_gid.fill(0)
        self.left_cls = self.left_gid = None
