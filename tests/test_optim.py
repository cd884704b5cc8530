"""Optimizer parity with the original's first SGD step (fixtures README, "Training fixtures").

Fixture gradients `grad/<param>` are mapped to our layout with the converter's name table and
hooks, applied to the converted small RAP checkpoint with our optax chain, and compared with the
original's parameters after `scheduler.step(); optimizer.step()` (rap_jax.parity.train_iteration,
shared with scripts/train_parity.py):
  opt_a: stage 2 (SOLVER.FINETUNE, only roi_heads.relation.*, constant lr 0.002 / bias 0.004);
  opt_b: stage 1 (R-50 1x solver: first update lr 0.02 * 0.334667, bias x2, wd 1e-4 / 0).
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.fixtures import rap_small
from rap_jax import checkpoint
from rap_jax import optim
from rap_jax.parity import train_iteration as ti

our_param_path = ti.our_param_path
stage1_config = lambda: ti.optimizer_config("b")


@pytest.fixture(scope="module")
def npz(fixtures_dir):
  return ti.load_fixture(fixtures_dir / ti.NPZ)


@pytest.fixture(scope="module")
def params(rap_small_ckpt):
  return checkpoint.load_variables(rap_small_ckpt)["params"]


@pytest.mark.parametrize("case", ["a", "b"])
def test_first_sgd_step_matches_the_original(case, npz, params):
  """`ti.compare_optimizer_step`: within one float32 ulp of the tensor's largest magnitude and
  2e-5 of the update, frozen parameters bit-identical."""
  config = ti.optimizer_config(case)
  assert config.train.stage == (2 if case == "a" else 1)
  result = ti.compare_optimizer_step(npz, params, case)
  assert result.ok, result.message()
  assert result.values["tensors"] == (11 if case == "a" else 48)
  # The README's float32 evaluation is bit-exact for 6 of 11 (a) and 27 of 48 (b) tensors.
  assert result.values["exact"] >= (6 if case == "a" else 27)
  # Every trained weight moves (weight decay); the original did update every recorded tensor.
  after = ti.optimizer_step(config, params, ti.fixture_grad_tree(npz, params))
  before = checkpoint.flatten(params)
  for key in npz:
    if key.startswith(f"opt_{case}/"):
      path = our_param_path(key[len(f"opt_{case}/"):])
      assert not np.array_equal(ti.torch_to_ours(key[len(f"opt_{case}/"):], npz[key])[1],
                                before[path])
  for path, value in before.items():
    trained = path.startswith("roi_heads/relation/") if case == "a" else not path.startswith(
        ("backbone/body/stem/", "backbone/body/layer1/"))
    if trained and not path.endswith("/bias"):
      assert not np.array_equal(after[path], value), path


@pytest.mark.parametrize("case", ["a", "b"])
def test_per_parameter_lr_and_weight_decay(case, npz, params):
  config = rap_small.get_config() if case == "a" else stage1_config()
  expected = {our_param_path(k): tuple(v)
              for k, v in json.loads(str(npz[f"opt_{case}_lr_wd_json"])).items()}
  got = {p: v for p, v in optim.describe(params, config).items() if v is not None}
  # The same parameters are in the optimizer (freezing), each with the original's lr and wd.
  assert set(got) == set(expected)
  for path, (lr, wd) in expected.items():
    assert got[path] == pytest.approx((lr, wd), rel=1e-12, abs=0), path
  # GroupNorm weights get weight decay, GroupNorm biases do not (SPEC §6.1).
  if case == "b":
    assert got["semantic_head/semantic_seq0/1/scale"][1] == 1e-4
    assert got["semantic_head/semantic_seq0/1/bias"][1] == 0


def test_frozen_parameters_have_no_optimizer_state(params):
  state = optim.make_optimizer(stage1_config()).init(params)
  sizes = sum(x.size for x in jax.tree_util.tree_leaves(state) if x.ndim)  # momentum buffers
  frozen = sum(v.size for p, v in checkpoint.flatten(params).items()
               if p.startswith(("backbone/body/stem/", "backbone/body/layer1/")))
  total = sum(v.size for v in jax.tree_util.tree_leaves(params))
  assert sizes == total - frozen
  state2 = optim.make_optimizer(rap_small.get_config()).init(params)
  relation = sum(v.size for p, v in checkpoint.flatten(params).items()
                 if p.startswith("roi_heads/relation/"))
  assert sum(x.size for x in jax.tree_util.tree_leaves(state2) if x.ndim) == relation


@pytest.mark.parametrize("freeze_at, frozen", [
    (0, ()), (1, ("stem",)), (2, ("stem", "layer1")), (4, ("stem", "layer1", "layer2", "layer3"))])
def test_freeze_at_generalises(freeze_at, frozen, params):
  config = stage1_config()
  config.model.backbone.freeze_at = freeze_at
  labels = checkpoint.flatten(optim.label_params(params, config))
  got = {p.split("/")[2] for p, v in labels.items() if v == optim.FROZEN}
  assert got == set(frozen)


def test_schedule_matches_the_original_trace(npz):
  """sched_trace rows: (last_epoch, lr weight group, lr bias group) of WarmupMultiStepLR."""
  t = stage1_config().train
  kwargs = dict(steps=(80000, 120000), gamma=0.1, warmup_factor=1.0 / 3, warmup_iters=500)
  weight_fn, bias_fn = optim.schedule(t, optim.WEIGHT), optim.schedule(t, optim.BIAS)
  for epoch, lr_w, lr_b in npz["sched_trace"]:
    e = int(epoch)
    assert optim.lr_at(e, base_lr=0.02, **kwargs) == pytest.approx(lr_w, rel=1e-12, abs=0)
    assert optim.lr_at(e, base_lr=0.04, **kwargs) == pytest.approx(lr_b, rel=1e-12, abs=0)
    if e >= 1:  # the update of iteration e (optax count e - 1) uses float32(lr(e)) exactly
      assert weight_fn(jnp.int32(e - 1)) == np.float32(lr_w)
      assert bias_fn(jnp.int32(e - 1)) == np.float32(lr_b)
  # The first update never uses base/3 (SPEC §6.1); stage 2's lr is constant (SPEC §11.16).
  assert optim.first_update_lr(t) == 0.02 * (1.0 / 3 * (1 - 1 / 500) + 1 / 500)
  t2 = rap_small.get_config().train
  fn = optim.schedule(t2)
  lrs = {float(fn(jnp.int32(c))) for c in (0, 1, 4999, 5000, 9999)}
  assert lrs == {float(np.float32(0.002))}


def test_current_lr_follows_the_update_count(params):
  config = stage1_config()
  tx = optim.make_optimizer(config)
  state = tx.init(params)
  assert float(optim.current_lr(config, state)) == pytest.approx(0.02 * 0.334667, rel=1e-6)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  _, state = jax.jit(tx.update)(zeros, state, params)
  assert float(optim.current_lr(config, state)) == pytest.approx(0.02 * 0.336, rel=1e-6)
