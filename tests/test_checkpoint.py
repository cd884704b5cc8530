"""rap_jax/checkpoint.py: orbax variables checkpoints and strict merging (SPEC §9.1)."""
import logging

import jax
import numpy as np
import pytest

from convert import converter
from convert import source
from rap_jax import checkpoint

RELATION = checkpoint.RELATION_HEAD


def _tree():
  """A miniature variables tree with the contract's three kinds of leaves."""
  conv = {"kernel": np.arange(36, dtype=np.float32).reshape(3, 3, 2, 2),
          "bias": np.ones(2, np.float32)}
  relation_val = {"kernel": np.ones((4, 1), np.float32), "bias": np.zeros(1, np.float32)}
  bn1 = {n: np.full(2, i, np.float32)
         for i, n in enumerate(["weight", "bias", "running_mean", "running_var"])}
  return {"params": {"rpn": {"head": {"conv": conv}},
                     "roi_heads": {"relation": {"predictor": {"relation_val": relation_val}}}},
          "buffers": {"backbone": {"body": {"stem": {"bn1": bn1}}}}}


def _without(tree, prefix):
  return checkpoint.unflatten({p: v for p, v in checkpoint.flatten(tree).items()
                               if not p.startswith(prefix + "/")})


def test_flatten_unflatten_round_trip():
  flat = checkpoint.flatten(_tree())
  assert "buffers/backbone/body/stem/bn1/running_var" in flat
  assert "params/roi_heads/relation/predictor/relation_val/kernel" in flat
  assert checkpoint.flatten(checkpoint.unflatten(flat)).keys() == flat.keys()


def test_save_load_round_trip(tmp_path):
  tree = _tree()
  tree["params"]["rpn"]["head"]["conv"]["kernel"] = tree["params"]["rpn"]["head"]["conv"][
      "kernel"].transpose(3, 2, 1, 0)  # non-contiguous input is fine
  checkpoint.save_variables(tmp_path / "ckpt", tree, metadata={"source": "x.pth"})
  loaded = checkpoint.load_variables(tmp_path / "ckpt")
  assert checkpoint.load_metadata(tmp_path / "ckpt") == {"source": "x.pth"}
  a, b = checkpoint.flatten(tree), checkpoint.flatten(loaded)
  assert a.keys() == b.keys()
  for p in a:
    assert isinstance(b[p], np.ndarray) and b[p].dtype == np.float32
    np.testing.assert_array_equal(a[p], b[p])
  # The orbax directory itself is accepted too.
  direct = checkpoint.load_variables(tmp_path / "ckpt" / "variables")
  assert checkpoint.flatten(direct).keys() == a.keys()


def test_all_group_norm_model_round_trip(tmp_path):
  # An all-GroupNorm model (configs/tiny_gn.py) has an empty 'buffers' collection: it is saved,
  # loaded and merged like any other (orbax restores need the empty subtree in their arguments).
  import orbax.checkpoint as ocp
  tree = {"params": _tree()["params"], "buffers": {}}
  checkpoint.save_variables(tmp_path / "gn", tree)
  with ocp.PyTreeCheckpointer() as ckptr:  # as training writes it: the empty subtree is kept
    ckptr.save(tmp_path / "gn" / "variables", tree, force=True)
  loaded = checkpoint.load_variables(tmp_path / "gn")
  assert checkpoint.flatten(loaded).keys() == checkpoint.flatten(tree).keys()
  merged = checkpoint.restore_variables(tmp_path / "gn", tree)
  assert merged["buffers"] == {}  # kept: the model is applied with {"params", "buffers"}
  np.testing.assert_array_equal(checkpoint.flatten(merged)["params/rpn/head/conv/kernel"],
                                tree["params"]["rpn"]["head"]["conv"]["kernel"])


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    checkpoint.load_variables(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="not a variables checkpoint"):
    checkpoint.load_variables(tmp_path / "empty")


def test_merge_exact_match_takes_loaded_values_in_reference_dtype():
  loaded = _tree()
  reference = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, np.float32), loaded)
  merged = checkpoint.merge_variables(loaded, reference)
  for p, v in checkpoint.flatten(loaded).items():
    np.testing.assert_array_equal(checkpoint.flatten(merged)[p], v)
  abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, np.float32), loaded)
  assert checkpoint.flatten(checkpoint.merge_variables(loaded, abstract)).keys() == \
      checkpoint.flatten(loaded).keys()


def test_merge_lists_every_mismatch():
  reference = _tree()
  loaded = _tree()
  loaded["params"]["rpn"]["head"]["conv"]["bias"] = np.ones(3, np.float32)     # shape
  del loaded["buffers"]["backbone"]["body"]["stem"]["bn1"]["running_var"]       # missing
  loaded["params"]["rpn"]["head"]["extra"] = {"kernel": np.ones(1, np.float32)}  # unexpected
  with pytest.raises(checkpoint.CheckpointMismatchError) as info:
    checkpoint.merge_variables(loaded, reference)
  text = str(info.value)
  assert "3 problems" in text
  assert ("missing (in the model, not in the checkpoint): "
          "buffers/backbone/body/stem/bn1/running_var (2,)") in text
  assert ("unexpected (in the checkpoint, not in the model): "
          "params/rpn/head/extra/kernel (1,)") in text
  assert "shape mismatch: params/rpn/head/conv/bias checkpoint (3,) vs model (2,)" in text


def test_stage1_into_stage2_needs_explicit_allow_fresh(caplog):
  reference = jax.tree_util.tree_map(lambda x: np.full(x.shape, 7, np.float32), _tree())
  stage1 = _without(_tree(), RELATION)
  with pytest.raises(checkpoint.CheckpointMismatchError, match="relation_val/kernel"):
    checkpoint.merge_variables(stage1, reference)
  caplog.set_level(logging.INFO)
  merged = checkpoint.flatten(checkpoint.merge_variables(stage1, reference, allow_fresh=[RELATION]))
  assert ("params/roi_heads/relation: 2 tensors not in checkpoint, freshly initialised"
          in caplog.text)
  assert (merged["params/roi_heads/relation/predictor/relation_val/kernel"] == 7).all()
  np.testing.assert_array_equal(merged["params/rpn/head/conv/bias"], np.ones(2))
  # An abstract reference has no fresh values to keep.
  abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, np.float32), _tree())
  with pytest.raises(checkpoint.CheckpointMismatchError, match="abstract"):
    checkpoint.merge_variables(stage1, abstract, allow_fresh=[RELATION])


def test_stage1_fixture_into_rap_model_reports_relation_head(tmp_path, fixtures_dir, caplog):
  """A Panoptic FPN (stage-1) checkpoint, converted, restored into a RAP model: the 12 relation
  tensors are reported as freshly initialised; everything else comes from the checkpoint."""
  sd = source.read_checkpoint(fixtures_dir / "rap_small_legacy.pth").state_dict
  stage1 = {k: v for k, v in sd.items() if not k.startswith("roi_heads.relation.")}
  conv = converter.convert_state_dict(stage1)
  assert conv.ok
  checkpoint.save_variables(tmp_path / "stage1", conv.variables)
  rap = converter.convert_state_dict(sd).variables   # the RAP model's tree (checked elsewhere)
  fresh = jax.tree_util.tree_map(lambda x: np.full(x.shape, -3, np.float32), rap)
  caplog.set_level(logging.INFO)
  merged = checkpoint.flatten(
      checkpoint.restore_variables(tmp_path / "stage1", fresh, allow_fresh=[RELATION]))
  assert ("params/roi_heads/relation: 12 tensors not in checkpoint, freshly initialised"
          in caplog.text)
  for path, value in merged.items():
    if path.startswith(RELATION + "/"):
      assert (value == -3).all(), path
    else:
      np.testing.assert_array_equal(value, conv.flat[path], err_msg=path)
