"""Deformable convolution v1 (rap_jax/ops/deform_conv.py) against the float64 loop of
rap_jax/reference/deform_conv.py (`deform_conv_kernel_cuda.cu`), and against
`jax.lax.conv_general_dilated` when every offset is zero.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rap_jax.ops.deform_conv import deform_conv
from rap_jax.reference import deform_conv as ref


def _to_torch_layout(kernel):
  """[kh, kw, C/groups, F] (ours) -> [F, C/groups, kh, kw] (PyTorch, the reference's)."""
  return np.transpose(kernel, (3, 2, 0, 1))


def _out_size(n, stride, pad=1, k=3, dil=1):
  return (n + 2 * pad - (dil * (k - 1) + 1)) // stride + 1


def _offsets(rng, shape):
  """Offsets mixing continuous values, exact integers (samples on pixel centres, and exactly on
  the -1 / H borders of the `-1 < y < H` test) and large jumps outside the map."""
  cont = rng.normal(0, 1.5, shape)
  ints = rng.integers(-3, 4, shape).astype(np.float64)
  far = rng.choice([-20.0, 20.0], shape)
  pick = rng.random(shape)
  return np.where(pick < 0.6, cont, np.where(pick < 0.9, ints, far)).astype(np.float32)


def _case(seed, h=7, w=6, c=8, f=8, stride=1, groups=1, dg=1):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((h, w, c)).astype(np.float32)
  ho, wo = _out_size(h, stride), _out_size(w, stride)
  off = _offsets(rng, (ho, wo, dg * 18))
  kernel = (rng.standard_normal((3, 3, c // groups, f)) / 3).astype(np.float32)
  return x, off, kernel


def test_hand_drawn_single_tap():
  # 1 channel, a kernel with only its centre tap (i, j) = (1, 1) set to 1, 3x3 map 0..8:
  #   0 1 2
  #   3 4 5     The centre tap k = 4 samples at (ho + dy, wo + dx) with dy, dx = offset
  #   6 7 8     channels 8 and 9. dy = .5, dx = .25 at output (0, 0): bilinear at (.5, .25):
  #             (1-.5)(1-.25)*0 + (1-.5)*.25*1 + .5*(1-.25)*3 + .5*.25*4 = 1.75.
  # Output (2, 2) with dy = 1: y = 3 is not < H = 3 -> 0. Output (1, 1) with dy = -1.5:
  # y = -.5 is inside (-1, 3): rows -1 (zero) and 0 blend, .5 * x[0, 1] = .5.
  x = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
  kernel = np.zeros((3, 3, 1, 1), np.float32)
  kernel[1, 1] = 1
  off = np.zeros((1, 3, 3, 18), np.float32)
  off[0, 0, 0, 8:10] = [0.5, 0.25]
  off[0, 2, 2, 8] = 1.0
  off[0, 1, 1, 8] = -1.5
  out = np.asarray(deform_conv(x, off, kernel))[0, :, :, 0]
  expected = [[1.75, 1, 2], [3, 0.5, 5], [6, 7, 0]]
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(
      ref.deform_conv(x[0], off[0], _to_torch_layout(kernel))[:, :, 0], expected)


@pytest.mark.parametrize("stride,groups,dg", [(1, 1, 1), (2, 1, 2), (1, 2, 1), (2, 4, 2),
                                              (1, 4, 2)])
def test_random_matches_reference(stride, groups, dg):
  x, off, kernel = _case(stride * 100 + groups * 10 + dg, stride=stride, groups=groups, dg=dg)
  out = np.asarray(jax.jit(lambda a, o, k: deform_conv(
      a[None], o[None], k, stride=stride, groups=groups, deformable_groups=dg))(x, off, kernel))[0]
  expected = ref.deform_conv(x, off, _to_torch_layout(kernel), stride=stride, groups=groups,
                             deformable_groups=dg)
  np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
  assert np.abs(expected).max() > 1  # not a trivially small output


def test_disable_jit():
  x, off, kernel = _case(7, h=5, w=5, c=4, f=4, stride=2, groups=2, dg=2)
  with jax.disable_jit():
    out = np.asarray(deform_conv(x[None], off[None], kernel, stride=2, groups=2,
                                 deformable_groups=2))[0]
  expected = ref.deform_conv(x, off, _to_torch_layout(kernel), stride=2, groups=2,
                             deformable_groups=2)
  np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("stride,groups,dilation", [(1, 1, 1), (2, 2, 1), (1, 4, 1), (1, 2, 2)])
def test_zero_offsets_equal_conv(stride, groups, dilation):
  # With zero offsets DCN is a plain (grouped) 3x3 convolution, padding = dilation here.
  # Tolerance: 1e-6 relative to sum |x * k| (the same sum without cancellation), i.e. ~8 ulps
  # of a 9*C/groups-term float32 dot product in a different summation order.
  rng = np.random.default_rng(stride + 10 * groups + 100 * dilation)
  n, h, w, c, f = 2, 9, 8, 8, 12
  x = rng.standard_normal((n, h, w, c)).astype(np.float32)
  kernel = rng.standard_normal((3, 3, c // groups, f)).astype(np.float32)
  ho = _out_size(h, stride, dilation, dil=dilation)
  wo = _out_size(w, stride, dilation, dil=dilation)
  off = np.zeros((n, ho, wo, 18), np.float32)
  out = np.asarray(jax.jit(lambda a, o, k: deform_conv(
      a, o, k, stride=stride, padding=dilation, dilation=dilation, groups=groups))(x, off, kernel))

  def conv(a, k):
    return jax.lax.conv_general_dilated(
        a, k, (stride, stride), [(dilation, dilation)] * 2, rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
        precision=jax.lax.Precision.HIGHEST)

  expected = np.asarray(conv(x, kernel))
  magnitude = np.asarray(conv(np.abs(x), np.abs(kernel)))
  assert out.shape == expected.shape == (n, ho, wo, f)
  assert (np.abs(out - expected) <= 1e-6 * magnitude).all(), np.max(np.abs(out - expected) /
                                                                      magnitude)


def test_valid_size_inside_canvas():
  # Image 0 fills its 9x11 canvas; image 1 is a 6x7 map in the top-left corner, the rest NaN.
  # Image 1's output must equal the op on the cropped map (and the reference), with no NaN.
  rng = np.random.default_rng(3)
  hc, wc, c, f = 9, 11, 4, 6
  for stride in (1, 2):
    hoc, woc = _out_size(hc, stride), _out_size(wc, stride)
    x = rng.standard_normal((2, hc, wc, c)).astype(np.float32)
    x[1, 6:] = np.nan
    x[1, :, 7:] = np.nan
    off = _offsets(rng, (2, hoc, woc, 18))
    kernel = rng.standard_normal((3, 3, c, f)).astype(np.float32)
    hw = np.array([[hc, wc], [6, 7]], np.int32)
    fn = jax.jit(lambda a, o, k, s: deform_conv(a, o, k, stride=stride, feature_hw=s))
    out = np.asarray(fn(x, off, kernel, hw))
    ho, wo = _out_size(6, stride), _out_size(7, stride)
    assert np.isfinite(out[0]).all() and np.isfinite(out[1, :ho, :wo]).all()
    cropped = np.asarray(jax.jit(lambda a, o, k: deform_conv(a, o, k, stride=stride))(
        x[1:, :6, :7], off[1:, :ho, :wo], kernel))
    np.testing.assert_allclose(out[1, :ho, :wo], cropped[0], rtol=0, atol=1e-5)
    for i, (h, w) in enumerate(hw):
      ho, wo = _out_size(h, stride), _out_size(w, stride)
      expected = ref.deform_conv(x[i, :h, :w], off[i, :ho, :wo], _to_torch_layout(kernel),
                                 stride=stride)
      np.testing.assert_allclose(out[i, :ho, :wo], expected, rtol=0, atol=1e-5)
    # Gradients equal those of the cropped map: finite, zero on the NaN block and on the
    # offsets of outputs beyond the valid ones (samples outside the map read no canvas).
    ho, wo = _out_size(6, stride), _out_size(7, stride)
    r = rng.standard_normal((ho, wo, f)).astype(np.float32)
    g = jax.jit(jax.grad(lambda a, o: jnp.sum(r * fn(a, o, kernel, hw)[1, :ho, :wo]),
                         argnums=(0, 1)))(x, off)
    gx, goff = np.asarray(g[0])[1], np.asarray(g[1])[1]
    gc = jax.jit(jax.grad(lambda a, o: jnp.sum(r * deform_conv(a, o, kernel, stride=stride)[0]),
                          argnums=(0, 1)))(x[1:, :6, :7], off[1:, :ho, :wo])
    np.testing.assert_allclose(gx[:6, :7], np.asarray(gc[0])[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(goff[:ho, :wo], np.asarray(gc[1])[0], rtol=0, atol=1e-5)
    assert np.isfinite(goff).all()
    np.testing.assert_array_equal(gx[6:], 0)
    np.testing.assert_array_equal(gx[:, 7:], 0)
    np.testing.assert_array_equal(goff[ho:], 0)
    np.testing.assert_array_equal(goff[:, wo:], 0)


@pytest.mark.parametrize("stride,groups,dg", [(1, 1, 1), (2, 2, 2)])
def test_gradients_match_finite_differences(stride, groups, dg):
  # L = sum(R * deform_conv(x, offset, kernel)) for a random R. jax.grad (float32) against
  # central differences of the float64 reference along random directions, for each argument.
  # Offsets are continuous (no sample within 1e-6 of an integer, where the bilinear weights have
  # kinks), so the FD step 1e-6 in float64 is accurate to ~1e-9.
  rng = np.random.default_rng(40 + stride + groups)
  h, w, c, f = 6, 5, 4, 4
  x = rng.standard_normal((h, w, c)).astype(np.float32)
  ho, wo = _out_size(h, stride), _out_size(w, stride)
  off = rng.uniform(-2.5, 2.5, (ho, wo, dg * 18)).astype(np.float32)
  kernel = rng.standard_normal((3, 3, c // groups, f)).astype(np.float32)
  r = rng.standard_normal((ho, wo, f))

  def loss(a, o, k):
    y = deform_conv(a[None], o[None], k, stride=stride, groups=groups, deformable_groups=dg)[0]
    return jnp.sum(jnp.asarray(r, jnp.float32) * y)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, off, kernel)

  def ref_loss(a, o, k):
    y = ref.deform_conv(a, o, _to_torch_layout(k), stride=stride, groups=groups,
                        deformable_groups=dg)
    return float(np.sum(r * y))

  params = [x.astype(np.float64), off.astype(np.float64), kernel.astype(np.float64)]
  eps = 1e-6
  for i, g in enumerate(grads):
    g = np.asarray(g, np.float64)
    for _ in range(3):
      d = rng.standard_normal(params[i].shape)
      plus, minus = list(params), list(params)
      plus[i] = params[i] + eps * d
      minus[i] = params[i] - eps * d
      fd = (ref_loss(*plus) - ref_loss(*minus)) / (2 * eps)
      scale = np.sum(np.abs(g * d))
      assert abs(np.sum(g * d) - fd) <= 1e-4 * scale, (i, np.sum(g * d), fd, scale)
