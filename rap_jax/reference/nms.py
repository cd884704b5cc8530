"""Greedy NMS as the original's kernels (SPEC §2.10), one box at a time."""
from __future__ import annotations

import numpy as np


def iou_one(a, b) -> np.float32:
  """IoU of two xyxy boxes in float32 with "+1" areas (the kernels' `devIoU`)."""
  f = np.float32
  left, right = max(a[0], b[0]), min(a[2], b[2])
  top, bottom = max(a[1], b[1]), min(a[3], b[3])
  width = max(f(right - left + f(1)), f(0))
  height = max(f(bottom - top + f(1)), f(0))
  inter = f(width * height)
  sa = f((a[2] - a[0] + f(1)) * (a[3] - a[1] + f(1)))
  sb = f((b[2] - b[0] + f(1)) * (b[3] - b[1] + f(1)))
  return f(inter / f(sa + sb - inter))


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, strict: bool = True) -> list[int]:
  """Kept indices in ASCENDING order, as `nms.cu` / `nms_cpu.cpp` return them.

  Boxes are visited by descending score (stable for ties); a kept box suppresses every later box
  whose IoU is `> threshold` (strict, CUDA) or `>= threshold` (CPU kernel).
  """
  boxes = np.asarray(boxes, np.float32)
  order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
  suppressed = [False] * len(scores)
  thr = np.float32(threshold)
  for a, i in enumerate(order):
    if suppressed[i]:
      continue
    for j in order[a + 1:]:
      if suppressed[j]:
        continue
      o = iou_one(boxes[i], boxes[j])
      if (o > thr) if strict else (o >= thr):
        suppressed[j] = True
  return [i for i in range(len(scores)) if not suppressed[i]]
