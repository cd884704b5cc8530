"""config.train.loss_normalization: 'per_device' (the original's per-GPU normalisation, DDP
average) and 'global' (one normalisation over the global batch), with the REAL losses of the tiny
model on a 2-device data mesh of 2 + 2 images whose devices have very different counts: device 0
holds images with several related instances, device 1 images with one instance and no relation
(no ranking pairs, fewer positive ROIs).

  per_device == the explicit computation: each device's 2 images alone through the single-device
                loss, losses and gradients averaged over the 2 devices; and != global;
  global     == the 4 images as one batch on one device.

The sampler decisions of the 4-image run are injected into the others (the streams are folded
with the image's index in its batch), so every run sees the same anchors / ROIs.

Tolerances: the runs compute the same per-image terms and differ only in float32 summation order
(2 partial sums of 2 images vs one sum of 4; kernels chosen per batch size). Compared per
top-level module as the norm of the difference over the norm of the gradient: a float32
reordering moves each sum by ~eps32 sqrt(n) of its terms, and the norm-wise relative error of a
gradient is that times its conditioning; 2e-5 (168 eps32) leaves room for the conditioning of a
random-weight network (measured: <= 3e-7), while what is tested (per-device vs global) moves the
relation head's gradient by 50%, the mask head's by ~24%, the backbone's and the semantic head's
by ~1%. The RPN and box losses have the same counts on both devices (every image samples its
full quota of anchors / ROIs), so both normalisations give them the same gradient.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs import common, tiny
from rap_jax import config_checks, sharding, train
from rap_jax.modeling import losses as loss_lib
from rap_jax.modeling.panoptic_rcnn import PanopticRCNN
from tiny_train_batch import random_variables, tiny_batch

NORM_RTOL = 2e-5
MODULES = ("backbone", "rpn", "roi_heads/box", "roi_heads/mask", "roi_heads/relation",
           "semantic_head")


def _module(tree, name):
  for part in name.split("/"):
    tree = tree[part]
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _norm_rel(a, b, name):
  x, y = _module(a, name), _module(b, name)
  return float(np.linalg.norm(x - y) / np.linalg.norm(y))


@pytest.fixture(scope="module")
def setup():
  config = tiny.get_config()
  model = PanopticRCNN.from_config(config.model)
  variables = random_variables(config, seed=1)
  batch = tiny_batch(config, 4, 0, seed=3, pad_seed=0)
  for i in (2, 3):  # device 1: one instance, no relation
    batch["instance_valid"][i, 1:] = False
    batch["relations"][i] = False
  key = jax.random.PRNGKey(5)

  def loss_fn(params, b, samples, groups):
    out, aux = model.apply({"params": params, "buffers": variables["buffers"]}, b, key,
                           samples, method=PanopticRCNN.losses, loss_groups=groups)
    return loss_lib.total_loss(out), (out, aux)

  fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), static_argnums=3)

  def run(b, samples, groups, mesh=None):
    if mesh is not None:
      put = lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
      b, samples = jax.tree.map(put, b), jax.tree.map(put, samples)
    (total, (out, aux)), grads = fn(variables["params"], b, samples, groups)
    return (float(total), {k: float(v) for k, v in out.items()},
            jax.tree.map(np.asarray, aux), jax.tree.map(np.asarray, grads))

  mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
  first = run(batch, {}, 2, mesh)
  samples = {k: np.asarray(v) for k, v in first[2]["samples"].items()}
  return dict(batch=batch, samples=samples, run=run, mesh=mesh, per_device=first)


def test_devices_have_very_different_counts(setup):
  samples, run, batch = setup["samples"], setup["run"], setup["batch"]
  part = lambda tree, sl: jax.tree.map(lambda x: x[sl], tree)
  pairs = [int(run(part(batch, sl), part(samples, sl), 1)[2]["num_relation_pairs"])
           for sl in (slice(0, 2), slice(2, 4))]
  assert pairs[0] > 0 and pairs[1] == 0, pairs


def test_per_device_equals_the_mean_of_each_devices_own_loss(setup):
  batch, samples, run = setup["batch"], setup["samples"], setup["run"]
  part = lambda tree, sl: jax.tree.map(lambda x: x[sl], tree)
  runs = [run(part(batch, sl), part(samples, sl), 1) for sl in (slice(0, 2), slice(2, 4))]
  total, losses, _, grads = setup["per_device"]
  mean_grads = jax.tree.map(lambda a, b: (a.astype(np.float64) + b) / 2, runs[0][3], runs[1][3])
  for k in losses:
    np.testing.assert_allclose(losses[k], (runs[0][1][k] + runs[1][1][k]) / 2, rtol=1e-5,
                               atol=1e-7, err_msg=k)
  np.testing.assert_allclose(total, (runs[0][0] + runs[1][0]) / 2, rtol=1e-5)
  errors = {m: _norm_rel(grads, mean_grads, m) for m in MODULES}
  print("per_device vs explicit mean, norm-wise:", errors)
  assert max(errors.values()) <= NORM_RTOL, errors
  # device 1 has no ranking pair: its relation loss is 0 (the original's `if count`) and the
  # per-device relation loss is half of device 0's
  assert runs[1][1]["loss_relation"] == 0.0
  np.testing.assert_allclose(losses["loss_relation"], runs[0][1]["loss_relation"] / 2, rtol=1e-5)


def test_global_equals_the_whole_batch_and_differs_from_per_device(setup):
  batch, samples, run, mesh = setup["batch"], setup["samples"], setup["run"], setup["mesh"]
  total_g, losses_g, _, grads_g = run(batch, samples, 1, mesh)
  total_1, losses_1, _, grads_1 = run(batch, samples, 1)  # one device, one batch of 4
  for k in losses_g:
    np.testing.assert_allclose(losses_g[k], losses_1[k], rtol=1e-5, atol=1e-7, err_msg=k)
  errors = {m: _norm_rel(grads_g, grads_1, m) for m in MODULES}
  print("global (2 devices) vs one batch, norm-wise:", errors)
  assert max(errors.values()) <= NORM_RTOL, errors
  _, losses_pd, _, grads_pd = setup["per_device"]
  # all ranking pairs are on device 0: global = their mean, per-device = half of it
  np.testing.assert_allclose(losses_pd["loss_relation"], losses_g["loss_relation"] / 2,
                             rtol=1e-5)
  assert abs(losses_pd["loss_mask"] - losses_g["loss_mask"]) > 1e-3 * losses_g["loss_mask"]
  moved = {m: _norm_rel(grads_pd, grads_g, m) for m in MODULES}
  print("per_device vs global, norm-wise:", moved)
  assert moved["roi_heads/relation"] > 0.3, moved
  for m in ("backbone", "roi_heads/mask", "semantic_head"):  # positives, labelled pixels
    assert moved[m] > 100 * NORM_RTOL, (m, moved)
  for m in ("rpn", "roi_heads/box"):  # every image samples its full quota of anchors / ROIs:
    assert moved[m] <= NORM_RTOL, (m, moved)  # same counts on both devices, same losses


def test_train_step_normalises_per_device_by_default():
  config = tiny.get_config()
  assert common.get_config().train.loss_normalization == "per_device"
  mesh = sharding.make_mesh(jax.devices()[:4])
  assert train.loss_groups(config, mesh) == 4
  config.train.loss_normalization = "global"
  assert train.loss_groups(config, mesh) == 1
  config_checks.check_config(config)
  config.train.loss_normalization = "per_gpu"
  with pytest.raises(config_checks.ConfigError, match="train.loss_normalization='per_gpu': "
                     "must be one of \\('per_device', 'global'\\)"):
    config_checks.check_config(config)
  with pytest.raises(ValueError, match="per_gpu"):
    train.loss_groups(config, mesh)


def test_group_normalize():
  sums = jnp.array([1.0, 3.0, 10.0, 0.0])
  counts = jnp.array([1, 1, 4, 0])
  f32 = lambda x: pytest.approx(x, rel=1e-7, abs=0)
  assert float(loss_lib.group_normalize(sums, counts)) == f32(14.0 / 6)
  assert float(loss_lib.group_normalize(sums, counts, 2)) == f32((4.0 / 2 + 10.0 / 4) / 2)
  # a device that counted nothing (its sums are 0) contributes 0 and still counts in the mean
  assert float(loss_lib.group_normalize(jnp.array([1.0, 3.0, 0.0, 0.0]),
                                        jnp.array([1, 1, 0, 0]), 2)) == f32((4.0 / 2 + 0.0) / 2)
  with pytest.raises(ValueError, match="does not split into 3"):
    loss_lib.group_normalize(sums, counts, 3)
