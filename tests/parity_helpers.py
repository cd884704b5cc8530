"""Helpers shared by the parity tests: relative error and tie-aware order matching.

Float32 results differ in their last bits between CPUs (AVX2 vs AVX-512 kernels sum in other
orders). Where the original's output is *determined* (values far apart) the tests assert it
tightly; where it is not (two candidates whose scores differ by less than the asserted score
tolerance, so either order is a correct float32 answer), `tie_aware_order` accepts a reordering
inside such a tie and reports it.
"""
from __future__ import annotations

import numpy as np


PROPOSAL_SCORE_TOL = 1e-5  # asserted objectness tolerance = widest gap of an accepted tie
DET_SCORE_TOL = 1e-4  # asserted detection-score tolerance


def nchw(x) -> np.ndarray:
  """[1, C, H, W] dump of the original -> [H, W, C]."""
  return np.asarray(x)[0].transpose(1, 2, 0)


def rel_err(mine, ref) -> float:
  """max |mine - ref| / max |ref| in float64."""
  ref = np.asarray(ref, np.float64)
  return float(np.abs(np.asarray(mine, np.float64) - ref).max() / (np.abs(ref).max() + 1e-12))


def tie_groups(scores: np.ndarray, tol: float) -> list[tuple[int, int]]:
  """Maximal runs [a, b) of a sorted score list whose neighbours differ by <= tol."""
  groups, a = [], 0
  for i in range(1, len(scores) + 1):
    if i == len(scores) or abs(float(scores[i]) - float(scores[i - 1])) > tol:
      groups.append((a, i))
      a = i
  return groups


def tie_aware_order(mine_scores, ref_scores, mine_keys, ref_keys, *, score_tol: float,
                    key_tol: float) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
  """Permutation `perm` with mine[perm] aligned to ref, moving items only inside score ties.

  Both lists are sorted by descending score. A tie is a run of reference scores whose neighbours
  differ by at most `score_tol` (the tolerance the test asserts scores to, i.e. what float32 noise
  may move them by). Inside a tie, each reference item is matched to the one of ours whose key
  (box) agrees within `key_tol`; outside ties the order must be identical. Raises AssertionError
  naming the first position that cannot be matched. Returns the permutation and the swaps as
  (reference position, our position, reference score gap of the tie).
  """
  mine_scores, ref_scores = np.asarray(mine_scores), np.asarray(ref_scores)
  mine_keys, ref_keys = np.asarray(mine_keys, np.float64), np.asarray(ref_keys, np.float64)
  assert len(mine_scores) == len(ref_scores), (len(mine_scores), len(ref_scores))
  perm = np.arange(len(ref_scores))
  swaps = []
  for a, b in tie_groups(ref_scores, score_tol):
    if np.abs(mine_keys[a:b] - ref_keys[a:b]).max(initial=0.0) <= key_tol:
      continue
    gap = float(ref_scores[a:b].max() - ref_scores[a:b].min())
    free = list(range(a, b))
    for j in range(a, b):
      err = [np.abs(mine_keys[k] - ref_keys[j]).max() for k in free]
      if not free or min(err) > key_tol:
        raise AssertionError(
            f"position {j}: no item of ours within {key_tol} of the reference key {ref_keys[j]} "
            f"inside the score tie [{a}, {b}) (score gap {gap:.3g}, tolerance {score_tol})")
      k = free.pop(int(np.argmin(err)))
      perm[j] = k
      if k != j:
        swaps.append((j, k, gap))
  return perm, swaps


def orders(net: dict, d, i: int) -> tuple[np.ndarray, np.ndarray]:
  """Our proposal and detection rows of image i in the reference dump `d`'s order (tie swaps
  only, printed); index our first n rows with them before comparing."""
  n = len(d["proposals_objectness"])
  prop, prop_swaps = tie_aware_order(net["objectness"][i][:n], d["proposals_objectness"],
                                     net["proposals"][i][:n], d["proposals_boxes"],
                                     score_tol=PROPOSAL_SCORE_TOL, key_tol=1e-3)
  m = len(d["det_scores"])
  det, det_swaps = tie_aware_order(net["det_scores"][i][:m], d["det_scores"],
                                   net["det_boxes"][i][:m], d["det_boxes"],
                                   score_tol=DET_SCORE_TOL, key_tol=1e-3)
  if prop_swaps or det_swaps:
    print(f"image {i}: proposal tie swaps {prop_swaps}, detection tie swaps {det_swaps}")
  return prop, det
