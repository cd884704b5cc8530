"""`PanopticRCNN.losses` against one recorded training iteration of the original (fixtures README
"Training fixtures", `train_small_astronaut_coffee.npz`), plus sharding and padding invariance.

The replay itself (batch from the npz, the original's injected random draws, name mapping, our
run, the comparisons and their tolerances) lives in `rap_jax.parity.train_iteration`, shared with
scripts/train_parity.py and tests/test_optim.py; see its docstrings: targets exact, losses
relative 1e-5 (total 1e-6), gradients elementwise within 4 x (eps32 sqrt(n) sum|terms| + sampled
float32 noise) (`compare_gradients`, derived from float32 reduction order, the same on AVX2 and
AVX-512 machines).
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs import tiny
from configs.fixtures import ocfusion_small, rap_small
from rap_jax import checkpoint
from rap_jax.modeling import losses as loss_lib
from rap_jax.modeling import targets
from rap_jax.modeling.panoptic_rcnn import PanopticRCNN
from rap_jax.ops import sampling
from rap_jax.parity import train_iteration as ti
from tiny_train_batch import random_variables, tiny_batch

P, R = ti.P, ti.R


@pytest.fixture(scope="module")
def npz(fixtures_dir):
  return ti.load_fixture(fixtures_dir / ti.NPZ)


@pytest.fixture(scope="module")
def batch(npz):
  return ti.fixture_batch(npz)


@pytest.fixture(scope="module")
def rap_run(npz, batch, rap_small_ckpt):
  return ti.run_iteration(rap_small.get_config(), checkpoint.load_variables(rap_small_ckpt),
                          batch, ti.fixture_samples(npz))


@pytest.fixture(scope="module")
def oc_run(npz, batch, ocfusion_small_ckpt):
  return ti.run_iteration(ocfusion_small.get_config(),
                          checkpoint.load_variables(ocfusion_small_ckpt), batch,
                          ti.fixture_samples(npz, ocfusion=True), grad_subtree="relation")


# --------------------------------------------------------------------------- RAP parity


def test_rap_losses_match_original(npz, rap_run):
  result = ti.compare_losses(npz, rap_run)
  print(json.dumps(result.values, indent=1))
  assert result.ok, result.message()


def test_rap_targets_match_original(npz, rap_run):
  result = ti.compare_targets(npz, rap_run)
  assert result.ok, result.message()
  assert result.summary == "targets identical"


def test_rap_gradients_match_original(npz, rap_run):
  result = ti.compare_gradients(npz, rap_run, expected=ti.NUM_GRADS)
  print(result.summary)
  print(json.dumps(dict(sorted(result.values.items(), key=lambda kv: -kv[1])[:8]), indent=1))
  assert result.ok, result.message()
  # relation_val.bias is exactly 0 (every pair adds dL/dz_front + dL/dz_back = 0): its recorded
  # 1.5e-8 and ours are float32 noise, within the bound of its summands, not of its value
  name = "roi_heads.relation.predictor.relation_val.bias"
  bound, _ = ti.gradient_bound(rap_run, ti.torch_to_ours(name, npz[f"grad/{name}"])[0])
  assert np.abs(npz[f"grad/{name}"]).max() < 1e-7 and bound.max() < 1e-5
  # frozen (stem, layer1) parameters still get a gradient here; the optimizer masks them
  assert "stem" in rap_run.grads["backbone"]["body"]


def test_gradient_bound_catches_a_wrong_gradient(npz, rap_run):
  """The bound is tight enough to see a 1% error of one tensor (or a missing 1% of a loss)."""
  d = dict(npz)
  key = "grad/roi_heads.box.predictor.cls_score.weight"
  d[key] = npz[key] * np.float32(1.01)
  result = ti.compare_gradients(d, rap_run)
  assert not result.ok and result.worst == key[len("grad/"):]


# ---------------------------------------------------------------------- OCFusion parity


def test_ocfusion_loss_and_gradients_match_original(npz, oc_run):
  for result in (ti.compare_losses(npz, oc_run, prefix="oc_"),
                 ti.compare_ocfusion_samples(npz, oc_run),
                 ti.compare_gradients(npz, oc_run, "oc_grad/", "relation",
                                      expected=ti.NUM_OC_GRADS)):
    print(result.name, result.summary or result.ratio)
    assert result.ok, result.message()


def test_ocfusion_candidates_and_our_sampler(npz, batch):
  """Our candidate matrix holds exactly the original's M_i samples; our draws are among them."""
  off = npz["rel_positive_offsets"]
  pos = npz["roi_positive_index"]
  gt = npz["roi_sampled_matched_gt"][pos]
  for i in range(2):
    n = off[i + 1] - off[i]
    gt_i = np.zeros(P, np.int32)
    gt_i[:n] = gt[off[i]:off[i + 1]]
    cand = targets.occlusion_candidates(jnp.asarray(gt_i), jnp.arange(P) < n,
                                        jnp.asarray(batch["relations"][i]))
    flat = np.repeat(np.asarray(cand).reshape(-1), 2)
    want = ti.oc_flat_index(npz[f"oc_pairs_img{i}"])
    np.testing.assert_array_equal(np.nonzero(flat)[0], np.sort(want))
    drawn = sampling.mask_to_indices(sampling.random_subset(jax.random.PRNGKey(i),
                                                            jnp.asarray(flat), 128), 128)
    first, second, tgt, valid = (np.asarray(x) for x in targets.occlusion_samples(drawn, P))
    assert valid.all() and len(set(np.asarray(drawn).tolist())) == 128
    rows = {tuple(r) for r in npz[f"oc_pairs_img{i}"].tolist()}
    assert all((f, s, int(t)) in rows for f, s, t in zip(first, second, tgt))


# ------------------------------------------------------------------- mask targets, RPN


def test_mask_targets_from_bitmaps(npz, batch, rap_run):
  """Bitmap-derived 28x28 targets vs the original's polygon rasterisation (documented gap)."""
  pos = npz["roi_positive_index"]
  boxes, gt = npz["roi_sampled_boxes"][pos], npz["roi_sampled_matched_gt"][pos]
  off = npz["rel_positive_offsets"]
  packed = np.packbits(batch["masks"], axis=-1)
  fn = jax.jit(targets.mask_targets, static_argnames=("resolution", "sampling_ratio", "packed"))
  ours = []
  for i in range(2):
    sl = slice(off[i], off[i + 1])
    hw = batch["image_info"]["resized_hw"][i]
    t = fn(batch["masks"][i], gt[sl], boxes[sl], hw)
    np.testing.assert_array_equal(t, fn(packed[i], gt[sl], boxes[sl], hw, packed=True))
    ours.append(np.asarray(t))
  ours = np.concatenate(ours)
  agree = float((ours == npz["mask_targets"]).mean())
  # the mask loss with our targets, from the recorded run's GT-class logits
  logits = np.concatenate([rap_run.aux["intermediates"]["mask_logits"][i][:off[i + 1] - off[i]]
                           for i in range(2)])
  loss = float(jnp.mean(loss_lib.bce_with_logits(jnp.asarray(logits), jnp.asarray(ours))))
  print(f"mask target agreement {agree:.5f} ({int((ours != npz['mask_targets']).sum())} of "
        f"{ours.size} pixels differ); loss_mask with bitmap targets {loss:.7f} vs "
        f"{float(npz['loss_mask']):.7f}")
  assert agree > 0.995
  assert abs(loss - npz["loss_mask"]) / npz["loss_mask"] < 5e-3


def test_own_train_proposals_are_the_original_set(npz, batch, rap_small_ckpt):
  """Our RPN with the train top-n values yields the original's proposals; only adjacent rows
  whose objectness differs by ~1e-7 may come in the other order (hence injection above)."""
  config = rap_small.get_config()
  model = PanopticRCNN.from_config(config.model)
  variables = checkpoint.load_variables(rap_small_ckpt)

  def fn(v, x, p, r):
    def f(m, x, p, r):
      _, pyr = m.backbone(x, p)
      out = m.rpn(pyr, p, r, train=True)
      return out["proposals"], out["objectness"], out["valid"]
    return model.apply(v, x, p, r, method=f)

  info = batch["image_info"]
  boxes, obj, valid = jax.jit(fn)(variables, batch["image"], info["padded_hw"],
                                  info["resized_hw"])
  for i in range(2):
    g = len(npz[f"gt{i}_boxes"])
    want = npz[f"roi_proposals_img{i}"][:-g]
    n = len(want)
    assert int(valid[i].sum()) == n and boxes.shape[1] == R
    np.testing.assert_allclose(obj[i][:n], npz[f"roi_proposals_objectness_img{i}"][:-g],
                               atol=1e-5, rtol=0)
    mine = np.asarray(boxes[i][:n])
    moved = np.nonzero(np.abs(mine - want).max(1) > 1e-3)[0]
    assert len(moved) <= 6, moved
    for k in moved:  # every moved row sits next to its twin
      assert any(np.abs(mine[k] - want[j]).max() < 1e-3 for j in (k - 1, k + 1))


# ------------------------------------------------------------------------ loss formulas


def test_loss_formulas_against_torch():
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.normal(0, 4, 200), [0.0, 40.0, -40.0, 100.0]]).astype(np.float32)
  y = (rng.uniform(size=x.shape) > 0.5).astype(np.float32)
  tx = torch.tensor(x, requires_grad=True)
  want = torch.nn.functional.binary_cross_entropy_with_logits(tx, torch.tensor(y), reduction="none")
  # torch's forward (x - x*y - log_sigmoid(x)) cancels to ~1 ulp of |x|; ours uses log1p
  np.testing.assert_allclose(loss_lib.bce_with_logits(x, y), want.detach(), rtol=1e-6, atol=1e-6)
  want.sum().backward()  # gradient sigmoid(x) - y
  grad = jax.grad(lambda v: jnp.sum(loss_lib.bce_with_logits(v, y)))(jnp.asarray(x))
  np.testing.assert_allclose(grad, tx.grad, rtol=1e-6, atol=1e-7)
  # nn.BCELoss on probabilities, including saturated 0 / 1 (log clamp, backward formula)
  p = np.concatenate([rng.uniform(0, 1, 50), [0.0, 1.0, 1e-30, 1 - 1e-7]]).astype(np.float32)
  t = (rng.uniform(size=p.shape) > 0.5).astype(np.float32)
  t[-4:] = [1, 0, 1, 0]
  tp = torch.tensor(p, requires_grad=True)
  tl = torch.nn.functional.binary_cross_entropy(tp, torch.tensor(t), reduction="none")
  tl.sum().backward()
  mine, vjp = jax.vjp(loss_lib.bce_probs, jnp.asarray(p), jnp.asarray(t))
  np.testing.assert_allclose(mine, tl.detach(), rtol=1e-6)
  np.testing.assert_allclose(vjp(jnp.ones_like(mine))[0], tp.grad, rtol=1e-6)
  # smooth L1 (maskrcnn-benchmark form) and the literal ranking loss, overflow included
  d = np.array([-2.0, -0.05, 0.0, 0.05, 0.2, 3.0], np.float32)
  np.testing.assert_allclose(loss_lib.smooth_l1(d, 1.0 / 9),
                             np.where(np.abs(d) < 1 / 9, 0.5 * d * d * 9, np.abs(d) - 0.5 / 9),
                             rtol=1e-6)
  z = np.array([-100.0, -20.0, 0.0, 3.0, 88.0, 89.0], np.float32)
  want = torch.log(1 + torch.exp(torch.tensor(z))).numpy()
  np.testing.assert_array_equal(loss_lib.ranking_loss(z, np.zeros_like(z)), want)
  assert np.isinf(want[-1]) and want[0] == 0.0  # the original's float32 behaviour, kept
  stable = np.asarray(loss_lib.ranking_loss(z, np.zeros_like(z), stable=True))
  np.testing.assert_allclose(stable[1:-1], want[1:-1], rtol=1e-6, atol=1e-7)
  assert np.isfinite(stable).all() and stable[1] > 0  # softplus(-20) = 2e-9; literal: 0


def test_unused_nonfinite_targets_do_not_reach_gradients():
  """Zero-area proposals (kept by the original) encode to inf / NaN targets on background rows;
  the original never reads them, neither may our masked sums or their gradients."""
  logits = jnp.zeros((3, 4))
  targets_ = jnp.array([[0.1, 0.2, 0.0, 0.1], [jnp.inf, jnp.nan, -jnp.inf, 0.0], [0.0] * 4])
  labels = jnp.array([1, 0, 0])
  def f(reg, deltas):
    box = loss_lib.box_loss_sums(logits[:, :2], reg, labels, targets_, jnp.array([1, 1, 0]) > 0)
    rpn = loss_lib.rpn_loss_sums(jnp.zeros(3), deltas, jnp.array([[0.0, 0, 9, 9]] * 3),
                                 jnp.array([[0.0, 0, 9, 9], [5.0, 5, 4, 4]]),
                                 jnp.array([0, 1, -1]), jnp.array([1, 0, 0]), jnp.array([0, 1, 2]))
    return box["box_reg"] + rpn["box_reg"]
  value, grads = jax.value_and_grad(f, argnums=(0, 1))(jnp.zeros((3, 8)), jnp.zeros((3, 4)))
  assert float(value) > 0  # the positives' terms are there
  assert np.isfinite(value) and all(np.isfinite(np.asarray(g)).all() for g in grads)


# ---------------------------------------------------------------- sharding and padding


def test_sharded_matches_unsharded_and_padding_is_inert():
  config = tiny.get_config()
  model = PanopticRCNN.from_config(config.model)
  variables = random_variables(config)
  key = jax.random.PRNGKey(7)

  def forward(params, buffers, b, k):
    out, aux = model.apply({"params": params, "buffers": buffers}, b, k,
                           method=PanopticRCNN.losses)
    counts = {n: aux[n] for n in aux if n.startswith("num_")}
    return loss_lib.total_loss(out), (out, counts, aux["samples"])

  @jax.jit
  def step(v, b, k):
    return forward(v["params"], v["buffers"], b, k)[1]

  @jax.jit
  def grad_step(v, b, k):
    (_, aux), grads = jax.value_and_grad(forward, has_aux=True)(v["params"], v["buffers"], b, k)
    return aux, grads

  # 6 real images + 2 padding images (garbage content, zero sizes), sharded over 8 devices
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  shard = NamedSharding(mesh, PartitionSpec("data"))
  put = lambda b: jax.tree.map(lambda x: jax.device_put(x, shard), b)
  out_s, counts_s, samples_s = step(variables, put(tiny_batch(config, 6, 2, 0, 1)), key)
  assert out_s["loss_semantic"].sharding.is_fully_replicated
  # other garbage in the padding images: bit-identical (same executable)
  out_g, _, _ = step(variables, put(tiny_batch(config, 6, 2, 0, 5)), key)
  for k in out_s:
    assert float(out_g[k]) == float(out_s[k]), k
  # unsharded, the same 6 images without padding: same samples (per-image PRNG streams), same
  # counts, same losses up to the float32 summation order (sums of 384 terms)
  (out_u, counts_u, samples_u), grads = grad_step(variables, tiny_batch(config, 6, 0, 0, 1), key)
  bad = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]
         if not np.isfinite(np.asarray(g)).all()]
  assert not bad, bad  # e.g. zero-area proposals of a random RPN must not poison gradients
  for k in out_u:
    assert np.isfinite(out_u[k]) and out_u[k] > 0, k
    np.testing.assert_allclose(out_s[k], out_u[k], rtol=1e-5, err_msg=k)
  assert set(out_u) == set(loss_lib.LOSS_ORDER)
  assert {k: int(v) for k, v in counts_s.items()} == {k: int(v) for k, v in counts_u.items()}
  for k in ("rpn_sampled", "roi_sampled"):
    np.testing.assert_array_equal(samples_s[k][:6], samples_u[k])
    assert (samples_s[k][6:] == -1).all()  # padding images draw nothing
  assert int(counts_u["num_relation_pairs"]) > 0
  assert int(counts_u["num_sampled_anchors"]) == 6 * config.model.rpn.batch_size_per_image
