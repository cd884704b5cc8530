"""Loss formulas of the original (SPEC §6.1 table) and their per-image partial sums.

Each `*_sums` function handles ONE image (vmap it) and returns float32 sums and counts; the
batch-level normalisation of the original (means over all sampled anchors / ROIs of a GPU's
batch, semantic loss over its labelled pixels, relation loss over its pairs) is
`group_normalize`, done by `PanopticRCNN.losses`:

  'per_device' (config.train.loss_normalization, the default: the original) - the batch splits
      into one group per device (contiguous rows, mesh order); each group's loss is
      sum(its sums) / sum(its counts), as each GPU of the original normalises by its own counts,
      and the loss is the MEAN over groups: DistributedDataParallel averages the per-GPU
      gradients, and the gradient of the mean of per-group losses is exactly that average;
  'global' - one group: sum(sums) / sum(counts) over the whole (global) batch.

With one device, or when every device has the same counts, both are the same number.

Formulas (float32, as PyTorch 1.0):
  smooth_l1(d, beta)    = 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta  (smooth_l1_loss.py)
  bce_with_logits(x, y) = max(x, 0) - x y + log(1 + exp(-|x|)), backward sigmoid(x) - y
                          (F.binary_cross_entropy_with_logits)
  cross_entropy         = logsumexp(x) - x[label]                            (F.cross_entropy)
  ranking(z_f, z_b)     = log(1 + exp(z_f - z_b))   literally, as layers/ranking_loss.py: it
                          overflows to inf for z_f - z_b > 88.7 (float32) and rounds to 0 below
                          about -16.6, exactly like the original (no softplus); opt-in softplus
                          with model.roi_heads.relation.stable_ranking_loss = True
  bce(p, t)             = -(t max(log p, -100) + (1 - t) max(log(1 - p), -100))  (nn.BCELoss), with
                          PyTorch's backward (p - t) / max(p (1 - p), 1e-12)
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from rap_jax.ops.box_coder import encode_boxes
from rap_jax.ops.resize import interpolation_matrix

# The original's loss dict order (GeneralizedRCNN: ROI heads, RPN, semantic); the total is the
# float32 sum in this order (engine/trainer.py `sum(loss for loss in loss_dict.values())`).
LOSS_ORDER = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_relation",
              "loss_objectness", "loss_rpn_box_reg", "loss_semantic")


def total_loss(losses: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
  """float32 sum of the losses present, in the original's order (`LOSS_ORDER`)."""
  keys = [k for k in LOSS_ORDER if k in losses]
  extra = sorted(set(losses) - set(LOSS_ORDER))
  if extra:
    raise KeyError(f"unknown losses {extra}")
  total = jnp.float32(0.0)
  for k in keys:
    total = total + losses[k].astype(jnp.float32)
  return total


# -------------------------------------------------------------------------- elementwise terms


def smooth_l1(diff: jnp.ndarray, beta: float) -> jnp.ndarray:
  """maskrcnn-benchmark `smooth_l1_loss` before the sum, elementwise."""
  n = jnp.abs(diff)
  b = jnp.float32(beta)
  return jnp.where(n < b, 0.5 * n * n / b, n - 0.5 * b)


def bce_with_logits(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """Elementwise binary cross-entropy on logits, with PyTorch's backward sigmoid(x) - y.

  The forward is the log1p form (accurate to 1 ulp; torch's own forward cancels to ~1 ulp of |x|
  for small losses); the explicit backward also gives torch's 0.5 - y at x == 0, where autodiff
  of max/abs would not. No gradient flows to the targets y.
  """
  return _bce_with_logits(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))


@jax.custom_vjp
def _bce_with_logits(x, y):
  return jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _bce_logits_fwd(x, y):
  return _bce_with_logits(x, y), (x, y)


def _bce_logits_bwd(res, g):
  x, y = res
  return g * (jax.nn.sigmoid(x) - y), jnp.zeros_like(y)


_bce_with_logits.defvjp(_bce_logits_fwd, _bce_logits_bwd)


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """[..., C] logits, [...] int labels -> [...] softmax cross-entropy."""
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return lse - picked


def ranking_loss(z_front: jnp.ndarray, z_back: jnp.ndarray, stable: bool = False) -> jnp.ndarray:
  """`log(1 + exp(z_front - z_back))` (r = +1 of layers/ranking_loss.py).

  Literal by default, as the original: inf (and a NaN gradient) once z_front - z_back > 88.7.
  `stable=True` is softplus (same value where the literal form is finite and not rounded to 0),
  a deliberate departure for runs that diverge (e.g. from scratch).
  """
  d = z_front - z_back
  return jax.nn.softplus(d) if stable else jnp.log(1.0 + jnp.exp(d))


def bce_probs(p: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
  """`nn.BCELoss` elementwise on probabilities (logs clamped at -100), PyTorch's backward."""
  return _bce_probs(jnp.asarray(p, jnp.float32), jnp.asarray(t, jnp.float32))


@jax.custom_vjp
def _bce_probs(p, t):
  return -(t * jnp.maximum(jnp.log(p), -100.0) + (1.0 - t) * jnp.maximum(jnp.log1p(-p), -100.0))


def _bce_probs_fwd(p, t):
  return _bce_probs(p, t), (p, t)


def _bce_probs_bwd(res, g):
  p, t = res
  grad_p = g * (p - t) / jnp.maximum(p * (1.0 - p), jnp.float32(1e-12))
  return grad_p, jnp.zeros_like(t)


_bce_probs.defvjp(_bce_probs_fwd, _bce_probs_bwd)


# ---------------------------------------------------------------------- per-image partial sums


def rpn_loss_sums(objectness: jnp.ndarray, deltas: jnp.ndarray, anchors: jnp.ndarray,
                  gt_boxes: jnp.ndarray, matched: jnp.ndarray, labels: jnp.ndarray,
                  sampled: jnp.ndarray) -> dict:
  """RPN terms of one image (`RPNLossComputation.__call__`).

  Args:
    objectness: [A] logits; deltas: [A, 4]; anchors: [A, 4] (level, y, x, a order).
    gt_boxes: [M, 4]; matched: [A] int32; labels: [A] int32 (1/0/-1).
    sampled: [S] int32 sampled anchor indices (-1 = empty slot).
  Returns:
    dict: `objectness` sum of BCE over sampled, `box_reg` sum of smooth-L1 (beta 1/9) over the
    sampled positives, `count` sampled anchors, `num_pos` sampled positives.
  """
  valid = sampled >= 0
  i = jnp.maximum(sampled, 0)
  lab = labels[i]
  pos = valid & (lab == 1)
  obj = bce_with_logits(objectness[i], (lab == 1).astype(jnp.float32))
  gt = gt_boxes[jnp.maximum(matched[i], 0)]
  target = encode_boxes(gt, anchors[i], (1.0, 1.0, 1.0, 1.0))  # [S, 4]
  # Mask BEFORE the loss: a non-finite target of an unused row must not reach the gradient.
  diff = jnp.where(pos[:, None], deltas[i] - target, 0.0)
  reg = jnp.sum(smooth_l1(diff, 1.0 / 9), axis=-1)
  return dict(objectness=jnp.sum(jnp.where(valid, obj, 0.0)),
              box_reg=jnp.sum(jnp.where(pos, reg, 0.0)),
              count=jnp.sum(valid, dtype=jnp.int32), num_pos=jnp.sum(pos, dtype=jnp.int32))


def box_loss_sums(class_logits: jnp.ndarray, box_regression: jnp.ndarray, labels: jnp.ndarray,
                  regression_targets: jnp.ndarray, valid: jnp.ndarray) -> dict:
  """Box-head terms of one image's sampled ROIs (`FastRCNNLossComputation.__call__`).

  Args:
    class_logits: [S, C]; box_regression: [S, 4C]; labels: [S] int32 (0 background);
    regression_targets: [S, 4] (weights 10, 10, 5, 5; only the positives' rows are read, others
      may be non-finite); valid: [S] bool sampled slots.
  Returns:
    dict: `classifier` CE sum, `box_reg` smooth-L1 (beta 1) sum of the GT-class deltas of the
    positives, `count` sampled ROIs, `num_pos` positives.
  """
  lab = jnp.where(valid, labels, 0)
  ce = cross_entropy(class_logits, lab)
  pos = valid & (lab > 0)
  cols = 4 * lab[:, None] + jnp.arange(4)[None, :]  # [S, 4]
  pred = jnp.take_along_axis(box_regression, cols, axis=1)
  # Zero-area proposals (kept by the original, min_size 0) give inf / NaN targets on background
  # rows, which the original never reads; mask before the loss so they cannot reach gradients.
  diff = jnp.where(pos[:, None], pred - regression_targets, 0.0)
  reg = jnp.sum(smooth_l1(diff, 1.0), axis=-1)
  return dict(classifier=jnp.sum(jnp.where(valid, ce, 0.0)),
              box_reg=jnp.sum(jnp.where(pos, reg, 0.0)),
              count=jnp.sum(valid, dtype=jnp.int32), num_pos=jnp.sum(pos, dtype=jnp.int32))


def mask_loss_sums(mask_logits: jnp.ndarray, targets: jnp.ndarray, valid: jnp.ndarray) -> dict:
  """Mask terms of one image: logits/targets [P, 28, 28] at the GT class, valid [P].

  Returns dict: `mask` BCE-with-logits sum, `count` valid pixels (positives x 28 x 28).
  """
  bce = bce_with_logits(mask_logits, targets)
  m = jnp.broadcast_to(valid[:, None, None], bce.shape)
  return dict(mask=jnp.sum(jnp.where(m, bce, 0.0)), count=jnp.sum(m, dtype=jnp.int32))


def semantic_loss_sums(quarter_logits: jnp.ndarray, labels: jnp.ndarray, padded_hw: jnp.ndarray,
                       resized_hw: jnp.ndarray) -> dict:
  """Semantic terms of one image (SPEC §2.8, `semantic_head.py`).

  quarter logits -> x4 bilinear (align_corners=True) to the padded size -> bilinear
  (align_corners=True) to the label size (h', w'): the padding is squeezed into the image ->
  CE summed over pixels with label > 0 (0 = ignore). Both resizes run as one interpolation
  matrix per axis (float32 rounding apart, the original's two `F.interpolate` calls).

  Args:
    quarter_logits: [hq, wq, C] (valid in padded_hw / 4).
    labels: [Hc, Wc] uint8 (valid in resized_hw, 0 outside).
    padded_hw, resized_hw: [2] int32.
  Returns:
    dict: `semantic` CE sum, `count` labelled pixels.
  """
  hq, wq, _ = quarter_logits.shape
  hl, wl = labels.shape
  # Both resizes as one matrix per axis (`interpolation_matrix`, composed): the same values up to
  # float32 rounding, and a backward pass of small matmuls instead of scatter-adds over every
  # full-resolution logit (the gather form took a third of a CPU training step).
  mat = lambda out_len, in_len, n_in, n_out: interpolation_matrix(out_len, in_len, n_in, n_out,
                                                                 align_corners=True)
  hi = jax.lax.Precision.HIGHEST
  my = jnp.matmul(mat(hl, 4 * hq, padded_hw[0], resized_hw[0]),
                  mat(4 * hq, hq, padded_hw[0] // 4, padded_hw[0]), precision=hi)
  mx = jnp.matmul(mat(wl, 4 * wq, padded_hw[1], resized_hw[1]),
                  mat(4 * wq, wq, padded_hw[1] // 4, padded_hw[1]), precision=hi)
  rows = jnp.einsum("oh,hwc->owc", my, quarter_logits, precision=hi)
  logits = jnp.einsum("pw,owc->opc", mx, rows, precision=hi)
  lab = labels.astype(jnp.int32)
  ce = cross_entropy(logits, lab)
  m = lab > 0
  return dict(semantic=jnp.sum(jnp.where(m, ce, 0.0)), count=jnp.sum(m, dtype=jnp.int32))


def relation_loss_sums(values: jnp.ndarray, signs: jnp.ndarray, stable: bool = False) -> dict:
  """RAP ranking terms of one image: values [P] relation values, signs [P, P] from
  `targets.relation_pairs`; `stable` see `ranking_loss`. Returns dict: `relation` sum, `count`
  contributing pairs."""
  zi = values[:, None]
  zj = values[None, :]
  front = jnp.where(signs > 0, zi, zj)
  back = jnp.where(signs > 0, zj, zi)
  on = signs != 0
  loss = ranking_loss(jnp.where(on, front, 0.0), jnp.where(on, back, 0.0), stable)
  return dict(relation=jnp.sum(jnp.where(on, loss, 0.0)), count=jnp.sum(on, dtype=jnp.int32))


def ocfusion_loss_sums(probs: jnp.ndarray, targets: jnp.ndarray, valid: jnp.ndarray,
                       num_candidates: jnp.ndarray) -> dict:
  """OCFusion terms of one image (`ocfusion_head.py`): BCE mean over the used samples times
  the number of candidates before subsampling.

  Args:
    probs: [K] head outputs p(first occludes second); targets: [K]; valid: [K] used slots.
    num_candidates: int32 M_i, all candidate samples of the image.
  Returns:
    dict: `relation` = mean_used(BCE) * M_i (0 without samples), `count` = M_i.
  """
  bce = bce_probs(jnp.where(valid, probs, 0.5), targets)
  used = jnp.sum(valid, dtype=jnp.int32)
  mean = jnp.sum(jnp.where(valid, bce, 0.0)) / jnp.maximum(used, 1).astype(jnp.float32)
  return dict(relation=mean * num_candidates.astype(jnp.float32), count=num_candidates)


def normalize(total: jnp.ndarray, count: jnp.ndarray) -> jnp.ndarray:
  """`total / count` (elementwise), 0 when nothing was counted (the original's `if count`)."""
  return total / jnp.maximum(count, 1).astype(jnp.float32)


def group_normalize(sums: jnp.ndarray, counts: jnp.ndarray, groups: int = 1) -> jnp.ndarray:
  """Per-image sums and counts [B] -> the batch loss (module docstring).

  The batch splits into `groups` contiguous groups of B / groups images (the devices of the data
  mesh, in mesh order); each group is normalised by its own counts (0 if it counted nothing,
  e.g. a device without relation pairs: the original's `if count` guard), and the result is the
  mean over groups. groups=1: sum(sums) / sum(counts) over the whole batch.
  """
  n = sums.shape[0]
  if groups < 1 or n % groups:
    raise ValueError(f"loss normalisation: a batch of {n} images does not split into {groups} "
                     "equal groups (one per device)")
  total = jnp.sum(sums.reshape(groups, n // groups), axis=1)
  count = jnp.sum(counts.reshape(groups, n // groups), axis=1)
  return jnp.mean(normalize(total, count))
