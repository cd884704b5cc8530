"""convert/: name table, hooks, converter, CLI; values checked against torch (the oracle).

The expected values are computed here with torch ops, independently of convert/hooks.py:
  conv            OIHW -> HWIO                   w.permute(2, 3, 1, 0)
  linear          (out, in) -> (in, out)         w.t()
  fc6, relation_fc1, relation_oc_fc1             w.view(out, C, 7, 7).permute(0, 2, 3, 1)
                                                  .reshape(out, -1).t()
  conv5_mask      (in, out, kh, kw) -> HWIO      w.permute(2, 3, 0, 1)
  GroupNorm       weight -> scale; FrozenBN buffers verbatim under 'buffers'.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convert import cli
from convert import converter
from convert import name_table
from convert import source
from rap_jax import checkpoint
from rap_jax.modeling import anchors as model_anchors

REPO = pathlib.Path(__file__).resolve().parents[1]
CHW_LINEARS = ("fc6", "relation_fc1", "relation_oc_fc1")
FROZEN_BN_LEAVES = ("weight", "bias", "running_mean", "running_var")


def _expected_leaf(key: str, tensor: torch.Tensor) -> tuple[str, np.ndarray] | None:
  """(our path, value) for one torch key, by the contract; None for the cell anchors."""
  parts = key.split(".")
  module, leaf = parts[:-1], parts[-1]
  if key.startswith("rpn.anchor_generator.cell_anchors."):
    return None
  is_bn = module[-1] in ("bn1", "bn2", "bn3") or module[-2:] == ["downsample", "1"]
  is_gn = (module[0] == "semantic_head" and module[1] != "semantic_final"
           and int(module[-1]) % 4 == 1)
  if is_bn:
    assert leaf in FROZEN_BN_LEAVES
    return "/".join(["buffers", *module, leaf]), tensor.numpy()
  if is_gn:
    return "/".join(["params", *module, {"weight": "scale"}.get(leaf, leaf)]), tensor.numpy()
  if leaf == "bias":
    return "/".join(["params", *module, "bias"]), tensor.numpy()
  assert leaf == "weight"
  if module[-1] == "conv5_mask":
    value = tensor.permute(2, 3, 0, 1)
  elif tensor.dim() == 4:
    value = tensor.permute(2, 3, 1, 0)
  elif module[-1] in CHW_LINEARS:
    out, fan_in = tensor.shape
    value = tensor.reshape(out, fan_in // 49, 7, 7).permute(0, 2, 3, 1).reshape(out, -1).t()
  else:
    value = tensor.t()
  return "/".join(["params", *module, "kernel"]), value.contiguous().numpy()


def _torch_model(path) -> dict[str, torch.Tensor]:
  model = torch.load(path, map_location="cpu", weights_only=True)["model"]
  return {k.removeprefix("module."): v for k, v in model.items()}


def _run_cli(*args: str) -> int:
  return cli.main([str(a) for a in args])


@pytest.fixture(scope="module")
def converted(tmp_path_factory, fixtures_dir):
  """Every fixture checkpoint converted by the CLI and read back through rap_jax.checkpoint."""
  out = {}
  for name in ("rap_small_legacy.pth", "rap_small_zip.pth", "ocfusion_small_legacy.pth",
               "rap_x101_small_legacy.pth"):
    directory = tmp_path_factory.mktemp(name.replace(".", "_"))
    assert _run_cli(fixtures_dir / name, directory, "--force", "-v") == 0
    out[name] = directory
  return out


@pytest.mark.parametrize("name", ["rap_small_legacy.pth", "rap_small_zip.pth",
                                  "ocfusion_small_legacy.pth", "rap_x101_small_legacy.pth"])
def test_converted_values_equal_pth_after_layout_change(converted, fixtures_dir, name):
  loaded = checkpoint.flatten(checkpoint.load_variables(converted[name]))
  expected = {}
  for key, tensor in _torch_model(fixtures_dir / name).items():
    leaf = _expected_leaf(key, tensor)
    if leaf is not None:
      expected[leaf[0]] = leaf[1]
  assert sorted(loaded) == sorted(expected)
  for path, value in expected.items():
    assert loaded[path].dtype == np.float32 and loaded[path].shape == value.shape, path
    np.testing.assert_array_equal(loaded[path], value, err_msg=path)
  meta = checkpoint.load_metadata(converted[name])
  assert meta["num_tensors"] == len(expected) and meta["iteration"] == 160000
  assert meta["format"] == ("zip" if "zip" in name else "legacy")
  assert len(meta["anchors_checked"]) == 5 and len(meta["mapping"]) == len(expected)


def test_both_formats_give_identical_trees(converted):
  a = checkpoint.flatten(checkpoint.load_variables(converted["rap_small_legacy.pth"]))
  b = checkpoint.flatten(checkpoint.load_variables(converted["rap_small_zip.pth"]))
  assert a.keys() == b.keys()
  for path in a:
    np.testing.assert_array_equal(a[path], b[path])


def test_contract_example_paths(converted):
  rap = checkpoint.flatten(checkpoint.load_variables(converted["rap_small_legacy.pth"]))
  for path in [
      "params/backbone/body/stem/conv1/kernel", "buffers/backbone/body/layer1/0/bn1/running_var",
      "params/backbone/body/layer1/0/downsample/0/kernel",
      "buffers/backbone/body/layer1/0/downsample/1/weight", "params/backbone/fpn/fpn_inner1/kernel",
      "params/rpn/head/cls_logits/bias", "params/roi_heads/box/feature_extractor/fc6/kernel",
      "params/roi_heads/box/predictor/cls_score/kernel",
      "params/roi_heads/mask/feature_extractor/mask_fcn1/kernel",
      "params/roi_heads/mask/predictor/conv5_mask/kernel",
      "params/roi_heads/relation/feature_extractor/relation_fc1/kernel",
      "params/roi_heads/relation/predictor/relation_val/kernel",
      "params/semantic_head/semantic_seq0/0/kernel", "params/semantic_head/semantic_seq0/1/scale",
      "params/semantic_head/semantic_final/0/kernel"]:
    assert path in rap, path
  oc = checkpoint.flatten(checkpoint.load_variables(converted["ocfusion_small_legacy.pth"]))
  assert "params/roi_heads/relation/feature_extractor/relation_oc_fc2/bias" in oc
  assert not any("anchor" in p for p in rap)


# ----------------------------------------------------------------- the layouts do what layers do

def test_grouped_conv_layout_matches_torch_conv(converted, fixtures_dir):
  import jax
  sd = _torch_model(fixtures_dir / "rap_x101_small_legacy.pth")
  ours = checkpoint.flatten(checkpoint.load_variables(converted["rap_x101_small_legacy.pth"]))
  w = sd["backbone.body.layer3.0.conv2.weight"]            # (128, 4, 3, 3), groups 32, stride 2
  x = torch.randn(1, 128, 9, 11, generator=torch.Generator().manual_seed(0))
  want = F.conv2d(x, w, stride=2, padding=1, groups=32).permute(0, 2, 3, 1).numpy()
  got = jax.lax.conv_general_dilated(
      x.permute(0, 2, 3, 1).numpy(), ours["params/backbone/body/layer3/0/conv2/kernel"],
      window_strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=32,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,module", [
    ("rap_small_legacy.pth", "roi_heads/box/feature_extractor/fc6"),
    ("rap_small_legacy.pth", "roi_heads/relation/feature_extractor/relation_fc1"),
    ("ocfusion_small_legacy.pth", "roi_heads/relation/feature_extractor/relation_oc_fc1")])
def test_chw_linear_on_nhwc_flatten_equals_torch_on_nchw_flatten(converted, fixtures_dir, name,
                                                                  module):
  sd = _torch_model(fixtures_dir / name)
  ours = checkpoint.flatten(checkpoint.load_variables(converted[name]))
  w, b = sd[module.replace("/", ".") + ".weight"], sd[module.replace("/", ".") + ".bias"]
  c = w.shape[1] // 49
  x = torch.randn(3, c, 7, 7, generator=torch.Generator().manual_seed(1))
  want = F.linear(x.flatten(1), w, b).numpy()
  got = x.permute(0, 2, 3, 1).reshape(3, -1).numpy() @ ours[f"params/{module}/kernel"] + ours[
      f"params/{module}/bias"]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_transpose_layout_matches_torch(converted, fixtures_dir):
  sd = _torch_model(fixtures_dir / "rap_small_legacy.pth")
  ours = checkpoint.flatten(checkpoint.load_variables(converted["rap_small_legacy.pth"]))
  w = sd["roi_heads.mask.predictor.conv5_mask.weight"]
  b = sd["roi_heads.mask.predictor.conv5_mask.bias"]
  x = torch.randn(2, w.shape[0], 5, 4, generator=torch.Generator().manual_seed(2))
  want = F.conv_transpose2d(x, w, b, stride=2).permute(0, 2, 3, 1).numpy()   # (2, 10, 8, O)
  k = ours["params/roi_heads/mask/predictor/conv5_mask/kernel"]               # (2, 2, I, O)
  # out[2y+a, 2x+b, o] = bias[o] + sum_i x[y, x, i] K[a, b, i, o]  (SPEC §2.7)
  y = np.einsum("nyxi,abio->nyaxbo", x.permute(0, 2, 3, 1).numpy(), k)
  got = y.reshape(2, 10, 8, -1) + ours["params/roi_heads/mask/predictor/conv5_mask/bias"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- converter errors

def _small_state_dict(fixtures_dir) -> dict[str, np.ndarray]:
  return dict(source.read_checkpoint(fixtures_dir / "rap_small_zip.pth").state_dict)


def test_cell_anchor_mismatch_is_an_error(fixtures_dir):
  sd = _small_state_dict(fixtures_dir)
  bad = sd["rpn.anchor_generator.cell_anchors.2"].copy()
  bad[0, 0] += 1
  sd["rpn.anchor_generator.cell_anchors.2"] = bad
  conv = converter.convert_state_dict(sd)
  assert not conv.ok
  [error] = conv.errors
  assert "rpn.anchor_generator.cell_anchors.2" in error and "stride 16" in error
  assert len(conv.anchors_checked) == 4
  halved = converter.AnchorSpec(sizes=(16, 32, 64, 128, 256))
  other = converter.convert_state_dict(_small_state_dict(fixtures_dir), anchor_spec=halved)
  assert len(other.errors) == 5


def test_recomputed_anchors_equal_spec_table():
  table = [[(-22, -10, 25, 13), (-14, -14, 17, 17), (-10, -22, 13, 25)],
           [(-40, -20, 47, 27), (-28, -28, 35, 35), (-20, -44, 27, 51)],
           [(-84, -40, 99, 55), (-56, -56, 71, 71), (-36, -80, 51, 95)],
           [(-164, -72, 195, 103), (-112, -112, 143, 143), (-76, -168, 107, 199)],
           [(-332, -152, 395, 215), (-224, -224, 287, 287), (-148, -328, 211, 391)]]
  spec = converter.AnchorSpec()
  recomputed = model_anchors.all_cell_anchors(spec.strides, spec.sizes, spec.ratios)
  for got, want in zip(recomputed, table, strict=True):
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array(want, np.float32))


def test_unmatched_bad_shape_incomplete_and_duplicate(fixtures_dir):
  sd = _small_state_dict(fixtures_dir)
  sd["backbone.body.stem.bn1.num_batches_tracked"] = np.zeros((), np.float32)   # unknown leaf
  sd["roi_heads.keypoint.fc.weight"] = np.zeros((2, 2), np.float32)              # unknown module
  sd["roi_heads.box.feature_extractor.fc6.weight"] = np.zeros((128, 1500), np.float32)  # not C*49
  sd["rpn.head.conv.weight"] = np.zeros((32, 32, 3), np.float32)                 # not 4-d
  del sd["backbone.body.layer1.0.bn2.running_var"]                               # incomplete BN
  sd["rpn.head.bbox_pred.bias"] = np.zeros(12, np.int64)                         # not float
  conv = converter.convert_state_dict(sd)
  assert not conv.ok
  assert [k for k, _ in conv.unmatched] == ["backbone.body.stem.bn1.num_batches_tracked",
                                            "roi_heads.keypoint.fc.weight"]
  text = "\n".join(conv.errors)
  assert "fc6.weight (linear_chw)" in text and "multiple of 7x7" in text
  assert "rpn.head.conv.weight (conv)" in text and "4-d" in text
  assert "backbone.body.layer1.0.bn2 (frozen_bn): incomplete layer, missing running_var" in text
  assert "rpn.head.bbox_pred.bias: dtype int64" in text


def test_other_float_dtypes_become_float32():
  sd = {"rpn.head.conv.weight": np.ones((2, 2, 3, 3), np.float16),
        "rpn.head.conv.bias": np.ones(2, np.float64)}
  conv = converter.convert_state_dict(sd)
  assert conv.ok and all(v.dtype == np.float32 for v in conv.flat.values())
  assert [m.dtype_in for m in conv.mapped] == ["float16", "float64"]


def test_name_table_is_unambiguous_and_kinds_are_known():
  from convert import hooks
  kinds = {kind for _, kind in name_table.NAME_TABLE}
  assert kinds == set(hooks.HOOKS) | {"anchors"}
  assert name_table.kind_of("backbone.body.layer2.3.conv2.offset") == "conv"
  assert name_table.kind_of("backbone.body.layer2.3.conv2.conv") == "conv"
  assert name_table.kind_of("backbone.body.layer2.3.conv2") == "conv"
  assert name_table.kind_of("semantic_head.semantic_seq0.13") == "group_norm"
  assert name_table.kind_of("semantic_head.semantic_seq0.2") is None     # ReLU has no weights
  assert name_table.kind_of("roi_heads.mask.predictor.conv5_mask") == "conv_transpose"


# ----------------------------------------------------------------- CLI

def test_cli_refuses_non_empty_output_and_bad_files(tmp_path, fixtures_dir, capsys):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("x")
  assert _run_cli(fixtures_dir / "rap_small_zip.pth", out) == 1
  assert "not an empty directory" in capsys.readouterr().err
  assert _run_cli(fixtures_dir / "rap_small_zip.pth", out, "-v", "--force") == 0
  assert _run_cli(fixtures_dir / "rap_small_legacy.pth", out, "-v", "--force") == 0  # overwrite
  assert (out / "keep.txt").read_text() == "x"
  assert checkpoint.load_metadata(out)["format"] == "legacy"
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"\x00" * 100)
  assert _run_cli(garbage, tmp_path / "new") == 1
  assert str(garbage) in capsys.readouterr().err
  assert not (tmp_path / "new").exists()


def test_cli_prints_every_mapping_or_summary(tmp_path, fixtures_dir, capsys):
  assert _run_cli(fixtures_dir / "rap_small_zip.pth", tmp_path / "a") == 0
  text = capsys.readouterr().out
  assert ("backbone.body.layer1.0.bn1.running_var" in text
          and "-> buffers/backbone/body/layer1/0/bn1/running_var" in text)
  assert "(128, 1568) -> (1568, 128)  linear_chw" in text
  assert "leftover torch keys: none" in text and "leftover model leaves: not checked" in text
  assert _run_cli(fixtures_dir / "rap_small_zip.pth", tmp_path / "b", "-v") == 0
  summary = capsys.readouterr().out
  assert "roi_heads.box.*" in summary and "bn1.running_var" not in summary


def test_cli_fails_on_leftovers_and_writes_nothing(tmp_path, capsys):
  sd = {"rpn.head.conv.weight": torch.ones(2, 2, 3, 3),
        "roi_heads.keypoint.fc.weight": torch.ones(1)}
  torch.save({"model": sd}, tmp_path / "c.pth")
  assert _run_cli(tmp_path / "c.pth", tmp_path / "out") == 1
  err = capsys.readouterr().err
  assert "no rule for torch key: roi_heads.keypoint.fc.weight (1,)" in err
  assert not (tmp_path / "out").exists()


_NO_TORCH = """
import runpy, sys
class _NoTorch:
  def find_spec(self, name, path=None, target=None):
    if name == "torch" or name.startswith("torch."):
      raise ImportError("torch is blocked for this test")
    return None
sys.meta_path.insert(0, _NoTorch())
sys.argv = ["convert"] + sys.argv[1:]
try:
  runpy.run_module("convert", run_name="__main__", alter_sys=True)
finally:
  assert "torch" not in sys.modules
  print("TORCH_NOT_IMPORTED")
"""


@pytest.mark.parametrize("name", ["rap_small_legacy.pth", "rap_small_zip.pth"])
def test_cli_runs_with_torch_unimportable(tmp_path, fixtures_dir, name):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-c", _NO_TORCH, str(fixtures_dir / name), str(tmp_path / "out"), "-v"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "TORCH_NOT_IMPORTED" in result.stdout and "done: 365 tensors" in result.stdout
  meta = json.loads((tmp_path / "out" / checkpoint.METADATA_FILE).read_text())
  assert meta["num_tensors"] == 365


def test_x101_small_converts(tmp_path, fixtures_dir):
  """The ResNeXt fixture (issue: `--config configs/fixtures/rap_x101_small.py`); plain
  conversion until that config file exists."""
  config = REPO / "configs" / "fixtures" / "rap_x101_small.py"
  args = [fixtures_dir / "rap_x101_small_legacy.pth", tmp_path / "out"]
  if config.exists():
    args += ["--config", config]
  assert _run_cli(*args) == 0
  tree = checkpoint.flatten(checkpoint.load_variables(tmp_path / "out"))
  assert tree["params/backbone/body/layer4/2/conv2/kernel"].shape == (3, 3, 8, 256)
  assert len(tree) == 620


# ----------------------------------------------------------------- CLI with --config (real model)

def test_cli_config_ocfusion_matches_model(tmp_path, fixtures_dir, capsys):
  assert _run_cli(fixtures_dir / "ocfusion_small_legacy.pth", tmp_path / "out", "-v", "--config",
                  REPO / "configs" / "fixtures" / "ocfusion_small.py") == 0
  text = capsys.readouterr().out
  assert "leftover torch keys: none" in text and "leftover model leaves: none" in text


def test_cli_config_stage1_into_rap_reports_fresh_relation_head(tmp_path, fixtures_dir, capsys):
  sd = torch.load(fixtures_dir / "rap_small_zip.pth", weights_only=True)["model"]
  stage1 = {k: v for k, v in sd.items() if ".roi_heads.relation." not in k}
  torch.save({"model": stage1, "iteration": 150000}, tmp_path / "model_final.pth",
             _use_new_zipfile_serialization=False)
  assert _run_cli(tmp_path / "model_final.pth", tmp_path / "out", "-v", "--config",
                  REPO / "configs" / "fixtures" / "rap_small.py") == 0
  text = capsys.readouterr().out
  assert "params/roi_heads/relation: 12 tensors not in this (stage-1) checkpoint" in text
  meta = checkpoint.load_metadata(tmp_path / "out")
  assert len(meta["fresh_when_loaded"]) == 12 and meta["iteration"] == 150000


def test_cli_config_mismatch_lists_both_sides(tmp_path, fixtures_dir, capsys):
  assert _run_cli(fixtures_dir / "rap_small_zip.pth", tmp_path / "out", "-v", "--config",
                  REPO / "configs" / "fixtures" / "ocfusion_small.py") == 1
  err = capsys.readouterr().err
  assert ("missing (in the model, not in the checkpoint): "
          "params/roi_heads/relation/feature_extractor/relation_oc_fc1/kernel") in err
  assert ("unexpected (in the checkpoint, not in the model): "
          "params/roi_heads/relation/predictor/relation_val/kernel (128, 1)") in err
  assert not (tmp_path / "out").exists()
