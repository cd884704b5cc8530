"""PyTorch bilinear resize and nearest x2 upsampling (rap_jax/ops/resize.py).

Oracles: the pixel loop of rap_jax/reference/resize.py (SPEC §10.1, PyTorch 1.0 rules) and
torch.nn.functional.interpolate of torch 2.13 CPU (the fixtures' environment).

Exactness, measured and asserted here:
* op-by-op (`jax.disable_jit()`) the op equals the reference bit for bit;
* jitted, XLA:CPU contracts `a*b + c*d` into `fma(a, b, c*d)` (always on, no flag turns it off)
  in the blend: results stay within 4 float32 ulps of max|x| of the reference. With traced
  sizes `scale*(dst+.5) - .5` is also fused (static sizes are constant-folded without FMA), so a
  source coordinate may move by an ulp of itself: the bound grows with the input length;
* torch 2.13 CPU uses FMA too, in a shape-dependent order: for the model's resizes (x4 of the
  semantic head, padded map -> original image) jit and torch agree bit for bit; elsewhere within
  4 ulps. One deliberate difference: out == 1 with align_corners=False, where PyTorch 1.0 (the
  original) uses scale 0 (row 0) and torch 2.x uses in/out (the centre).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rap_jax.ops.resize import (interpolation_matrix, resize_bilinear, resize_bilinear_matmul,
                                source_coords, upsample_nearest2x)
from rap_jax.reference import resize as ref

EPS = np.finfo(np.float32).eps
SIZES = [  # (in_h, in_w, out_h, out_w)
    (5, 7, 11, 13),  # up
    (30, 30, 37, 45),  # up, non-integer ratio (mask pasting's 30 -> box size)
    (13, 17, 64, 3),  # up in y, down in x
    (30, 30, 7, 3),  # down
    (9, 12, 9, 5),  # equal in y, down in x
    (9, 9, 9, 9),  # equal: an exact copy
    (30, 30, 1, 1),  # out == 1
    (30, 30, 1, 40),
    (1, 1, 4, 6),  # in == 1
    (2, 2, 3, 3),
]
EAGER_SIZES = [(5, 7, 11, 13), (30, 30, 7, 3), (30, 30, 1, 40)]


def _torch(x, out_h, out_w, align_corners):
  t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
  y = torch.nn.functional.interpolate(t, size=(out_h, out_w), mode="bilinear",
                                      align_corners=align_corners)
  return y[0].numpy().transpose(1, 2, 0)


def _assert_ulps(a, b, x, ulps=4, coord_ulps=0):
  """|a - b| <= (ulps + 2*coord_ulps) float32 ulps of max|x|.

  The blend has weights summing to 1 (a few ulps of max|x|); a source coordinate off by one ulp
  of itself (coord_ulps ~ the input length) moves the value by at most 2*max|x| times that.
  """
  tol = (ulps + 2 * coord_ulps) * EPS * float(np.abs(x).max())
  np.testing.assert_allclose(a, b, rtol=0, atol=tol)


def test_hand_drawn_align_corners():
  # 2x2 -> 3x3. align_corners=True keeps the corner pixels and puts the middle at source .5:
  #   1 2        1    1.5  2
  #   3 4   ->   2    2.5  3
  #              3    3.5  4
  x = np.array([[1, 2], [3, 4]], np.float32)
  out = resize_bilinear(x, (3, 3), align_corners=True)
  np.testing.assert_array_equal(out, [[1, 1.5, 2], [2, 2.5, 3], [3, 3.5, 4]])
  # align_corners=False: src = max(2/3*(dst+.5) - .5, 0) = 0, 1/2, 7/6 (-> row 1 again):
  #   1     1.5   2
  #   2     2.5   3
  #   3     3.5   4
  out = resize_bilinear(x, (3, 3), align_corners=False)
  np.testing.assert_allclose(out, [[1, 1.5, 2], [2, 2.5, 3], [3, 3.5, 4]], atol=1e-6)


def test_hand_drawn_out_1():
  # One output pixel from a row 0 1 2 ... 29: PyTorch 1.0 reads column 0 in both modes
  # (scale 0); torch 2.x reads the centre, 14.5, when align_corners=False.
  x = np.arange(30, dtype=np.float32)[None, :]
  for ac in (True, False):
    assert float(resize_bilinear(x, (1, 1), align_corners=ac)[0, 0]) == 0.0
    assert ref.resize_bilinear(x, 1, 1, ac)[0, 0] == 0.0
  assert float(_torch(x[:, :, None], 1, 1, False)[0, 0, 0]) == 14.5  # documented difference


@pytest.mark.parametrize("align_corners", [True, False])
def test_matches_reference_and_torch(align_corners):
  rng = np.random.default_rng(int(align_corners))
  for in_h, in_w, out_h, out_w in SIZES:
    x = rng.standard_normal((in_h, in_w, 3)).astype(np.float32)
    expected = ref.resize_bilinear(x, out_h, out_w, align_corners)
    if (in_h, in_w, out_h, out_w) in EAGER_SIZES:  # op by op: every shape compiles ~40 kernels
      with jax.disable_jit():
        eager = np.asarray(resize_bilinear(x, (out_h, out_w), align_corners=align_corners))
      np.testing.assert_array_equal(eager, expected, err_msg=str((in_h, in_w, out_h, out_w)))
    fn = jax.jit(lambda v: resize_bilinear(v, (out_h, out_w), align_corners=align_corners))
    out = np.asarray(fn(x))
    _assert_ulps(out, expected, x)
    if in_h == out_h and in_w == out_w:
      np.testing.assert_array_equal(out, x)  # a copy
    if out_w == 13:
      _assert_ulps(fn(x[..., 0]), expected[..., 0], x)  # a 2-D map
    if not align_corners and (out_h == 1 or out_w == 1) and (in_h > 1 or in_w > 1):
      continue  # PyTorch 1.0 vs 2.x rule for out == 1, see test_hand_drawn_out_1
    _assert_ulps(out, _torch(x, out_h, out_w, align_corners), x)


@pytest.mark.parametrize("shapes", [
    ((20, 30), (80, 120)),  # semantic head x4 (fixture: quarter 80x120 -> 320x480)
    ((80, 120), (320, 480)),
    ((320, 480), (400, 600)),  # padded full-resolution logits -> original image (coffee)
    ((320, 320), (512, 512)),  # astronaut
])
def test_model_resizes_equal_torch_bitwise(shapes):
  (in_h, in_w), (out_h, out_w) = shapes
  x = np.random.default_rng(in_h).standard_normal((in_h, in_w, 2)).astype(np.float32)
  out = np.asarray(jax.jit(lambda v: resize_bilinear(v, (out_h, out_w), align_corners=True))(x))
  np.testing.assert_array_equal(out, _torch(x, out_h, out_w, True))


@pytest.mark.parametrize("align_corners", [True, False])
def test_traced_sizes_inside_canvas(align_corners):
  # One compiled function, valid sizes as arguments. Input canvas 16x20 whose valid top-left
  # block is (in_h, in_w) and whose rest is NaN; output canvas 24x28 with valid (out_h, out_w):
  #
  #   input canvas            output canvas
  #   +-------+-----+         +-----------+---+
  #   | valid | NaN |   ->    |  resized  | 0 |
  #   +-------+     |         +-----------+   |
  #   |  NaN        |         |  0            |
  #   +-------------+         +---------------+
  hc, wc, oh_c, ow_c = 16, 20, 24, 28
  fn = jax.jit(lambda v, ih, iw, oh, ow: resize_bilinear(
      v, (oh_c, ow_c), (ih, iw), (oh, ow), align_corners=align_corners))
  rng = np.random.default_rng(7)
  for in_h, in_w, out_h, out_w in [(16, 20, 24, 28), (5, 7, 11, 13), (13, 17, 6, 3), (9, 12, 9, 5),
                                   (9, 9, 9, 9), (16, 3, 1, 1), (1, 1, 24, 2), (10, 20, 1, 28)]:
    x = rng.standard_normal((in_h, in_w, 2)).astype(np.float32)
    canvas = np.full((hc, wc, 2), np.nan, np.float32)
    canvas[:in_h, :in_w] = x
    out = np.asarray(fn(canvas, in_h, in_w, out_h, out_w))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[out_h:], 0)
    np.testing.assert_array_equal(out[:, out_w:], 0)
    expected = ref.resize_bilinear(x, out_h, out_w, align_corners)
    # Traced sizes: `scale*(dst+.5) - .5` is evaluated at run time, with FMA (static sizes are
    # constant-folded without): the source coordinate may move by an ulp of itself.
    _assert_ulps(out[:out_h, :out_w], expected, x, coord_ulps=max(in_h, in_w))
    with jax.disable_jit():
      eager = np.asarray(resize_bilinear(canvas, (oh_c, ow_c), (in_h, in_w), (out_h, out_w),
                                         align_corners=align_corners))
    np.testing.assert_array_equal(eager[:out_h, :out_w], expected)


def test_source_coords_match_reference():
  # Per-axis indices and weights, including positions beyond the valid output (inside=False).
  for ac in (True, False):
    fn = jax.jit(lambda i, o, ac=ac: source_coords(70, i, o, ac))  # one compile, traced sizes
    for in_size, out_size in [(30, 37), (30, 7), (13, 64), (9, 9), (30, 1), (1, 5), (2, 3)]:
      i0, i1, l0, l1, inside = (np.asarray(a) for a in fn(in_size, out_size))
      assert inside.tolist() == [d < out_size for d in range(70)]
      assert (0 <= i0).all() and (i1 <= in_size - 1).all()  # beyond `out`: still in bounds
      for d in range(out_size):
        r0, r1, rl0, rl1 = ref._coord(d, in_size, out_size, ac)
        assert (i0[d], i1[d]) == (r0, r1), (ac, in_size, out_size, d)
        assert abs(float(l1[d]) - rl1) <= 2 * EPS * in_size and l0[d] == np.float32(1) - l1[d]


@pytest.mark.parametrize("align_corners", [True, False])
def test_interpolation_matrix_is_the_resize(align_corners):
  # M_y @ x @ M_x^T == resize_bilinear up to float32 rounding, with traced valid sizes, zero
  # rows beyond the valid output and columns beyond the valid input never read (NaN there).
  hc, wc, oh_c, ow_c = 16, 20, 24, 28
  hi = jax.lax.Precision.HIGHEST

  def by_matrix(v, ih, iw, oh, ow):
    my = interpolation_matrix(oh_c, hc, ih, oh, align_corners)
    mx = interpolation_matrix(ow_c, wc, iw, ow, align_corners)
    v = jnp.where(jnp.isnan(v), 0.0, v)  # a matmul reads every column (weight 0 there)
    return jnp.einsum("pw,owc->opc", mx, jnp.einsum("oh,hwc->owc", my, v, precision=hi),
                      precision=hi)

  fn = jax.jit(by_matrix)
  gather = jax.jit(lambda v, ih, iw, oh, ow: resize_bilinear(
      v, (oh_c, ow_c), (ih, iw), (oh, ow), align_corners=align_corners))
  rng = np.random.default_rng(11)
  for in_h, in_w, out_h, out_w in [(16, 20, 24, 28), (5, 7, 11, 13), (13, 17, 6, 3),
                                   (9, 9, 9, 9), (16, 3, 1, 1), (1, 1, 24, 2)]:
    canvas = np.full((hc, wc, 2), np.nan, np.float32)
    canvas[:in_h, :in_w] = rng.standard_normal((in_h, in_w, 2))
    out = np.asarray(fn(canvas, in_h, in_w, out_h, out_w))
    np.testing.assert_array_equal(out[out_h:], 0)
    np.testing.assert_array_equal(out[:, out_w:], 0)
    expected = np.asarray(gather(canvas, in_h, in_w, out_h, out_w))
    np.testing.assert_allclose(out, expected, rtol=0, atol=4 * EPS * np.abs(canvas[:in_h, :in_w]).max())
    my = np.asarray(interpolation_matrix(oh_c, hc, in_h, out_h, align_corners))
    np.testing.assert_allclose(my[:out_h].sum(1), 1.0, rtol=0, atol=2 * EPS)  # rows: convex weights
    assert (my[:, in_h:] == 0).all()


@pytest.mark.parametrize("align_corners", [True, False])
def test_matmul_form_equals_gather_form(align_corners):
  # The training form of the resize (semantic head): the gather form's values to within a couple
  # of ulps of the input scale; NaN outside the valid input block is never read.
  rng = np.random.default_rng(int(align_corners) + 20)
  for (h, w), (oh, ow), (ih, iw), (voh, vow) in [((20, 30), (40, 60), (20, 30), (40, 60)),
                                                 ((10, 15), (20, 30), (9, 13), (18, 26)),
                                                 ((5, 5), (40, 40), (3, 4), (24, 32)),
                                                 ((12, 12), (12, 12), (12, 12), (12, 12))]:
    x = np.full((h, w, 3), np.nan, np.float32)
    x[:ih, :iw] = rng.standard_normal((ih, iw, 3))
    args = ((oh, ow), (ih, iw), (voh, vow))
    a = np.asarray(jax.jit(lambda v: resize_bilinear(v, *args, align_corners=align_corners))(x))
    b = np.asarray(jax.jit(lambda v: resize_bilinear_matmul(v, *args,
                                                            align_corners=align_corners))(x))
    assert np.isfinite(b).all()
    np.testing.assert_allclose(b, a, rtol=0, atol=4 * EPS * np.nanmax(np.abs(x)))


def test_semantic_loss_matches_two_gather_resizes():
  # The training loss composes the x4 and the label-size resize into one matrix per axis; the
  # logits (hence the CE) equal the original's two resizes (resize_bilinear twice).
  from rap_jax.modeling import losses
  rng = np.random.default_rng(5)
  q = rng.standard_normal((12, 16, 4)).astype(np.float32)  # canvas 48x64, padded 40x64
  padded, resized = np.int32([40, 64]), np.int32([37, 61])
  labels = np.zeros((48, 64), np.uint8)
  labels[:37, :61] = rng.integers(0, 4, (37, 61))
  full = resize_bilinear(q, (48, 64), in_size_hw=(10, 16), out_size_hw=(40, 64),
                         align_corners=True)
  logits = np.asarray(resize_bilinear(full, (48, 64), in_size_hw=(40, 64),
                                      out_size_hw=(37, 61), align_corners=True))
  lse = np.log(np.exp(logits).sum(-1))
  ce = lse - np.take_along_axis(logits, labels[..., None].astype(np.int64), -1)[..., 0]
  expected = ce[labels > 0].sum()
  got = losses.semantic_loss_sums(jnp.asarray(q), jnp.asarray(labels), padded, resized)
  assert int(got["count"]) == int((labels > 0).sum())
  np.testing.assert_allclose(float(got["semantic"]), expected, rtol=1e-5)


def test_upsample_nearest2x_matches_torch():
  x = np.random.default_rng(0).standard_normal((2, 5, 7, 3)).astype(np.float32)
  expected = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                                             scale_factor=2, mode="nearest").numpy()
  out = np.asarray(jax.jit(upsample_nearest2x)(x))
  np.testing.assert_array_equal(out, expected.transpose(0, 2, 3, 1))
  # Drawn: [[1, 2]] -> [[1, 1, 2, 2], [1, 1, 2, 2]].
  small = jnp.array([1.0, 2.0]).reshape(1, 1, 2, 1)
  np.testing.assert_array_equal(upsample_nearest2x(small)[0, :, :, 0], [[1, 1, 2, 2], [1, 1, 2, 2]])
