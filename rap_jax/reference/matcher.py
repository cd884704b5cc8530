"""Numpy loop references of the training-target rules (tests only; never imported by the package).

`match` follows maskrcnn-benchmark's `Matcher.__call__` + `set_low_quality_matches_` step by
step on the real (unpadded) GT and predictions; `relation_pairs` follows
`relation_head/loss.py::RelationLossComputation.__call__`'s double loop; `sample_counts` is the
count rule of `BalancedPositiveNegativeSampler`.
"""
from __future__ import annotations

import numpy as np

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(quality: np.ndarray, high: float, low: float, allow_low_quality: bool) -> np.ndarray:
  """quality [G, N] float32 (G >= 1) -> matches [N] int (GT index, -1 or -2)."""
  g, n = quality.shape
  matches = np.zeros(n, np.int64)
  vals = np.zeros(n, np.float32)
  for j in range(n):
    best = 0
    for i in range(1, g):  # torch max(dim=0): first maximum
      if quality[i, j] > quality[best, j]:
        best = i
    matches[j] = best
    vals[j] = quality[best, j]
  all_matches = matches.copy()
  for j in range(n):
    if vals[j] < np.float32(low):
      matches[j] = BELOW_LOW_THRESHOLD
    elif vals[j] < np.float32(high):
      matches[j] = BETWEEN_THRESHOLDS
  if allow_low_quality:
    for i in range(g):
      highest = quality[i].max()
      for j in range(n):
        if quality[i, j] == highest:
          matches[j] = all_matches[j]
  return matches


def sample_counts(labels: np.ndarray, batch_size_per_image: int,
                  positive_fraction: float) -> tuple[int, int]:
  """(num_pos, num_neg) the original's sampler draws for labels (>= 1 pos, 0 neg, -1 ignored)."""
  num_pos = min(int((labels >= 1).sum()), int(batch_size_per_image * positive_fraction))
  num_neg = min(int((labels == 0).sum()), batch_size_per_image - num_pos)
  return num_pos, num_neg


def relation_pairs(instance_ids, relations: set) -> list[tuple[int, int, int, int]]:
  """Contributing (i, j, front, back) pairs of one image, in the original's loop order.

  instance_ids: the positives' GT instance ids in ROI order; relations: {(front_id, back_id)}.
  """
  out = []
  for i in range(len(instance_ids)):
    for j in range(i, len(instance_ids)):
      a, b = int(instance_ids[i]), int(instance_ids[j])
      if (a, b) in relations:
        out.append((i, j, i, j))
      elif (b, a) in relations:
        out.append((i, j, j, i))
  return out
