"""Box utilities and the box coder (rap_jax/ops/boxes.py, rap_jax/ops/box_coder.py), SPEC §2.4.

Exactness, measured here: a float32 numpy transcription of SPEC §2.4 equals `decode_boxes` bit for
bit op by op (`jax.disable_jit()`) with the RPN weights (1, 1, 1, 1), given the same float32 exp
(numpy's float32 exp is not correctly rounded; XLA's is within 1 ulp). Jitted, and with the
box-head weights (10, 10, 5, 5) even op by op, the last bit may differ because XLA rewrites
`x / 10` into `x * (1/10)` and, jitted, contracts `dx*w + ctr` into an FMA; the tolerance is
4 ulps of the largest term of each coordinate.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rap_jax.ops import box_coder, boxes as box_ops
from rap_jax.reference.nms import iou_one

F = np.float32
EPS = np.finfo(np.float32).eps
CLIP = math.log(1000.0 / 16)


def _decode_spec(deltas, boxes, weights, exp):
  """SPEC §2.4 decode, literally, in float32 numpy; `exp` is the float32 exp to use.

  Returns the decoded boxes and, per coordinate, the magnitude of its largest term.
  """
  wx, wy, ww, wh = (F(w) for w in weights)
  w = boxes[:, 2] - boxes[:, 0] + F(1)
  h = boxes[:, 3] - boxes[:, 1] + F(1)
  cx = boxes[:, 0] + F(0.5) * w
  cy = boxes[:, 1] + F(0.5) * h
  dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
  dw = np.minimum(deltas[:, 2::4] / ww, F(CLIP))
  dh = np.minimum(deltas[:, 3::4] / wh, F(CLIP))
  pcx = dx * w[:, None] + cx[:, None]
  pcy = dy * h[:, None] + cy[:, None]
  pw = exp(dw) * w[:, None]
  ph = exp(dh) * h[:, None]
  out = np.zeros_like(deltas)
  out[:, 0::4] = pcx - F(0.5) * pw
  out[:, 1::4] = pcy - F(0.5) * ph
  out[:, 2::4] = pcx + F(0.5) * pw - F(1)
  out[:, 3::4] = pcy + F(0.5) * ph - F(1)
  size = np.zeros_like(deltas)
  for k, (c, d, s) in enumerate([(cx, dx * w[:, None], pw), (cy, dy * h[:, None], ph)] * 2):
    size[:, k::4] = np.maximum(np.maximum(np.abs(c)[:, None], np.abs(d)), np.abs(s)) + 1
  return out, size


def _jexp(v):
  return np.asarray(jnp.exp(v))


def _random(rng, k, c=2):
  xy = rng.uniform(-50, 800, (k, 2))
  wh = rng.uniform(0, 300, (k, 2))
  boxes = np.concatenate([xy, xy + wh], 1).astype(F)
  deltas = rng.normal(0, 1.5, (k, 4 * c)).astype(F)
  deltas[: k // 10, 2::4] = 10.0  # clipped at log(1000/16)
  deltas[k // 10:k // 5, 3::4] = -12.0  # no lower clamp
  return deltas, boxes


def test_hand_drawn_decode():
  # Box [10, 20, 29, 59]: w = 20, h = 40, centre (20, 40) ("+1" widths).
  # Deltas (.5, -.25, ln 2, 0) with weights 1: centre (30, 30), size (40, 40) ->
  # [30 - 20, 30 - 20, 30 + 20 - 1, 30 + 20 - 1] = [10, 10, 49, 49]; exp(ln 2) is 2 up to an ulp.
  box = np.array([[10, 20, 29, 59]], F)
  deltas = np.array([[0.5, -0.25, math.log(2), 0.0]], F)
  out = np.asarray(box_coder.decode_boxes(deltas, box, (1, 1, 1, 1)))
  np.testing.assert_allclose(out, [[10, 10, 49, 49]], rtol=0, atol=1e-5)
  # The same with the box-head weights: deltas scaled by (10, 10, 5, 5).
  out = np.asarray(box_coder.decode_boxes(deltas * [10, 10, 5, 5], box, (10, 10, 5, 5)))
  np.testing.assert_allclose(out, [[10, 10, 49, 49]], rtol=0, atol=1e-5)
  # Zero deltas give the box back exactly.
  np.testing.assert_array_equal(box_coder.decode_boxes(np.zeros((1, 4), F), box, (10, 10, 5, 5)),
                                box)


def test_decode_clip():
  # dw, dh are clamped above at log(1000/16) (after dividing by the weight), never below.
  box = np.array([[0, 0, 15, 15]], F)  # 16x16 centred at (8, 8)
  big = np.array([[0, 0, 5.0, 100.0]], F)
  out = np.asarray(box_coder.decode_boxes(big, box, (1, 1, 1, 1)))[0]
  size = F(np.exp(F(CLIP))) * F(16)  # ~1000
  np.testing.assert_allclose(out[2] - out[0] + 1, size, rtol=1e-6)
  np.testing.assert_allclose(out[3] - out[1] + 1, size, rtol=1e-6)
  assert abs(size - 1000) < 1e-3
  # Exactly at the clip: unchanged; just below: smaller.
  at = np.asarray(box_coder.decode_boxes(np.array([[0, 0, CLIP, CLIP]], F), box, (1, 1, 1, 1)))
  np.testing.assert_array_equal(at[0], out)
  small = np.array([[0, 0, -20.0, -20.0]], F)
  out = np.asarray(box_coder.decode_boxes(small, box, (1, 1, 1, 1)))[0]
  np.testing.assert_allclose(out[2] - out[0] + 1, 16 * math.exp(-20), rtol=1e-2, atol=1e-6)
  assert box_coder.BBOX_XFORM_CLIP == CLIP


def test_decode_bitwise_op_by_op_rpn_weights():
  deltas, boxes = _random(np.random.default_rng(0), 2000, c=1)
  expected, _ = _decode_spec(deltas, boxes, (1, 1, 1, 1), _jexp)
  with jax.disable_jit():
    out = np.asarray(box_coder.decode_boxes(deltas, boxes, (1, 1, 1, 1)))
  np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (10, 10, 5, 5)])
def test_decode_jit_matches_spec(weights):
  deltas, boxes = _random(np.random.default_rng(1), 4000, c=3)
  out = np.asarray(jax.jit(lambda d, b: box_coder.decode_boxes(d, b, weights))(deltas, boxes))
  expected, size = _decode_spec(deltas, boxes, weights, _jexp)
  assert (np.abs(out - expected) <= 4 * EPS * size).all()
  # numpy's own float32 exp differs from XLA's by up to ~1 ulp: within the same bound.
  expected_np, _ = _decode_spec(deltas, boxes, weights, np.exp)
  assert (np.abs(out - expected_np) <= 4 * EPS * size).all()
  # XLA's exp is within 1 ulp of the correctly rounded one.
  x = np.linspace(-12, CLIP, 100001).astype(F)
  exact = np.exp(x.astype(np.float64))
  assert (np.abs(_jexp(x) - exact) <= np.spacing(exact.astype(F))).all()


def test_encode_decode_round_trip():
  rng = np.random.default_rng(2)
  k = 3000
  xy = rng.uniform(-50, 800, (k, 2))
  awh = rng.uniform(2, 300, (k, 2))
  anchors = np.concatenate([xy, xy + awh], 1).astype(F)
  gxy = xy + rng.uniform(-40, 40, (k, 2))
  # gt sizes within a factor e^3 of the anchor's: log-ratios below the decode clip 4.135.
  gt = np.concatenate([gxy, gxy + (awh + 1) * np.exp(rng.uniform(-3, 3, (k, 2))) - 1], 1).astype(F)
  for weights in [(1, 1, 1, 1), (10, 10, 5, 5)]:
    codes = jax.jit(lambda g, a: box_coder.encode_boxes(g, a, weights))(gt, anchors)
    back = np.asarray(jax.jit(lambda c, a: box_coder.decode_boxes(c, a, weights))(codes, anchors))
    # float32 round trip: a few ulps of the coordinates (up to ~1100 px -> ~1e-4).
    err = np.abs(back - gt) / (EPS * (np.abs(gt) + 300))
    assert err.max() <= 64, err.max()
    # encode against its float64 formula.
    f = lambda b: (b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1)
    aw, ah = f(anchors.astype(np.float64))
    gw, gh = f(gt.astype(np.float64))
    acx, acy = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    gcx, gcy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    expected = np.stack([weights[0] * (gcx - acx) / aw, weights[1] * (gcy - acy) / ah,
                         weights[2] * np.log(gw / aw), weights[3] * np.log(gh / ah)], 1)
    # float32 cancellation: the centre difference and the widths carry ~eps*|coordinate| each,
    # relative to the smaller width.
    mag = lambda b, i: np.abs(b[:, [i, i + 2]]).max(1)
    sx = (mag(gt, 0) + mag(anchors, 0) + 1) / np.minimum(aw, gw)
    sy = (mag(gt, 1) + mag(anchors, 1) + 1) / np.minimum(ah, gh)
    tol = 8 * EPS * np.stack([sx, sy, sx, sy], 1) * np.array(weights)
    assert (np.abs(np.asarray(codes) - expected) <= tol).all()
  # A box encodes to zero against itself.
  np.testing.assert_array_equal(box_coder.encode_boxes(anchors[:5], anchors[:5], (10, 10, 5, 5)), 0)


def test_pairwise_iou_matches_reference():
  # Hand-drawn: A [0, 0, 9, 9] (area 100); B [5, 0, 14, 9] overlaps 5 columns (50):
  # IoU = 50 / 150; C [20, 20, 20, 20] is a single pixel (area 1), disjoint from both.
  a = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [20, 20, 20, 20]], F)
  iou = np.asarray(box_ops.pairwise_iou(a, a))
  np.testing.assert_array_equal(iou, [[1, F(50) / F(150), 0], [F(50) / F(150), 1, 0], [0, 0, 1]])
  # Random integer boxes (every product exact): bit-equal to the reference, jitted too.
  rng = np.random.default_rng(3)
  for integer in (True, False):
    xy = rng.uniform(0, 60, (40, 2))
    b = np.concatenate([xy, xy + rng.uniform(0, 30, (40, 2))], 1)
    b = (np.round(b) if integer else b).astype(F)
    out = np.asarray(jax.jit(box_ops.pairwise_iou)(b[:25], b[25:]))
    expected = np.array([[iou_one(p, q) for q in b[25:]] for p in b[:25]], F)
    if integer:
      np.testing.assert_array_equal(out, expected)
    else:  # FMA in `area_a + area_b - inter`: within 2 ulps of 1
      np.testing.assert_allclose(out, expected, rtol=0, atol=2 * EPS)
    with jax.disable_jit():
      np.testing.assert_array_equal(box_ops.pairwise_iou(b[:25], b[25:]), expected)
  # Boxes touching at one column overlap by one pixel ("+1"): [0, 0, 9, 9] and [9, 0, 18, 9].
  t = np.array([[0, 0, 9, 9], [9, 0, 18, 9]], F)
  assert float(box_ops.pairwise_iou(t[:1], t[1:])[0, 0]) == F(10) / F(190)


def test_clip_area_nonempty_scale():
  # clip_to_image: x in [0, w-1], y in [0, h-1] (traced image size).
  b = np.array([[-5, -3, 700, 12], [10, 500, 20, 600], [3.5, 4.5, 3.5, 4.5]], F)
  out = np.asarray(jax.jit(box_ops.clip_boxes)(b, 480, 640))
  np.testing.assert_array_equal(out, [[0, 0, 639, 12], [10, 479, 20, 479], [3.5, 4.5, 3.5, 4.5]])
  assert box_ops.nonempty_boxes(out).tolist() == [True, False, False]
  np.testing.assert_array_equal(box_ops.box_area(out), [640 * 13, 11 * 1, 1])
  # BoxList.resize: x * rw, y * rh (float32 products), per image when batched.
  s = np.asarray(box_ops.scale_boxes(b, F(0.5), F(2)))
  np.testing.assert_array_equal(s, b * np.array([0.5, 2, 0.5, 2], F))
  batched = np.asarray(box_ops.scale_boxes(np.stack([b, b]), np.array([1, 0.5], F),
                                           np.array([1, 2], F)))
  np.testing.assert_array_equal(batched[0], b)
  np.testing.assert_array_equal(batched[1], s)
