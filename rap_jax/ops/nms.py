"""Greedy non-maximum suppression with static shapes (SPEC §2.10).

The original sorts boxes by score (descending), walks them greedily and returns the surviving
ORIGINAL indices in ascending order. Here the survivors are returned as a boolean mask over the
input, which is that ascending order for free. Suppression compares `IoU > thr` (CUDA kernel,
the reference device, `strict=True`) or `IoU >= thr` (the CPU kernel `nms_cpu.cpp`, which the
fixtures were produced with, `strict=False`). IoU uses "+1" areas in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rap_jax.ops import boxes as box_ops


def nms_mask(boxes: jnp.ndarray, scores: jnp.ndarray, valid: jnp.ndarray,
             iou_threshold: float, strict: bool = True) -> jnp.ndarray:
  """Boolean keep-mask of greedy NMS over one set of boxes.

  Args:
    boxes: [N, 4] float32 xyxy.
    scores: [N] float32; higher first. Ties keep input order (stable sort).
    valid: [N] bool; invalid entries neither survive nor suppress.
    iou_threshold: suppression threshold.
    strict: True suppresses on `iou > thr` (CUDA), False on `iou >= thr` (CPU kernel).
  Returns:
    keep: [N] bool, in input order.
  """
  n = boxes.shape[0]
  if n == 0:
    return jnp.zeros((0,), bool)
  key = jnp.where(valid, scores, -jnp.inf)
  order = jnp.argsort(-key, stable=True)  # [N]
  b = boxes[order]
  v = valid[order]
  iou = box_ops.pairwise_iou(b, b)  # [N, N] in sorted order
  thr = jnp.float32(iou_threshold)
  over = (iou > thr) if strict else (iou >= thr)
  later = jnp.arange(n)[None, :] > jnp.arange(n)[:, None]
  over = over & later  # row i may only suppress later (lower-score) boxes

  keep_sorted = greedy_fixed_point(over, v)
  return jnp.zeros((n,), bool).at[order].set(keep_sorted)


def greedy_fixed_point(over: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """Greedy NMS survivors of boxes already in priority order.

  over: [N, N] bool, over[j, i] = box j (earlier) suppresses box i if kept (upper triangle).
  valid: [N] bool. Returns keep [N] bool.

  Box i survives iff no EARLIER survivor suppresses it. Iterating
  `keep <- valid & ~any_j(keep_j & over[j, i])` from `keep = valid` makes the first t boxes final
  after t rounds, so it reaches exactly the greedy result; it stops when nothing changes (a few
  rounds in practice: the length of suppression chains).
  """
  def step(keep):
    return valid & ~jnp.any(over & keep[:, None], axis=0)

  def cond(state):
    keep, prev = state
    return jnp.any(keep != prev)

  def body(state):
    keep, _ = state
    return step(keep), keep

  keep0 = step(valid)
  keep, _ = jax.lax.while_loop(cond, body, (step(keep0), keep0))
  return keep


def batched_nms_mask(boxes: jnp.ndarray, scores: jnp.ndarray, valid: jnp.ndarray,
                     iou_threshold: float, strict: bool = True) -> jnp.ndarray:
  """`nms_mask` over leading batch axes: boxes [..., N, 4], scores/valid [..., N] -> [..., N]."""
  fn = lambda b, s, v: nms_mask(b, s, v, iou_threshold, strict)
  for _ in range(boxes.ndim - 2):
    fn = jax.vmap(fn)
  return fn(boxes, scores, valid)
