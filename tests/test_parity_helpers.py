"""The tie-aware order matching used by the parity tests accepts swaps only inside score ties."""
import numpy as np
import pytest

from parity_helpers import tie_aware_order, tie_groups

BOXES = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40], [1, 2, 3, 4]], np.float32)


def test_tie_groups():
  assert tie_groups(np.array([0.9, 0.5, 0.5 - 1e-7, 0.1]), 1e-5) == [(0, 1), (1, 3), (3, 4)]


def test_identical_order_has_no_swaps():
  s = np.array([0.9, 0.5, 0.3, 0.1])
  perm, swaps = tie_aware_order(s, s, BOXES, BOXES, score_tol=1e-5, key_tol=1e-3)
  np.testing.assert_array_equal(perm, np.arange(4))
  assert swaps == []


def test_swap_inside_tie_is_accepted_and_reported():
  ref = np.array([0.9, 0.44837555, 0.44837546, 0.1])
  mine_order = [0, 2, 1, 3]
  perm, swaps = tie_aware_order(ref[mine_order], ref, BOXES[mine_order], BOXES,
                                score_tol=1e-5, key_tol=1e-3)
  np.testing.assert_array_equal(BOXES[mine_order][perm], BOXES)
  assert [(j, k) for j, k, _ in swaps] == [(1, 2), (2, 1)]
  assert all(gap < 1e-5 for _, _, gap in swaps)


def test_swap_outside_tie_fails():
  ref = np.array([0.9, 0.5, 0.3, 0.1])
  mine_order = [0, 2, 1, 3]
  with pytest.raises(AssertionError, match="position 1"):
    tie_aware_order(ref[mine_order], ref, BOXES[mine_order], BOXES, score_tol=1e-5, key_tol=1e-3)


def test_different_box_inside_tie_fails():
  ref = np.array([0.9, 0.5, 0.5, 0.1])
  mine = BOXES.copy()
  mine[1] += 0.5
  mine[[1, 2]] = mine[[2, 1]]
  with pytest.raises(AssertionError):
    tie_aware_order(ref, ref, mine, BOXES, score_tol=1e-5, key_tol=1e-3)
