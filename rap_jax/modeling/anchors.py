"""Anchors of the original `AnchorGenerator` (SPEC §2.4): Detectron cell anchors on a grid.

Anchor index within a level = (y * W + x) * A + a (row-major positions, ratio fastest), the order
the RPN head outputs are flattened in. Cell anchors are computed in numpy float64 exactly as the
original (`generate_anchors`) and stored as float32.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _whctrs(anchor):
  w = anchor[2] - anchor[0] + 1
  h = anchor[3] - anchor[1] + 1
  return w, h, anchor[0] + 0.5 * (w - 1), anchor[1] + 0.5 * (h - 1)


def _mkanchors(ws, hs, x_ctr, y_ctr):
  ws = ws[:, None]
  hs = hs[:, None]
  return np.hstack((x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1),
                    x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)))


def cell_anchors(stride: int, size: float, aspect_ratios: Sequence[float]) -> np.ndarray:
  """[A, 4] float32 cell anchors of one level (rows = aspect ratios in order)."""
  anchor = np.array([1, 1, stride, stride], dtype=np.float64) - 1
  w, h, x_ctr, y_ctr = _whctrs(anchor)
  area = w * h
  ratios = np.asarray(aspect_ratios, dtype=np.float64)
  ws = np.round(np.sqrt(area / ratios))
  hs = np.round(ws * ratios)
  ratio_anchors = _mkanchors(ws, hs, x_ctr, y_ctr)
  scales = np.array([size], dtype=np.float64) / stride
  out = []
  for a in ratio_anchors:
    w, h, x_ctr, y_ctr = _whctrs(a)
    out.append(_mkanchors(w * scales, h * scales, x_ctr, y_ctr))
  return np.vstack(out).astype(np.float32)


def grid_anchors(stride: int, size: float, aspect_ratios: Sequence[float],
                 grid_hw: tuple[int, int]) -> np.ndarray:
  """[h*w*A, 4] float32 anchors of one level on an (h, w) feature canvas, (y, x, a) order."""
  cells = cell_anchors(stride, size, aspect_ratios)
  h, w = grid_hw
  sx = np.arange(0, w * stride, step=stride, dtype=np.float32)
  sy = np.arange(0, h * stride, step=stride, dtype=np.float32)
  yy, xx = np.meshgrid(sy, sx, indexing="ij")
  shifts = np.stack([xx.ravel(), yy.ravel(), xx.ravel(), yy.ravel()], axis=1)
  return (shifts[:, None, :] + cells[None, :, :]).reshape(-1, 4).astype(np.float32)


def all_cell_anchors(strides: Sequence[int], sizes: Sequence[float],
                     aspect_ratios: Sequence[float]) -> list[np.ndarray]:
  """Cell anchors of every level (what the original stores as `cell_anchors.{l}`)."""
  return [cell_anchors(s, z, aspect_ratios) for s, z in zip(strides, sizes)]
