"""The original's GroupNorm options: `StemWithGN`, `BottleneckWithGN`, `FPN.USE_GN`,
`ROI_BOX_HEAD.USE_GN` with `FPNXconv1fcFeatureExtractor`, `ROI_MASK_HEAD.USE_GN`, `MODEL.GROUP_NORM`.

Oracles are torch: `torch.nn.GroupNorm` for the layer, and a torch module tree written here with
the original's module names and layer order (`modeling/backbone/resnet.py` Bottleneck/BaseStem
with `norm_func=group_norm`, `make_layers.conv_with_kaiming_uniform(use_gn=True)`,
`make_conv3x3(use_gn=True)`, `FPNXconv1fcFeatureExtractor`), whose state_dict is converted by
`python -m convert` (in-process) and run against our modules:

  backbone.body.stem.conv1.weight                 (O, I, 7, 7)
  backbone.body.stem.bn1.weight / .bias           GroupNorm (no running stats)
  backbone.body.layer1.0.{conv1..3, bn1..3, downsample.0, downsample.1}
  backbone.fpn.fpn_inner1.0.weight                conv without bias
  backbone.fpn.fpn_inner1.1.weight / .bias        GroupNorm
  roi_heads.box.feature_extractor.xconvs.{0,3,6,9}.weight  convs; .{1,4,7,10} GroupNorm
  roi_heads.box.feature_extractor.fc6.weight/.bias
  roi_heads.mask.feature_extractor.mask_fcn1.0.weight; mask_fcn1.1.weight/.bias
"""
from __future__ import annotations

import contextlib
import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

from configs import tiny, tiny_gn
from configs.fixtures import rap_small
from convert import cli, name_table
from rap_jax import checkpoint, config_checks
from rap_jax.modeling import losses as loss_lib
from rap_jax.modeling.box_head import BoxXconvFeatureExtractor
from rap_jax.modeling.fpn import FPN
from rap_jax.modeling.layers import GroupNormSpec, MaskedGroupNorm, block_mask
from rap_jax.modeling.mask_head import MaskFeatureExtractor
from test_configs import assert_config_error
from rap_jax.modeling.panoptic_rcnn import PanopticRCNN, abstract_variables
from rap_jax.modeling.resnet import Stage, Stem

# The small GN model of the conversion tests: the rap_small fixture widths (stem 8, bottlenecks
# 8..64, stage outputs 32..256, FPN 32, mask convs 32, box MLP 128) with every GN option,
# MODEL.GROUP_NORM.DIM_PER_GP 4 (so the group count varies with the width) and EPSILON 1e-3.
GN_CONFIG_FILE = '''
from configs.fixtures import rap_small


def get_config():
  config = rap_small.get_config()
  b = config.model.backbone
  b.stem_func, b.trans_func = "StemWithGN", "BottleneckWithGN"
  config.model.group_norm.update(dim_per_gp=4, num_groups=-1, epsilon=1e-3)
  config.model.fpn.use_gn = True
  box = config.model.roi_heads.box
  box.extractor, box.use_gn = "FPNXconv1fcFeatureExtractor", True
  box.num_stacked_convs, box.conv_head_dim = 4, 16
  config.model.roi_heads.mask.use_gn = True
  return config
'''
DIM_PER_GP, EPS, XCONVS, XCONV_DIM = 4, 1e-3, 4, 16


def _nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().permute(0, 2, 3, 1).numpy()


def _nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


# ----------------------------------------------------------------------------- the layer

@pytest.mark.parametrize("spec, channels, groups", [
    (GroupNormSpec(-1, 32), 256, 32), (GroupNormSpec(-1, 32), 64, 32),
    (GroupNormSpec(16, -1), 256, 16), (GroupNormSpec(4, -1), 8, 2), (GroupNormSpec(8, -1), 8, 1)])
def test_group_count_follows_get_group_gn(spec, channels, groups):
  assert spec.groups(channels) == groups


@pytest.mark.parametrize("spec, channels, message", [
    (GroupNormSpec(-1, -1), 64, "exactly one of"), (GroupNormSpec(16, 32), 64, "exactly one of"),
    (GroupNormSpec(-1, 32), 48, "not divisible by num_groups=32"),
    (GroupNormSpec(5, -1), 64, "not divisible by dim_per_gp=5")])
def test_group_count_refuses_what_get_group_gn_asserts(spec, channels, message):
  with pytest.raises(ValueError, match=message):
    spec.groups(channels)


@pytest.mark.parametrize("spec, shape", [
    (GroupNormSpec(-1, 4, 1e-5), (2, 5, 7, 16)),     # NUM_GROUPS
    (GroupNormSpec(2, -1, 1e-3), (3, 4, 6, 8)),      # DIM_PER_GP: 4 groups of 2
    (GroupNormSpec(-1, 8, 0.5), (2, 3, 3, 8)),       # a large eps must be the one used
    (GroupNormSpec(4, -1, 1e-5), (5, 32)),           # [N, C] vectors (make_fc's GN)
])
def test_group_norm_equals_torch(spec, shape):
  rng = np.random.default_rng(0)
  x = (rng.normal(size=shape) * 3 + 1).astype(np.float32)
  c = shape[-1]
  ours = spec.layer(c, "gn")
  variables = {"params": {"scale": rng.normal(size=c).astype(np.float32),
                          "bias": rng.normal(size=c).astype(np.float32)}}
  y = np.asarray(ours.apply(variables, jnp.asarray(x)))
  ref = tnn.GroupNorm(spec.groups(c), c, eps=spec.epsilon)
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(variables["params"]["scale"]))
    ref.bias.copy_(torch.from_numpy(variables["params"]["bias"]))
    xt = torch.from_numpy(x) if x.ndim == 2 else _nchw(x)
    want = ref(xt).numpy() if x.ndim == 2 else _nhwc(ref(xt))
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_fresh_group_norm_is_weight_one_bias_zero():
  v = MaskedGroupNorm(4).init(jax.random.PRNGKey(0), jnp.ones((1, 2, 2, 8)))
  np.testing.assert_array_equal(v["params"]["scale"], np.ones(8))
  np.testing.assert_array_equal(v["params"]["bias"], np.zeros(8))


def test_gn_variants_start_from_the_originals_init():
  """kaiming_uniform(a=1) (ResNet, FPN convs, fc6 of Xconv1fc): U(+-sqrt(3/fan_in));
  make_conv3x3: kaiming_normal(fan_out, relu): N(0, 2/fan_out); xconvs: N(0, 0.01^2)."""
  spec = GroupNormSpec(-1, 4)
  key = jax.random.PRNGKey(0)
  stem = Stem(32, True, spec).init(key, jnp.ones((1, 32, 32, 3)))["params"]
  box = BoxXconvFeatureExtractor(64, 2, 32, True, spec).init(key, jnp.ones((2, 7, 7, 32)))
  mask = MaskFeatureExtractor((64, 64), True, spec).init(key, jnp.ones((2, 14, 14, 32)))
  fpn = FPN(32, True, spec).init(key, [jnp.ones((1, 8 // 2 ** i, 8 // 2 ** i, 16)) for i in range(4)])

  def uniform(k, fan_in):
    bound = np.sqrt(3.0 / fan_in)
    assert np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound
    np.testing.assert_allclose(np.std(k), bound / np.sqrt(3.0), rtol=0.1)

  uniform(stem["conv1"]["kernel"], 7 * 7 * 3)
  uniform(box["params"]["fc6"]["kernel"], 7 * 7 * 32)
  uniform(fpn["params"]["fpn_layer1"]["0"]["kernel"], 3 * 3 * 32)
  np.testing.assert_allclose(np.std(box["params"]["xconvs"]["3"]["kernel"]), 0.01, rtol=0.1)
  np.testing.assert_allclose(np.std(mask["params"]["mask_fcn2"]["0"]["kernel"]),
                             np.sqrt(2.0 / (3 * 3 * 64)), rtol=0.1)
  np.testing.assert_array_equal(box["params"]["fc6"]["bias"], 0.0)
  for gn in (stem["bn1"], box["params"]["xconvs"]["1"], mask["params"]["mask_fcn1"]["1"],
             fpn["params"]["fpn_inner2"]["1"]):
    np.testing.assert_array_equal(gn["scale"], 1.0)
    np.testing.assert_array_equal(gn["bias"], 0.0)


def test_masked_statistics_equal_group_norm_of_the_cropped_image():
  """Image n is valid in its top-left hw[n] block of the canvas; outside: garbage, even inf/nan."""
  rng = np.random.default_rng(1)
  n, h, w, c, g = 3, 9, 11, 12, 3
  hw = np.array([[9, 11], [4, 7], [6, 3]], np.int32)
  x = rng.normal(size=(n, h, w, c)).astype(np.float32) * 2 + 0.5
  mask = np.asarray(block_mask(jnp.asarray(hw), (h, w)))
  x = np.where(mask, x, np.float32(1e30))
  x[1, 5, 8, 0], x[2, 0, 5, 3] = np.inf, np.nan
  layer = MaskedGroupNorm(g, 1e-5)
  variables = {"params": {"scale": rng.normal(size=c).astype(np.float32),
                          "bias": rng.normal(size=c).astype(np.float32)}}
  y = np.asarray(layer.apply(variables, jnp.asarray(x), jnp.asarray(mask)))
  ref = tnn.GroupNorm(g, c, eps=1e-5)
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(variables["params"]["scale"]))
    ref.bias.copy_(torch.from_numpy(variables["params"]["bias"]))
    for i, (hi, wi) in enumerate(hw):
      want = _nhwc(ref(_nchw(x[i:i + 1, :hi, :wi])))[0]
      np.testing.assert_allclose(y[i, :hi, :wi], want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ configs and their checks

def test_defaults_are_the_originals_and_build_the_frozen_bn_model():
  config = tiny.get_config()
  m = config.model
  assert (m.backbone.stem_func, m.backbone.trans_func) == ("StemWithFixedBatchNorm",
                                                           "BottleneckWithFixedBatchNorm")
  assert (m.fpn.use_gn, m.roi_heads.box.use_gn, m.roi_heads.mask.use_gn) == (False,) * 3
  assert m.roi_heads.box.extractor == "FPN2MLPFeatureExtractor"
  assert (m.roi_heads.box.num_stacked_convs, m.roi_heads.box.conv_head_dim) == (4, 256)
  assert m.group_norm.to_dict() == dict(dim_per_gp=-1, num_groups=32, epsilon=1e-5)


def test_tiny_gn_config_has_gn_everywhere_and_nothing_frozen():
  config = tiny_gn.get_config()
  config_checks.check_config(config, ("train",))
  assert config.model.backbone.freeze_at == 0
  flat = checkpoint.flatten(abstract_variables(config))
  assert not any(p.startswith("buffers/") for p in flat)  # no FrozenBN left
  for path in ["params/backbone/body/stem/bn1/scale", "params/backbone/body/layer4/2/bn3/bias",
               "params/backbone/body/layer1/0/downsample/1/scale",
               "params/backbone/fpn/fpn_layer4/1/scale", "params/backbone/fpn/fpn_inner1/0/kernel",
               "params/roi_heads/box/feature_extractor/xconvs/10/scale",
               "params/roi_heads/box/feature_extractor/xconvs/9/kernel",
               "params/roi_heads/mask/feature_extractor/mask_fcn4/1/bias"]:
    assert path in flat, path
  for path in ["params/backbone/fpn/fpn_inner1/0/bias", "params/backbone/body/stem/conv1/bias",
               "params/roi_heads/box/feature_extractor/xconvs/0/bias",
               "params/roi_heads/box/feature_extractor/fc7/kernel"]:
    assert path not in flat, path


@pytest.mark.parametrize("path, value, message", [
    ("model.backbone.stem_func", "StemWithBN", "model.backbone.stem_func='StemWithBN': must be one"),
    ("model.backbone.trans_func", "Bottleneck", "model.backbone.trans_func='Bottleneck': must be"),
    ("model.roi_heads.box.extractor", "ResNet50Conv5ROIFeatureExtractor",
     "model.roi_heads.box.extractor='ResNet50Conv5ROIFeatureExtractor': must be one of"),
    ("model.group_norm.dim_per_gp", 16, "model.group_norm.dim_per_gp=16: exactly one of "
     "model.group_norm.dim_per_gp and model.group_norm.num_groups must be -1"),
    ("model.group_norm.epsilon", 0.0, "model.group_norm.epsilon=0.0: must be > 0"),
    ("model.group_norm.num_groups", 32, "model.backbone.trans_func='BottleneckWithGN': GroupNorm "
     "widths [4, 8, 16] are not divisible by model.group_norm.num_groups=32"),
    ("model.roi_heads.box.conv_head_dim", 18, "model.roi_heads.box.use_gn=True: GroupNorm widths "
     "[18] are not divisible by model.group_norm.num_groups=4"),
])
def test_check_config_names_the_bad_gn_key(path, value, message):
  assert_config_error(tiny_gn.get_config(), path, value, message)


# ------------------------------------------------------------- torch oracle of the GN layout

def _gn(c: int) -> tnn.GroupNorm:
  return tnn.GroupNorm(c // DIM_PER_GP, c, eps=EPS)


class TorchBottleneckGN(tnn.Module):
  """`BottleneckWithGN` (stride in the 1x1 conv: STRIDE_IN_1X1 True)."""

  def __init__(self, c_in, c_b, c_out, stride):
    super().__init__()
    self.downsample = None
    if c_in != c_out:
      self.downsample = tnn.Sequential(tnn.Conv2d(c_in, c_out, 1, stride, bias=False), _gn(c_out))
    self.conv1, self.bn1 = tnn.Conv2d(c_in, c_b, 1, stride, bias=False), _gn(c_b)
    self.conv2, self.bn2 = tnn.Conv2d(c_b, c_b, 3, 1, padding=1, bias=False), _gn(c_b)
    self.conv3, self.bn3 = tnn.Conv2d(c_b, c_out, 1, bias=False), _gn(c_out)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample is None else self.downsample(x)
    return F.relu(out + identity)


class TorchStemGN(tnn.Module):
  def __init__(self, c):
    super().__init__()
    self.conv1, self.bn1 = tnn.Conv2d(3, c, 7, 2, padding=3, bias=False), _gn(c)

  def forward(self, x):
    return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)


class TorchBodyGN(tnn.Module):
  """R-50 body at the small widths: stem 8, stage k: bottleneck 8*2^k, output 32*2^k."""

  def __init__(self, stem=8, bott=8, res2=32, blocks=(3, 4, 6, 3)):
    super().__init__()
    self.stem = TorchStemGN(stem)
    c_in = stem
    for k, n in enumerate(blocks):
      layers = [TorchBottleneckGN(c_in if i == 0 else res2 * 2 ** k, bott * 2 ** k, res2 * 2 ** k,
                                  (1 if k == 0 else 2) if i == 0 else 1) for i in range(n)]
      self.add_module(f"layer{k + 1}", tnn.Sequential(*layers))
      c_in = res2 * 2 ** k

  def forward(self, x):
    x = self.stem(x)
    outs = []
    for k in range(4):
      x = getattr(self, f"layer{k + 1}")(x)
      outs.append(x)
    return outs


class TorchFPNGN(tnn.Module):
  """`FPN` with `conv_with_kaiming_uniform(use_gn=True)` blocks and LastLevelMaxPool."""

  def __init__(self, in_channels=(32, 64, 128, 256), out=32):
    super().__init__()
    for i, c in enumerate(in_channels, 1):
      self.add_module(f"fpn_inner{i}", tnn.Sequential(tnn.Conv2d(c, out, 1, bias=False), _gn(out)))
      self.add_module(f"fpn_layer{i}", tnn.Sequential(
          tnn.Conv2d(out, out, 3, padding=1, bias=False), _gn(out)))

  def forward(self, feats):
    last = self.fpn_inner4(feats[3])
    results = [self.fpn_layer4(last)]
    for k in (3, 2, 1):
      last = getattr(self, f"fpn_inner{k}")(feats[k - 1]) + F.interpolate(
          last, scale_factor=2, mode="nearest")
      results.insert(0, getattr(self, f"fpn_layer{k}")(last))
    results.append(F.max_pool2d(results[-1], 1, 2, 0))
    return results


class TorchXconv1fc(tnn.Module):
  """`FPNXconv1fcFeatureExtractor` with USE_GN (after the pooler)."""

  def __init__(self, c_in=32, dim=XCONV_DIM, n=XCONVS, mlp=128, resolution=7):
    super().__init__()
    layers = []
    for _ in range(n):
      layers += [tnn.Conv2d(c_in, dim, 3, padding=1, bias=False), _gn(dim), tnn.ReLU()]
      c_in = dim
    self.xconvs = tnn.Sequential(*layers)
    self.fc6 = tnn.Linear(dim * resolution ** 2, mlp)

  def forward(self, x):
    return F.relu(self.fc6(self.xconvs(x).flatten(1)))


class TorchMaskFeaturesGN(tnn.Module):
  """`MaskRCNNFPNFeatureExtractor` with `make_conv3x3(use_gn=True)` (after the pooler)."""

  def __init__(self, c_in=32, layers=(32, 32, 32, 32)):
    super().__init__()
    for i, c in enumerate(layers, 1):
      self.add_module(f"mask_fcn{i}", tnn.Sequential(
          tnn.Conv2d(c_in, c, 3, padding=1, bias=False), _gn(c)))
      c_in = c
    self.n = len(layers)

  def forward(self, x):
    for i in range(1, self.n + 1):
      x = F.relu(getattr(self, f"mask_fcn{i}")(x))
    return x


def _torch_gn_tree() -> tnn.Module:
  torch.manual_seed(0)
  root = tnn.Module()
  root.backbone = tnn.Module()
  root.backbone.body = TorchBodyGN()
  root.backbone.fpn = TorchFPNGN()
  root.roi_heads = tnn.Module()
  root.roi_heads.box = tnn.Module()
  root.roi_heads.box.feature_extractor = TorchXconv1fc()
  root.roi_heads.mask = tnn.Module()
  root.roi_heads.mask.feature_extractor = TorchMaskFeaturesGN()
  with torch.no_grad():  # GroupNorm affine parameters away from their 1 / 0 init
    for m in root.modules():
      if isinstance(m, tnn.GroupNorm):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.3)
  return root.eval()


@pytest.fixture(scope="module")
def gn_conversion(tmp_path_factory, fixtures_dir):
  """(torch tree, converted variables, config): the GN tree's state_dict plus the rap_small
  fixture's other tensors (RPN, predictors, relation and semantic heads), converted by the CLI
  with `--config` of the small GN model (leftovers on either side fail the conversion)."""
  tmp = tmp_path_factory.mktemp("gn")
  tree = _torch_gn_tree()
  fixture = torch.load(fixtures_dir / "rap_small_zip.pth", weights_only=True)["model"]
  fixture = {k.removeprefix("module."): v for k, v in fixture.items()}
  replaced = ("backbone.", "roi_heads.box.feature_extractor.", "roi_heads.mask.feature_extractor.")
  state = {k: v for k, v in fixture.items() if not k.startswith(replaced)}
  state.update(tree.state_dict())
  torch.save({"model": state, "iteration": 7}, tmp / "model_gn.pth")
  (tmp / "gn_config.py").write_text(GN_CONFIG_FILE)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = cli.main([str(tmp / "model_gn.pth"), str(tmp / "out"), "--config",
                     str(tmp / "gn_config.py")])
  text = out.getvalue()
  assert code == 0, text
  assert "leftover torch keys: none" in text and "leftover model leaves: none" in text
  config = cli.load_config(str(tmp / "gn_config.py"))
  return tree, checkpoint.load_variables(tmp / "out"), config, text


def _expected(modules: dict, key: str, t: torch.Tensor) -> tuple[str, np.ndarray]:
  """Our path and value of one key of the GN tree, from the layout contract (not convert/)."""
  module, leaf = key.split(".")[:-1], key.split(".")[-1]
  if isinstance(modules[".".join(module)], tnn.GroupNorm):
    return "/".join(["params", *module, "scale" if leaf == "weight" else "bias"]), t.numpy()
  if leaf == "bias":
    return "/".join(["params", *module, "bias"]), t.numpy()
  if t.dim() == 4:
    return "/".join(["params", *module, "kernel"]), t.permute(2, 3, 1, 0).numpy()
  out, fan_in = t.shape  # fc6 reads the flattened (C, 7, 7) map: our input order is (7, 7, C)
  value = t.reshape(out, fan_in // 49, 7, 7).permute(0, 2, 3, 1).reshape(out, -1).t()
  return "/".join(["params", *module, "kernel"]), value.contiguous().numpy()


def test_gn_state_dict_converts_onto_our_leaves(gn_conversion):
  tree, variables, _, text = gn_conversion
  flat = checkpoint.flatten(variables)
  state = tree.state_dict()
  modules = dict(tree.named_modules())
  assert "running_mean" not in " ".join(state)
  for key, t in state.items():
    path, value = _expected(modules, key, t)
    np.testing.assert_array_equal(flat[path], value, err_msg=f"{key} -> {path}")
  # GN leaves are named as the original's modules (bn1, downsample.1, fpn_inner1.1, xconvs.4).
  for key, path in [("backbone.body.stem.bn1.weight", "params/backbone/body/stem/bn1/scale"),
                    ("backbone.body.layer2.0.downsample.1.bias",
                     "params/backbone/body/layer2/0/downsample/1/bias"),
                    ("backbone.fpn.fpn_inner1.1.weight", "params/backbone/fpn/fpn_inner1/1/scale"),
                    ("roi_heads.box.feature_extractor.xconvs.4.weight",
                     "params/roi_heads/box/feature_extractor/xconvs/4/scale"),
                    ("roi_heads.mask.feature_extractor.mask_fcn2.1.bias",
                     "params/roi_heads/mask/feature_extractor/mask_fcn2/1/bias")]:
    assert f"{key} -> {path}" in " ".join(text.split()), key
  assert not any(p.startswith("buffers/") for p in flat)


def test_name_table_reads_the_gn_variants_from_their_tensors():
  gn, bn = {"weight": 1, "bias": 1}, {"weight": 1, "bias": 1, "running_mean": 1, "running_var": 1}
  assert name_table.kind_of("backbone.body.stem.bn1", gn) == "group_norm"
  assert name_table.kind_of("backbone.body.stem.bn1", bn) == "frozen_bn"
  assert name_table.kind_of("backbone.body.layer3.1.downsample.1", gn) == "group_norm"
  xconv = "roi_heads.box.feature_extractor.xconvs.4"
  assert name_table.kind_of(xconv, {"weight": 4, "bias": 1}) == "conv"    # without USE_GN
  assert name_table.kind_of(xconv, gn) == "group_norm"                     # with USE_GN
  assert name_table.kind_of(xconv, {"weight": 4}) == "conv"
  assert name_table.kind_of("backbone.fpn.fpn_layer3.0") == "conv"
  assert name_table.kind_of("backbone.fpn.fpn_layer3.1") == "group_norm"
  assert name_table.kind_of("roi_heads.box.feature_extractor.fc6.0") == "linear_chw_no_bias"
  assert name_table.kind_of("roi_heads.box.feature_extractor.fc7.1") == "group_norm"
  assert name_table.kind_of("roi_heads.mask.feature_extractor.mask_fcn3.1") == "group_norm"


def test_converted_gn_model_computes_what_the_torch_tree_computes(gn_conversion):
  """Backbone (body + FPN) on a 64x96 image, box xconvs+fc6 and mask convs on pooled ROIs."""
  tree, variables, config, _ = gn_conversion
  model = PanopticRCNN.from_config(config.model)
  rng = np.random.default_rng(0)
  image = rng.normal(size=(1, 64, 96, 3)).astype(np.float32) * 40
  hw = jnp.asarray([[64, 96]], jnp.int32)
  feats, pyramid = model.apply(variables, jnp.asarray(image), hw,
                               method=lambda m, x, p: m.backbone(x, p))
  with torch.no_grad():
    c = tree.backbone.body(_nchw(image))
    p = tree.backbone.fpn(c)
  for ours, theirs in zip(list(feats) + list(pyramid), c + p):
    want = _nhwc(theirs)
    np.testing.assert_allclose(np.asarray(ours), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

  box_in = rng.normal(size=(5, 7, 7, 32)).astype(np.float32)
  mask_in = rng.normal(size=(5, 14, 14, 32)).astype(np.float32)
  box = model.apply(variables, jnp.asarray(box_in),
                    method=lambda m, x: m.roi_heads.box.feature_extractor(x))
  mask = model.apply(variables, jnp.asarray(mask_in),
                     method=lambda m, x: m.roi_heads.mask.feature_extractor(x))
  with torch.no_grad():
    want_box = tree.roi_heads.box.feature_extractor(_nchw(box_in)).numpy()
    want_mask = _nhwc(tree.roi_heads.mask.feature_extractor(_nchw(mask_in)))
  np.testing.assert_allclose(np.asarray(box), want_box, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(mask), want_mask, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ static canvases, training

@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_gn_body_and_fpn_do_not_depend_on_the_canvas(stride_in_1x1):
  """Two images in one 128x192 canvas == each alone in its own padded size: GN statistics over
  each image's valid block at every stride (stem at 2, blocks with a stride-2 downsample, FPN)."""
  spec = GroupNormSpec(-1, 4)

  class Body(nn.Module):
    @nn.compact
    def __call__(self, x, padded_hw):
      x = Stem(8, True, spec, name="stem")(x, padded_hw)
      c2 = Stage(2, 8, 4, 16, 1, 1, stride_in_1x1, False, 1, True, spec, name="layer1")(
          x, padded_hw, 4)
      c3 = Stage(2, 16, 8, 32, 2, 2, stride_in_1x1, False, 1, True, spec, name="layer2")(
          c2, padded_hw, 4)
      feats = (c2, c3, c3[:, ::2, ::2], c3[:, ::4, ::4])  # stand-ins for C4, C5
      return (c2, c3) + FPN(16, True, spec, name="fpn")(feats, padded_hw)

  rng = np.random.default_rng(2)
  sizes = np.array([[128, 192], [64, 96]], np.int32)
  canvas = np.zeros((2, 128, 192, 3), np.float32)
  for i, (h, w) in enumerate(sizes):
    canvas[i, :h, :w] = rng.normal(size=(h, w, 3)) * 40
  body = Body()
  variables = body.init(jax.random.PRNGKey(3), jnp.asarray(canvas), jnp.asarray(sizes))
  run = jax.jit(body.apply)
  outs = run(variables, jnp.asarray(canvas), jnp.asarray(sizes))
  h, w = sizes[1]
  alone = run(variables, jnp.asarray(canvas[1:, :h, :w]), jnp.asarray(sizes[1:]))
  for level, (ours, ref) in enumerate(zip(outs, alone)):
    a = np.asarray(ref)[0]
    got = np.asarray(ours)[1, :a.shape[0], :a.shape[1]]
    np.testing.assert_allclose(got, a, rtol=1e-4, atol=1e-4 * np.abs(a).max(),
                               err_msg=f"output {level}")
    assert not np.allclose(np.asarray(ours)[0, :a.shape[0], :a.shape[1]], a, atol=1e-3)


def _synthetic_batch(canvas=(128, 192), m=4) -> dict:
  """Two images (the second smaller, padded inside the canvas) with rectangles as instances."""
  rng = np.random.default_rng(5)
  hc, wc = canvas
  resized = np.array([[120, 180], [90, 120]], np.int32)
  padded = np.array([[128, 192], [96, 128]], np.int32)
  b = 2
  batch = dict(image=np.zeros((b, hc, wc, 3), np.float32),
               semantic=np.zeros((b, hc, wc), np.uint8), boxes=np.zeros((b, m, 4), np.float32),
               labels=np.zeros((b, m), np.int32), instance_ids=np.zeros((b, m), np.int32),
               instance_valid=np.zeros((b, m), bool), relations=np.zeros((b, m, m), bool),
               masks=np.zeros((b, m, hc, wc), np.uint8))
  for i, (h, w) in enumerate(resized):
    batch["image"][i, :h, :w] = rng.normal(size=(h, w, 3)) * 40
    batch["semantic"][i, :h, :w] = rng.integers(1, 55, size=(h, w))
    for k in range(3):
      y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
      y1, x1 = y0 + rng.integers(16, h // 2), x0 + rng.integers(16, w // 2)
      batch["boxes"][i, k] = (x0, y0, x1, y1)
      batch["masks"][i, k, y0:y1, x0:x1] = 1
      batch["semantic"][i, y0:y1, x0:x1] = 54
      batch["labels"][i, k] = rng.integers(1, 81)
      batch["instance_ids"][i, k] = k + 1
      batch["instance_valid"][i, k] = True
    batch["relations"][i, 0, 1] = batch["relations"][i, 2, 0] = True
  batch["image_info"] = dict(
      original_hw=resized, resized_hw=resized, padded_hw=padded,
      canvas_hw=np.tile(np.int32(canvas), (b, 1)), image_id=np.array([1, 2], np.int32),
      flipped=np.zeros(b, bool), is_padding=np.zeros(b, bool))
  return batch


def _fresh_params(config) -> dict:
  """Random params of the config's model without compiling its init (the slow part on CPU):
  GroupNorm scale 1 / bias 0, other biases 0, kernels N(0, 1/fan_in)."""
  rng = np.random.default_rng(7)
  flat = {}
  for path, leaf in checkpoint.flatten(abstract_variables(config)).items():
    if path.endswith("/scale"):
      flat[path] = np.ones(leaf.shape, np.float32)
    elif path.endswith("/bias"):
      flat[path] = np.zeros(leaf.shape, np.float32)
    else:
      fan_in = int(np.prod(leaf.shape[:-1]))
      flat[path] = (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
  return checkpoint.unflatten(flat)


def test_tiny_gn_model_runs_forward_and_losses_with_gradients():
  config = tiny_gn.get_config()
  model = PanopticRCNN.from_config(config.model)
  variables = _fresh_params(config)
  assert set(variables) == {"params"}  # no FrozenBN buffers left
  batch = _synthetic_batch()

  def loss_fn(params):
    out, _ = model.apply({"params": params}, batch, jax.random.PRNGKey(1),
                         method=PanopticRCNN.losses)
    return loss_lib.total_loss(out), out

  (total, out), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
  assert np.isfinite(float(total)) and float(total) > 0
  assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_relation", "loss_objectness",
          "loss_rpn_box_reg", "loss_semantic"} == set(out)
  flat = checkpoint.flatten(jax.tree.map(np.asarray, grads))
  assert all(np.isfinite(g).all() for g in flat.values())
  for path in ["backbone/body/stem/bn1/scale", "backbone/body/layer1/0/bn1/bias",
               "backbone/fpn/fpn_inner4/1/scale", "roi_heads/box/feature_extractor/xconvs/1/scale",
               "roi_heads/box/feature_extractor/xconvs/0/kernel",
               "roi_heads/mask/feature_extractor/mask_fcn1/1/bias"]:
    assert np.abs(flat[path]).max() > 0, path

  info = batch["image_info"]
  pred = jax.jit(model.apply)(variables, jnp.asarray(batch["image"]), jnp.asarray(info["padded_hw"]),
                              jnp.asarray(info["resized_hw"]))
  for key in ("det_boxes", "det_scores", "mask_probs", "semantic_logits", "relation"):
    assert np.isfinite(np.asarray(pred[key])).all(), key
