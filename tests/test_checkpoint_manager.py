"""rap_jax/checkpoint.py training checkpoints: orbax CheckpointManager, latest/resolve (§9.0)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rap_jax import checkpoint
from rap_jax import sharding


def _variables():
  return {"params": {"roi_heads": {"relation": {"kernel": np.arange(6, dtype=np.float32)
                                                .reshape(2, 3),
                                                "bias": np.ones(3, np.float32)}},
                     "backbone": {"body": {"stem": {"conv1": {"kernel": np.full((2, 2), 0.5,
                                                                                  np.float32)}}}}},
          "buffers": {"backbone": {"body": {"stem": {"bn1": {"running_var": np.ones(2,
                                                                                  np.float32)}}}}}}


def _tx():
  labels = {"roi_heads": {"relation": {"kernel": "w", "bias": "w"}},
            "backbone": {"body": {"stem": {"conv1": {"kernel": "f"}}}}}
  return optax.multi_transform({"w": optax.chain(optax.trace(0.9), optax.sgd(0.1)),
                                "f": optax.set_to_zero()}, labels)


def _state(mesh, seed=0):
  repl = sharding.replicated(mesh)
  variables = jax.device_put(_variables(), repl)
  tx = _tx()
  opt_state = tx.init(variables["params"])
  grads = jax.tree_util.tree_map(lambda x: jnp.full_like(x, seed + 1.0), variables["params"])
  _, opt_state = tx.update(grads, opt_state, variables["params"])  # non-zero momentum, count 1
  return variables, jax.device_put(opt_state, repl)


def test_save_restore_round_trip_with_shardings(tmp_path):
  mesh = sharding.make_mesh()
  variables, opt_state = _state(mesh)
  manager = checkpoint.train_checkpoint_manager(tmp_path)
  checkpoint.save_train_checkpoint(manager, 10, variables, opt_state, {"stage": 1, "seed": 3})
  manager.wait_until_finished()
  assert manager.latest_step() == 10
  assert checkpoint.train_checkpoint_meta(manager, 10) == {"stage": 1, "seed": 3, "step": 10}

  target_v = sharding.abstract_replicated(variables, mesh)
  target_o = sharding.abstract_replicated(opt_state, mesh)
  got_v, got_o, meta = checkpoint.restore_train_checkpoint(manager, 10, target_v, target_o)
  assert meta["step"] == 10
  assert jax.tree_util.tree_structure(got_o) == jax.tree_util.tree_structure(opt_state)
  for a, b in zip(jax.tree_util.tree_leaves((variables, opt_state)),
                  jax.tree_util.tree_leaves((got_v, got_o))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert b.sharding == sharding.replicated(mesh)
  manager.close()


def test_step_directory_is_a_variables_checkpoint(tmp_path):
  """predict/eval load `latest_checkpoint(workdir)` with the converter's loader."""
  mesh = sharding.make_mesh()
  variables, opt_state = _state(mesh)
  manager = checkpoint.train_checkpoint_manager(tmp_path)
  for step in (5, 10):
    checkpoint.save_train_checkpoint(manager, step, variables, opt_state, {"stage": 1})
  manager.wait_until_finished()
  manager.close()
  latest = checkpoint.latest_checkpoint(tmp_path)
  assert latest == tmp_path.absolute() / "checkpoints" / "10"
  loaded = checkpoint.load_variables(latest)
  ref = checkpoint.flatten(_variables())
  assert checkpoint.flatten(loaded).keys() == ref.keys()
  for path, value in checkpoint.flatten(loaded).items():
    np.testing.assert_array_equal(value, ref[path])
  restored = checkpoint.restore_variables(latest, _variables())  # strict merge works as is
  assert checkpoint.flatten(restored).keys() == ref.keys()
  # init_checkpoint may name the workdir, its checkpoints/ folder or a step directory
  for path in (tmp_path, tmp_path / "checkpoints", latest, tmp_path / "checkpoints" / "5"):
    want = latest if path != tmp_path / "checkpoints" / "5" else path.absolute()
    assert checkpoint.resolve_checkpoint(path) == want
  with pytest.raises(FileNotFoundError):
    checkpoint.resolve_checkpoint(tmp_path / "nothing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="neither a variables checkpoint"):
    checkpoint.resolve_checkpoint(tmp_path / "empty")


def test_converted_checkpoint_resolves_to_itself(tmp_path):
  checkpoint.save_variables(tmp_path / "conv", _variables())
  assert checkpoint.resolve_checkpoint(tmp_path / "conv") == (tmp_path / "conv").absolute()
  assert checkpoint.latest_checkpoint(tmp_path / "conv") is None


def test_keeps_the_newest_and_each_stage_end(tmp_path):
  mesh = sharding.make_mesh()
  variables, opt_state = _state(mesh)
  manager = checkpoint.train_checkpoint_manager(tmp_path, max_to_keep=2, keep_steps=(4,))
  for step in (2, 4, 6, 8, 10):
    checkpoint.save_train_checkpoint(manager, step, variables, opt_state, {"stage": 1})
  manager.wait_until_finished()
  assert sorted(manager.all_steps()) == [4, 8, 10]
  manager.close()
  # an unfinished (temporary) step directory is never "latest"
  (tmp_path / "checkpoints" / "12.orbax-checkpoint-tmp-1").mkdir()
  (tmp_path / "checkpoints" / "14").mkdir()
  assert checkpoint.latest_checkpoint(tmp_path).name == "10"
