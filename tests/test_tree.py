"""Shared tree code: shapes from paths, candidate trees, uniqueness."""

import pytest
import torch

from harness.core.tree import TreeShape, chain_paths


def test_shape_from_paths_parents_first_and_unique():
    shape = TreeShape([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])
    t = shape.build(torch.tensor([7]), torch.tensor([[[10, 11], [20, 21], [30, 31]]]))
    assert t.tokens.tolist() == [[7, 10, 11, 20, 21, 20, 30]]
    assert t.parents.tolist() == [[-1, 0, 0, 1, 1, 2, 3]]
    assert t.depths.tolist() == [[0, 1, 1, 2, 2, 2, 3]]
    assert all(int(p) < i for i, p in enumerate(t.parents[0].tolist()) if i)
    paths = {tuple(t.tokens[0][t.mask[0, i]].tolist()) for i in range(t.size)}
    assert len(paths) == t.size  # every node is a distinct candidate sequence


def test_a_batch_of_trees_shares_the_shape():
    shape = TreeShape([(0,), (1,), (0, 0)])
    candidates = torch.tensor([[[10, 11], [20, 21]], [[30, 31], [40, 41]]])  # [B=2, steps, k]
    t = shape.build(torch.tensor([7, 8]), candidates)
    assert t.tokens.tolist() == [[7, 10, 11, 20], [8, 30, 31, 40]] and t.batch == 2
    assert t.parents.shape == (2, 4) and t.mask.shape == (2, 4, 4)


def test_shape_rejects_orphan_and_negative_paths():
    with pytest.raises(ValueError, match="parent"):
        TreeShape([(0,), (1, 0)])
    with pytest.raises(ValueError):
        TreeShape([(-1,)])


def test_chain_and_duplicates():
    shape = TreeShape(chain_paths(3) + [(0,)])
    assert shape.size == 4 and shape.depth == 3 and shape.topk == 1
    assert shape.build(torch.tensor([1]), torch.tensor([[[2], [3], [4]]])).tokens.tolist() == [[1, 2, 3, 4]]
