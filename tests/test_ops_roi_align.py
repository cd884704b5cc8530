"""ROIAlign and multi-level pooling (rap_jax/ops/roi_align.py, rap_jax/ops/poolers.py).

Oracle: the bin-by-bin loop of rap_jax/reference/roi_align.py (`ROIAlign_cpu.cpp`, aligned=False).

Exactness: with dyadic inputs (hand-drawn cases) every operation is exact and the op equals the
reference bit for bit. With random floats the jitted op differs in the last bits, for two XLA
reasons (both measured here, neither can be switched off by a flag):
* `roi / P` with a constant P is rewritten by XLA's algebraic simplifier into `roi * (1/P)`
  (also op by op), so the bin size may be off by one ulp;
* XLA:CPU contracts `a*b + c` into FMA (sample coordinates, the 4-tap blend).
A sample coordinate y then moves by a few ulps of |y|, and the value by at most 2*max|f| per unit
of y: the tolerance is `(8 + 4*max|y|) * eps * max|f|` (measured: ~12 eps*max|f|).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rap_jax.ops.poolers import map_levels, pool_rois
from rap_jax.ops.roi_align import roi_align
from rap_jax.reference import roi_align as ref

EPS = np.finfo(np.float32).eps
SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


def _tol(feat, max_coord):
  return (8 + 4 * max_coord) * EPS * float(np.abs(feat).max())


def _linear_map(h=5, w=5):
  """f(y, x) = 5y + x + 1 on a 5x5 map (bilinear interpolation of a linear map is exact):

     1  2  3  4  5
     6  7  8  9 10
    11 12 13 14 15
    16 17 18 19 20
    21 22 23 24 25
  """
  return (5 * np.arange(h)[:, None] + np.arange(w)[None, :] + 1).astype(np.float32)[..., None]


def test_hand_drawn_inside():
  # Box [1, 1, 3, 3] at scale 1, P = 4: roi 2, bin .5, bin centres 1.25 1.75 2.25 2.75;
  # averaging 2x2 samples of a linear map gives its value at the bin centre, 5y + x + 1.
  feat = _linear_map()
  box = np.array([[1, 1, 3, 3]], np.float32)
  expected = [[8.5, 9, 9.5, 10], [11, 11.5, 12, 12.5], [13.5, 14, 14.5, 15], [16, 16.5, 17, 17.5]]
  out = roi_align(feat, box, 1.0, 4, 2)[0, :, :, 0]
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(ref.roi_align(feat, box, 1.0, 4, 2)[0, :, :, 0], expected)
  # The same box in input pixels of a stride-4 level: [4, 4, 12, 12] at scale 1/4.
  np.testing.assert_array_equal(roi_align(feat, box * 4, 0.25, 4, 2)[0, :, :, 0], expected)


def test_hand_drawn_edges():
  feat = _linear_map()
  # Box [3, 3, 5, 5], P = 2, bin 1: samples 3.25 3.75 | 4.25 4.75. Beyond the last row/col
  # (y > H-1 = 4) but not beyond H = 5 a sample is clamped to row/col 4:
  #
  #    x: 3   3.5   4   4.5   5
  #   y=3 +----------+.........+
  #       |  f(3.5)  | clamped |    -> [[f(3.5, 3.5), f(3.5, 4)],
  #   y=4 +----------+.........+        [f(4, 3.5),   f(4, 4)  ]]
  #       : clamped  : clamped :
  #   y=5 +..........+.........+
  box = np.array([[3, 3, 5, 5]], np.float32)
  expected = [[22, 22.5], [24.5, 25]]
  np.testing.assert_array_equal(roi_align(feat, box, 1.0, 2, 2)[0, :, :, 0], expected)
  np.testing.assert_array_equal(ref.roi_align(feat, box, 1.0, 2, 2)[0, :, :, 0], expected)
  # Box [-2, -2, 0, 0]: samples -1.75 -1.25 (< -1: zero) | -.75 -.25 (clamped to 0: f(0, 0) = 1).
  box = np.array([[-2, -2, 0, 0]], np.float32)
  expected = [[0, 0], [0, 1]]
  np.testing.assert_array_equal(roi_align(feat, box, 1.0, 2, 2)[0, :, :, 0], expected)
  np.testing.assert_array_equal(ref.roi_align(feat, box, 1.0, 2, 2)[0, :, :, 0], expected)
  # Entirely beyond the map (every sample > W = 5): zeros.
  box = np.array([[5.5, 0, 7.5, 2]], np.float32)
  np.testing.assert_array_equal(roi_align(feat, box, 1.0, 2, 2), 0)
  # A tiny box (roi < 1 becomes 1): [1.25, 2, 1.5, 2.25] -> bins of .5 from (2, 1.25):
  # centres y 2.25 2.75, x 1.5 2.0.
  box = np.array([[1.25, 2, 1.5, 2.25]], np.float32)
  expected = [[13.75, 14.25], [16.25, 16.75]]
  np.testing.assert_array_equal(roi_align(feat, box, 1.0, 2, 2)[0, :, :, 0], expected)
  np.testing.assert_array_equal(ref.roi_align(feat, box, 1.0, 2, 2)[0, :, :, 0], expected)


def _random_boxes(rng, k, h, w, scale):
  """Boxes in input pixels: inside, partly/fully outside, tiny, and touching the last row/col."""
  hi, wi = h / scale, w / scale
  x1 = rng.uniform(-0.3 * wi, 1.2 * wi, k)
  y1 = rng.uniform(-0.3 * hi, 1.2 * hi, k)
  bw = np.exp(rng.uniform(np.log(0.5), np.log(1.5 * wi), k))
  bh = np.exp(rng.uniform(np.log(0.5), np.log(1.5 * hi), k))
  boxes = np.stack([x1, y1, x1 + bw, y1 + bh], 1)
  n = k // 8
  boxes[:n, 2] = (w - 1) / scale  # x2 exactly on the last column
  boxes[n:2 * n, 3] = h / scale  # y2 at H: last samples in (H-1, H]
  boxes[2 * n:3 * n, 2:] = boxes[2 * n:3 * n, :2] + rng.uniform(0, 2, (n, 2))  # roi < 1
  boxes[3 * n:4 * n] = [-50, -50, -10, -10]  # fully outside
  return boxes.astype(np.float32)


@pytest.mark.parametrize("pooled", [7, 14])
def test_random_matches_reference_garbage_canvas(pooled):
  # The valid 13x17 map sits in a 16x20 canvas whose rest is NaN (and the copy below: 1e30);
  # nothing from outside the valid block may reach the output.
  rng = np.random.default_rng(pooled)
  h, w, c, scale = 13, 17, 3, 0.25
  feat = rng.standard_normal((h, w, c)).astype(np.float32)
  boxes = _random_boxes(rng, 96, h, w, scale)
  fn = jax.jit(lambda f, b, hh, ww: roi_align(f, b, scale, pooled, 2, feature_hw=(hh, ww)))
  expected = ref.roi_align(feat, boxes, scale, pooled, 2)
  for fill in (np.nan, 1e30):
    canvas = np.full((16, 20, c), fill, np.float32)
    canvas[:h, :w] = feat
    out = np.asarray(fn(canvas, boxes, h, w))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, rtol=0, atol=_tol(feat, max(h, w)))
  assert np.abs(expected).max() > 0 and (expected[3 * 12:4 * 12] == 0).all()


def test_disable_jit_and_full_canvas():
  rng = np.random.default_rng(1)
  h, w, c = 9, 11, 2
  feat = rng.standard_normal((h, w, c)).astype(np.float32)
  boxes = _random_boxes(rng, 16, h, w, 0.5)
  expected = ref.roi_align(feat, boxes, 0.5, 7, 2)
  with jax.disable_jit():
    out = np.asarray(roi_align(feat, boxes, 0.5, 7, 2))
  np.testing.assert_allclose(out, expected, rtol=0, atol=_tol(feat, max(h, w)))
  with pytest.raises(ValueError, match="adaptive"):
    roi_align(feat, boxes, 0.5, 7, 0)


def _ref_levels(boxes):
  """FPN eq. 1 in float32 numpy, as `LevelMapper` evaluates it (index 0 = P2)."""
  f = np.float32
  area = (boxes[:, 2] - boxes[:, 0] + f(1)) * (boxes[:, 3] - boxes[:, 1] + f(1))
  lvl = np.floor(f(4) + np.log2(np.sqrt(area) / f(224) + f(1e-6)))
  return np.clip(lvl, 2, 5).astype(np.int32) - 2


def test_map_levels_boundaries():
  # Square boxes of side s ("+1" sizes): sqrt(area) = s exactly. With the 1e-6 the boundaries
  # sit just below 112, 224, 448: s = 112 goes to P3, 111 to P2; 224 -> P4, 448 -> P5.
  f = np.float32
  side = np.array([1, 56, 111, 112, 113, 223, 224, 225, 447, 448, 449, 1000, 5000], np.float32)
  boxes = np.stack([np.zeros_like(side), np.zeros_like(side), side - 1, side - 1], 1)
  lv = np.asarray(jax.jit(lambda b: map_levels(b, SCALES))(boxes))
  assert lv.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
  np.testing.assert_array_equal(lv, _ref_levels(boxes))
  # Dense float32 sweeps across each boundary (the eps moves it to s = 224*(1-1e-6) etc.):
  # the jitted level equals the float32 numpy evaluation for every box.
  sweeps = [np.float32(b) * np.linspace(1 - 2e-5, 1 + 2e-5, 4001, dtype=np.float64)
            for b in (112, 224, 448)]
  side = np.concatenate(sweeps).astype(np.float32)
  boxes = np.stack([np.zeros_like(side), np.zeros_like(side), side - f(1), side - f(1)], 1)
  lv = np.asarray(jax.jit(lambda b: map_levels(b, SCALES))(boxes))
  np.testing.assert_array_equal(lv, _ref_levels(boxes))
  assert set(np.unique(lv[:4001])) == {0, 1} and set(np.unique(lv[-4001:])) == {2, 3}
  # Random rectangles anywhere.
  rng = np.random.default_rng(0)
  xy = rng.uniform(-100, 600, (5000, 2))
  wh = np.exp(rng.uniform(0, np.log(900), (5000, 2)))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(jax.jit(lambda b: map_levels(b, SCALES))(boxes)),
                                _ref_levels(boxes))


def test_pool_rois_matches_per_level_reference():
  # An image padded to 128x160 (stride-32 multiple) whose valid resized size is 100x150: the
  # levels are canvases 32x40, 16x20, 8x10, 4x5 with valid blocks 25x38, 13x19, 7x10, 4x5
  # (the rest is NaN). Each box is pooled from its own level only.
  rng = np.random.default_rng(5)
  c = 3
  canvases, valid_hw, feats = [], [], []
  for lvl, scale in enumerate(SCALES):
    hc, wc = int(128 * scale), int(160 * scale)
    vh, vw = -(-100 // 2**(lvl + 2)), -(-150 // 2**(lvl + 2))
    feat = rng.standard_normal((vh, vw, c)).astype(np.float32)
    canvas = np.full((hc, wc, c), np.nan, np.float32)
    canvas[:vh, :vw] = feat
    canvases.append(canvas)
    valid_hw.append((vh, vw))
    feats.append(feat)
  # P6 (a fifth feature) is passed too and must be ignored.
  canvases.append(np.full((2, 3, c), np.nan, np.float32))
  k = 64
  side = np.exp(rng.uniform(np.log(20), np.log(700), (k, 2)))
  side[:6] = [[111, 111], [112, 112], [223, 223], [224, 224], [447, 447], [448, 448]]
  xy = rng.uniform(-40, 160, (k, 2))
  boxes = np.concatenate([xy, xy + side - 1], 1).astype(np.float32)
  levels = _ref_levels(boxes)
  assert set(levels.tolist()) == {0, 1, 2, 3}
  assert levels[:6].tolist() == [0, 1, 1, 2, 2, 3]
  for pooled in (7, 14):
    fn = jax.jit(lambda fs, b, hws: pool_rois(fs, b, SCALES, pooled, 2, feature_hws=hws))
    out = np.asarray(fn(canvases, boxes, [jnp.asarray(v, jnp.int32) for v in valid_hw]))
    assert np.isfinite(out).all()
    for i, lvl in enumerate(levels):
      expected = ref.roi_align(feats[lvl], boxes[i:i + 1], SCALES[lvl], pooled, 2)[0]
      np.testing.assert_allclose(out[i], expected, rtol=0, atol=_tol(feats[lvl], 40),
                                 err_msg=f"box {i} level {lvl}")
  # Default feature_hws (whole canvases), op by op.
  full = [np.nan_to_num(cv[:, :, :]) for cv in canvases[:4]]
  with jax.disable_jit():
    out = np.asarray(pool_rois(full, boxes[:8], SCALES, 7, 2))
  for i in range(8):
    lvl = levels[i]
    expected = ref.roi_align(full[lvl], boxes[i:i + 1], SCALES[lvl], 7, 2)[0]
    np.testing.assert_allclose(out[i], expected, rtol=0, atol=_tol(full[lvl], 40))
