import numpy as np
import pytest
import torch

from geoddu.errors import GeodduError
from geoddu.partition import Partition, balanced_blocks


def test_uniform_partition_sizes_are_stride_multiples_and_sum_up():
    p = Partition.uniform(96, 160, 2, 3, multiple=16)
    assert p.row_sizes == (48, 48)
    assert p.col_sizes == (64, 48, 48)
    assert p.shape == (96, 160)
    assert all(s % 16 == 0 for s in p.row_sizes + p.col_sizes)


@pytest.mark.parametrize(
    "array",
    [np.arange(2 * 48 * 80).reshape(2, 48, 80), torch.arange(2 * 48 * 80).reshape(2, 48, 80)],
)
def test_split_stitch_round_trip(array):
    p = Partition((16, 32), (32, 16, 32))
    parts = p.split(array)
    assert [[t.shape[-2:] for t in row] for row in parts][1][1] == (32, 16)
    back = Partition.stitch(parts)
    assert (back == array).all()


def test_subimages_and_offsets():
    p = Partition.from_subimage_size(100, 70, 32)
    assert p.row_sizes == (32, 32, 32, 4) and p.col_sizes == (32, 32, 6)
    cells = p.subimages()
    assert len(cells) == len(p) == 12
    assert (cells[5].row, cells[5].col, cells[5].row_off, cells[5].col_off) == (1, 2, 32, 64)


def test_bad_partitions_are_rejected_with_a_clear_message():
    with pytest.raises(GeodduError, match="multiple of the model stride"):
        Partition.uniform(100, 64, 2, 2, multiple=16)
    with pytest.raises(GeodduError, match="cannot cut"):
        Partition.uniform(32, 64, 4, 1, multiple=16)
    with pytest.raises(GeodduError, match="sum to"):
        Partition((16, 16), (32,)).validate(48, 32)
    with pytest.raises(GeodduError, match="not multiples"):
        Partition((24, 24), (32,)).validate(48, 32, multiple=16)
    with pytest.raises(GeodduError):
        Partition((), (3,))


def test_balanced_contiguous_assignment():
    p = Partition.uniform(64, 80, 4, 5)
    blocks = p.assign(3)
    sizes = [len(b) for b in blocks]
    assert sizes == [7, 7, 6]
    flat = [c for b in blocks for c in b]
    assert flat == p.subimages()  # contiguous, row-major, each cell exactly once
    assert balanced_blocks(list(range(2)), 4) == [[0], [1], [], []]
