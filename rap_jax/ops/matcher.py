"""maskrcnn-benchmark's `Matcher` (SPEC §6.1) on static shapes, with valid masks.

For every prediction (anchor or proposal) the best ground truth by quality (IoU, "+1" areas):

  vals, matches = quality.max(over GT)          first maximum on ties, like torch on CPU
  matches[vals < low] = -1                      BELOW_LOW_THRESHOLD
  matches[low <= vals < high] = -2              BETWEEN_THRESHOLDS
  allow_low_quality_matches: for every GT g, every prediction p with
      quality[g, p] == max_p' quality[g, p']   (ties included, whatever that maximum is)
    gets back its unthresholded argmax match.

RPN: Matcher(0.7, 0.3, allow_low_quality_matches=True); ROI heads: Matcher(0.5, 0.5, False).
Padding: invalid GT slots and invalid predictions are given quality -1 (below every IoU), so an
invalid prediction is BELOW_LOW_THRESHOLD and an invalid GT never matches nor takes part in the
low-quality rule. The low-quality maxima are taken over the valid predictions only; for RPN
anchors "valid" means "exists for this image" (inside its padded block), NOT "visible": the
original takes the per-GT maximum over all anchors, visible or not (`rpn/loss.py`), and only
afterwards ignores the invisible ones.
"""
from __future__ import annotations

import jax.numpy as jnp

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(quality: jnp.ndarray, high_threshold: float, low_threshold: float,
          allow_low_quality_matches: bool, gt_valid: jnp.ndarray | None = None,
          pred_valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """Matched GT index of every prediction.

  Args:
    quality: [G, N] float32 match quality (IoU of GT g with prediction n), as `boxlist_iou(
      target, proposals)`.
    high_threshold, low_threshold: the Matcher's thresholds (low <= high); float32 compares.
    allow_low_quality_matches: the Matcher flag (see module docstring).
    gt_valid: [G] bool real GT slots (default all).
    pred_valid: [N] bool existing predictions (default all).
  Returns:
    [N] int32: GT index in [0, G), -1 (below low), or -2 (between thresholds).
  """
  if low_threshold > high_threshold:
    raise ValueError(f"low_threshold {low_threshold} > high_threshold {high_threshold}")
  g, n = quality.shape
  if gt_valid is None:
    gt_valid = jnp.ones((g,), bool)
  if pred_valid is None:
    pred_valid = jnp.ones((n,), bool)
  if g == 0:
    return jnp.full((n,), BELOW_LOW_THRESHOLD, jnp.int32)
  pair_valid = gt_valid[:, None] & pred_valid[None, :]
  q = jnp.where(pair_valid, quality, jnp.float32(-1.0))  # [G, N]
  vals = jnp.max(q, axis=0)  # [N]
  all_matches = jnp.argmax(q, axis=0).astype(jnp.int32)  # first maximum
  high = jnp.float32(high_threshold)
  low = jnp.float32(low_threshold)
  matches = jnp.where(vals < low, BELOW_LOW_THRESHOLD,
                      jnp.where(vals < high, BETWEEN_THRESHOLDS, all_matches))
  if allow_low_quality_matches:
    best = jnp.max(q, axis=1)  # [G] highest quality of each GT
    is_best = (q == best[:, None]) & pair_valid  # [G, N]
    low_quality = jnp.any(is_best, axis=0)  # [N]
    matches = jnp.where(low_quality, all_matches, matches)
  return matches.astype(jnp.int32)
