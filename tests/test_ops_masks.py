"""Mask pasting (rap_jax/ops/masks.py) against `paste_mask` of rap_jax/reference/masks.py.

The outputs are booleans, compared bit for bit, for boxes partly or fully outside the image,
negative, degenerate (w or h <= 1), much larger than the image, touching the last row/col, with
a canvas larger than the image, and with probabilities at and next to 0.5.

One measured exception: jitted, XLA:CPU contracts the bilinear blend `l0*a + l1*b` into FMA (no
flag turns it off), so a resized value within an ulp or two of 0.5 may land on the other side of
`> 0.5` than the plain float32 formula. Op by op (`jax.disable_jit()`) the op is exact. So maps
made of 0.5 and 0.5 +- 1 ulp are compared exactly except at pixels whose reference value lies
within 4 ulps of 0.5 (found by re-running the reference with thresholds 0.5 -+ 4 ulps).
Exact-0.5 plateaus, 0/1 maps and random maps are unaffected and compared exactly everywhere.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

from rap_jax.ops.masks import expand_boxes, paste_masks
from rap_jax.reference.masks import paste_mask

CANVAS = (48, 64)


@pytest.fixture(scope="module")
def paste():
  """One compiled paste for the 48x64 canvas; the image size is a traced argument."""
  return jax.jit(lambda m, b, h, w: paste_masks(m, b, CANVAS, h, w, chunk=16))  # 40 = 2*16 + 8


HALF = np.float32(0.5)
THR_LO = float(HALF - 4 * np.spacing(np.nextafter(HALF, 0)))  # 0.5 - 4 ulps
THR_HI = float(HALF + 4 * np.spacing(HALF))  # 0.5 + 4 ulps


def _kind(i):
  """Kind of map i made by `_maps`: None (uniform random) or 0..3."""
  return (i // 3) % 4 if i % 3 == 0 else None


def _maps(rng, k, m=28):
  """Random probability maps; a third of them contain exact 0.5 values and 0.5 +- 1 ulp."""
  maps = rng.random((k, m, m)).astype(np.float32)
  half = HALF
  for i in range(0, k, 3):
    kind = _kind(i)
    if kind == 0:
      maps[i] = half  # constant 0.5: resized values are 0.5 (or within an ulp of it)
    elif kind == 1:
      y, x = rng.integers(0, m - 8, 2)
      maps[i, y:y + 8, x:x + 8] = half
    elif kind == 2:
      maps[i] = rng.choice([np.nextafter(half, 0), half, np.nextafter(half, 1)], (m, m))
    else:
      maps[i] = np.where(rng.random((m, m)) < 0.5, 0.0, 1.0)
  return maps


def _boxes(rng, k, im_h, im_w):
  """Boxes of every kind (xyxy float32, original-image pixels)."""
  cx = rng.uniform(-0.3 * im_w, 1.3 * im_w, k)
  cy = rng.uniform(-0.3 * im_h, 1.3 * im_h, k)
  bw = np.exp(rng.uniform(np.log(0.1), np.log(2.5 * im_w), k))
  bh = np.exp(rng.uniform(np.log(0.1), np.log(2.5 * im_h), k))
  b = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
  n = k // 10
  b[:n, 2] = im_w - 1  # touching the last column
  b[n:2 * n, 3] = im_h - 1  # touching the last row
  b[2 * n:3 * n, 2] = b[2 * n:3 * n, 0]  # zero width (e.g. clipped at the border)
  b[3 * n:4 * n, 3] = b[3 * n:4 * n, 1] + rng.uniform(0, 1, n)  # height < 1
  b[4 * n:5 * n] = [[-5.5, -3.2, 3.7 * im_w, 2.9 * im_h]] * n  # far larger than the image
  b[5 * n:5 * n + 2] = [[-30.0, -20.0, -2.0, -1.0], [im_w + 1, 0, im_w + 9, 5]]  # outside
  return b.astype(np.float32)


def test_hand_drawn_2x2():
  # M = 2: a 2x2 map of ones padded to 4x4, scale 4/2 = 2. Box [2, 2, 3, 3] expands about its
  # centre 2.5 by 2 -> [1.5, 1.5, 3.5, 3.5] -> int [1, 1, 3, 3] -> 3x3 pixels. Resizing
  # 4 -> 3 (align_corners=False) samples source rows 1/6, 3/2, 17/6:
  #
  #   padded           resized 3x3            pasted into a 5x5 image (> 0.5)
  #   0 0 0 0          .03 .17 .03            . . . . .
  #   0 1 1 0    ->    .17  1  .17     ->     . . . . .
  #   0 1 1 0          .03 .17 .03            . . # . .
  #   0 0 0 0                                 . . . . .
  masks = np.ones((1, 2, 2), np.float32)
  box = np.array([[2, 2, 3, 3]], np.float32)
  expected = np.zeros((5, 5), bool)
  expected[2, 2] = True
  np.testing.assert_array_equal(paste_masks(masks, box, (5, 5), 5, 5)[0], expected)
  np.testing.assert_array_equal(paste_mask(masks[0], box[0], 5, 5), expected)


def test_hand_drawn_degenerate_box():
  # A zero-width box [10, 5, 10, 20] (e.g. a detection clipped to the image border) expands to
  # one column: the 30 -> 1 resize uses scale 0 in PyTorch 1.0, i.e. column 0 of the padded
  # map, which is the zero border: nothing is pasted. (torch 2.x would read the map's centre.)
  masks = np.ones((1, 28, 28), np.float32)
  box = np.array([[10, 5, 10, 20]], np.float32)
  assert not paste_masks(masks, box, (32, 32), 32, 32).any()
  assert not paste_mask(masks[0], box[0], 32, 32).any()
  # One pixel wider ([10, 5, 11, 20] -> columns 9..11) the map is pasted.
  box = np.array([[10, 5, 11, 20]], np.float32)
  out = np.asarray(paste_masks(masks, box, (32, 32), 32, 32)[0])
  np.testing.assert_array_equal(out, paste_mask(masks[0], box[0], 32, 32))
  assert out[:, 10].sum() > 10 and not out[:, :9].any() and not out[:, 12:].any()


def test_expand_boxes():
  # Centre (5, 10), half sizes (2, 4), scale 30/28 in float32: [x_c - w_half, ...].
  b = np.array([[3, 6, 7, 14]], np.float32)
  f = np.float32
  s = f(30 / 28)
  expected = [f(5) - f(2) * s, f(10) - f(4) * s, f(5) + f(2) * s, f(10) + f(4) * s]
  np.testing.assert_array_equal(expand_boxes(b, 30 / 28)[0], expected)


@pytest.mark.parametrize("seed,im_hw", [(0, (37, 45)), (1, (48, 64)), (2, (23, 11))])
def test_random_matches_reference(paste, seed, im_hw):
  rng = np.random.default_rng(seed)
  im_h, im_w = im_hw
  k = 40
  masks = _maps(rng, k)
  boxes = _boxes(rng, k, im_h, im_w)
  out = np.asarray(paste(masks, boxes, im_h, im_w))
  assert not out[:, im_h:].any() and not out[:, :, im_w:].any()  # nothing beyond the image
  for i in range(k):
    expected = paste_mask(masks[i], boxes[i], im_h, im_w)
    got = out[i, :im_h, :im_w]
    if _kind(i) == 2:  # 0.5 +- 1 ulp everywhere: FMA may flip pixels within ulps of 0.5
      near = paste_mask(masks[i], boxes[i], im_h, im_w, threshold=THR_LO) ^ paste_mask(
          masks[i], boxes[i], im_h, im_w, threshold=THR_HI)
      assert not ((got != expected) & ~near).any(), f"{i}: {boxes[i]}"
      got = np.where(near, expected, got)
    np.testing.assert_array_equal(got, expected, err_msg=f"{i}: {boxes[i]}")
  assert out.any(axis=(1, 2)).sum() >= k // 4  # not vacuous: a good share of masks is pasted


def test_exact_half_copy():
  # A box whose expanded int box is exactly 30x30 is an exact copy of the padded map: pixels of
  # probability exactly 0.5 stay 0.5 and are NOT pasted (`> 0.5`); 0.5 + 1 ulp is.
  # [6.7, 4.7, 33.8, 31.8]: half size 13.55 * 30/28 = 14.52 about (20.25, 18.25) -> [5, 3, 34, 32].
  rng = np.random.default_rng(3)
  masks = rng.choice([np.float32(0.25), np.float32(0.5), np.nextafter(np.float32(0.5), 1)],
                     (2, 28, 28)).astype(np.float32)
  boxes = np.array([[6.7, 4.7, 33.8, 31.8], [6.8, 4.8, 33.9, 31.9]], np.float32)
  exp = np.asarray(expand_boxes(boxes, 30 / 28)).astype(np.int32)
  np.testing.assert_array_equal(exp[:, 2:] - exp[:, :2] + 1, 30)
  out = np.asarray(paste_masks(masks, boxes, CANVAS, 40, 50))
  for i in range(2):
    expected = paste_mask(masks[i], boxes[i], 40, 50)
    np.testing.assert_array_equal(out[i, :40, :50], expected)
    assert expected.sum() == (masks[i] > 0.5).sum() > 0  # exactly the pixels above 0.5


def test_disable_jit():
  # Op by op there is no FMA: bit-exact even on the 0.5 +- 1 ulp map (index 6, kind 2).
  rng = np.random.default_rng(0)
  masks = _maps(rng, 40)
  boxes = _boxes(rng, 40, 37, 45)
  pick = [6, 18, 25]  # kind 2 in a small box, kind 2 in a box far larger than the image, random
  assert _kind(6) == _kind(18) == 2
  with jax.disable_jit():
    out = np.asarray(paste_masks(masks[pick], boxes[pick], (40, 48), 37, 45, chunk=3))
  for j, i in enumerate(pick):
    np.testing.assert_array_equal(out[j, :37, :45], paste_mask(masks[i], boxes[i], 37, 45))
  assert not out[:, 37:].any() and not out[:, :, 45:].any()
  assert paste_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32),
                     (24, 32), 20, 30).shape == (0, 24, 32)


def test_paste_windows_contain_every_pasted_pixel():
  """The windows handed to the fusion hold every True pixel (else its results are wrong)."""
  import jax.numpy as jnp
  from rap_jax.ops.masks import paste_masks, paste_windows
  rng = np.random.default_rng(5)
  k, h, w = 64, 48, 64
  probs = rng.uniform(0, 1, (k, 28, 28)).astype(np.float32)
  c = rng.uniform(-20, 80, (k, 2))
  size = rng.uniform(-3, 60, (k, 2))
  boxes = np.concatenate([c, c + size], 1).astype(np.float32)
  masks = np.asarray(paste_masks(jnp.asarray(probs), jnp.asarray(boxes), (h, w), h, w))
  win = np.asarray(paste_windows(jnp.asarray(boxes), h, w))
  for i in range(k):
    y0, x0, y1, x1 = win[i]
    assert 0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w
    inside = np.zeros((h, w), bool)
    inside[y0:y1, x0:x1] = True
    assert not (masks[i] & ~inside).any(), i
