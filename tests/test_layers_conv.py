"""rap_jax/modeling/layers.conv: PyTorch padding, and 1x1 convs whose gradients come from matmuls.

The forward of every conv is lax's; a 1x1 conv's backward is two einsums (XLA:CPU's kernel
gradient of a 1x1 conv is 10-50x slower). Checked here against lax's own gradients (float32
reduction order apart) at stride 1 and 2, odd and even sizes, under jit and vmap.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rap_jax.modeling import layers

EPS = np.finfo(np.float32).eps
DN = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, kernel, bias, stride, pad):
  y = jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                   dimension_numbers=DN, precision="highest")
  return y + bias


@pytest.mark.parametrize("kernel,stride,size", [(1, 1, 9), (1, 2, 9), (1, 2, 10), (3, 1, 9),
                                                (3, 2, 10)])
def test_conv_forward_and_gradients_equal_lax(kernel, stride, size):
  rng = np.random.default_rng(kernel * 10 + stride + size)
  x = jnp.asarray(rng.normal(size=(3, size, size + 1, 6)).astype(np.float32))
  module = layers.conv(5, kernel, stride=stride)
  variables = module.init(jax.random.PRNGKey(0), x)
  k, b = variables["params"]["kernel"], variables["params"]["bias"]
  target = jnp.asarray(rng.normal(size=module.apply(variables, x).shape).astype(np.float32))

  def ours(k, b, x):
    with jax.default_matmul_precision("highest"):
      y = module.apply({"params": {"kernel": k, "bias": b}}, x)
    return jnp.sum(jnp.tanh(y) * target), y

  def ref(k, b, x):
    y = _lax_conv(x, k, b, stride, kernel // 2)
    return jnp.sum(jnp.tanh(y) * target), y

  (_, y1), g1 = jax.jit(jax.value_and_grad(ours, (0, 1, 2), has_aux=True))(k, b, x)
  (_, y2), g2 = jax.jit(jax.value_and_grad(ref, (0, 1, 2), has_aux=True))(k, b, x)
  np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))  # the forward is lax's
  for name, a, r in zip(("kernel", "bias", "input"), g1, g2):
    a, r = np.asarray(a), np.asarray(r)
    # Each gradient entry is a float32 sum of at most n products of magnitude <= |x| |g|:
    # reordering it moves the result by at most ~n eps of that bound.
    n = x.shape[0] * x.shape[1] * x.shape[2] if name != "input" else 5 * kernel * kernel
    bound = 4 * n * EPS * float(np.abs(x).max() + 1) * float(np.abs(target).max())
    np.testing.assert_allclose(a, r, rtol=0, atol=bound, err_msg=name)
    assert np.abs(r).max() > 10 * bound  # the check is not vacuous


def test_pointwise_under_vmap_and_second_use():
  # vmap over images (how the ROI heads call their convs) gives the unbatched gradients.
  rng = np.random.default_rng(3)
  module = layers.conv(4, 1)
  x = jnp.asarray(rng.normal(size=(2, 3, 5, 5, 6)).astype(np.float32))
  variables = module.init(jax.random.PRNGKey(1), x[0])

  def loss(v, xs):
    return jnp.sum(jax.vmap(lambda xi: module.apply(v, xi))(xs) ** 2)

  g = jax.grad(loss)(variables, x)["params"]["kernel"]
  flat = x.reshape(6, 5, 5, 6)
  g_ref = jax.grad(lambda k: jnp.sum(_lax_conv(flat, k, variables["params"]["bias"], 1, 0) ** 2))(
      variables["params"]["kernel"])
  np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5, atol=1e-4)
