"""The 12 full-size layouts of `state_dict_manifest.json` convert one to one onto our model.

For each original config a synthetic state_dict with the manifest's keys and shapes is built
lazily (zero-stride `np.broadcast_to` arrays, so even X-152-DCN's 167M elements cost nothing;
the cell anchors carry the SPEC §2.4 values) and converted. Two independent checks:

* `test_manifest_maps_by_contract`: against paths/shapes derived HERE from the written contract
  (split on '.', weight -> kernel / scale, FrozenBN -> buffers, layout rules), not from convert/;
* `test_manifest_matches_model`: against our real model,
  `rap_jax.modeling.panoptic_rcnn.abstract_variables(get_config())` of the matching config file;
  no leftovers on either side, equal shapes.
"""
import functools
import importlib
import json

import numpy as np
import pytest

from convert import converter
from rap_jax import checkpoint

# Original YAML (configs/e2e_panoptic_rcnn_<name>) -> our config module.
CONFIGS = {
    "e2e_panoptic_rcnn_R_50_FPN_1x.yaml": "configs.panoptic_fpn_r50",
    "e2e_panoptic_rcnn_R_50_FPN_1x_relation_finetune.yaml": "configs.rap_r50",
    "e2e_panoptic_rcnn_R_50_FPN_1x_ocfusion_finetune.yaml": "configs.ocfusion_r50",
    "e2e_panoptic_rcnn_R_101_FPN_1x.yaml": "configs.panoptic_fpn_r101",
    "e2e_panoptic_rcnn_R_101_FPN_1x_relation_finetune.yaml": "configs.rap_r101",
    "e2e_panoptic_rcnn_R_101_FPN_1x_ocfusion_finetune.yaml": "configs.ocfusion_r101",
    "e2e_panoptic_rcnn_X_101_32x8d_FPN_1x.yaml": "configs.panoptic_fpn_x101",
    "e2e_panoptic_rcnn_X_101_32x8d_FPN_1x_relation_finetune.yaml": "configs.rap_x101",
    "e2e_panoptic_rcnn_X_152_32x8d_FPN_1x.yaml": "configs.panoptic_fpn_x152",
    "e2e_panoptic_rcnn_X_152_32x8d_FPN_1x_relation_finetune.yaml": "configs.rap_x152",
    "e2e_panoptic_rcnn_X_152_32x8d_dcn_FPN_1x.yaml": "configs.panoptic_fpn_x152_dcn",
    "e2e_panoptic_rcnn_X_152_32x8d_dcn_FPN_1x_relation_finetune.yaml": "configs.rap_x152_dcn",
}
SPEC_CELL_ANCHORS = [  # SPEC §2.4 table, rows = ratio 0.5, 1, 2
    [(-22, -10, 25, 13), (-14, -14, 17, 17), (-10, -22, 13, 25)],
    [(-40, -20, 47, 27), (-28, -28, 35, 35), (-20, -44, 27, 51)],
    [(-84, -40, 99, 55), (-56, -56, 71, 71), (-36, -80, 51, 95)],
    [(-164, -72, 195, 103), (-112, -112, 143, 143), (-76, -168, 107, 199)],
    [(-332, -152, 395, 215), (-224, -224, 287, 287), (-148, -328, 211, 391)],
]


@functools.lru_cache(maxsize=1)
def _manifest(path: str) -> dict:
  return json.loads(open(path).read())["full_size_configs"]


@pytest.fixture()
def manifest(fixtures_dir) -> dict:
  return _manifest(str(fixtures_dir / "state_dict_manifest.json"))


def _synthetic_state_dict(entry: dict) -> dict[str, np.ndarray]:
  """Manifest keys/shapes -> zero-stride float32 arrays (no memory), real cell anchors."""
  sd = {}
  for key, info in entry["state_dict"].items():
    assert info["dtype"] == "float32", key
    if key.startswith("rpn.anchor_generator.cell_anchors."):
      sd[key] = np.array(SPEC_CELL_ANCHORS[int(key.rsplit(".", 1)[1])], np.float32)
    else:
      sd[key] = np.broadcast_to(np.float32(0), tuple(info["shape"]))
  return sd


def _contract(key: str, shape: list[int]) -> tuple[str, tuple[int, ...]] | None:
  """Our path and shape for one original key, straight from the written contract."""
  module, leaf = key.split(".")[:-1], key.split(".")[-1]
  if module[:3] == ["rpn", "anchor_generator", "cell_anchors"]:
    return None  # recomputed, not stored
  if module[-1] in ("bn1", "bn2", "bn3") or module[-2:] == ["downsample", "1"]:
    return "/".join(["buffers", *module, leaf]), tuple(shape)            # FrozenBN, verbatim
  if module[0] == "semantic_head" and module[1] != "semantic_final" and int(module[2]) % 4 == 1:
    return "/".join(["params", *module, "scale" if leaf == "weight" else leaf]), tuple(shape)
  if leaf == "bias":
    return "/".join(["params", *module, "bias"]), tuple(shape)
  if module[-1] == "conv5_mask":                                        # (in, out, kh, kw)
    i, o, kh, kw = shape
    return "/".join(["params", *module, "kernel"]), (kh, kw, i, o)
  if len(shape) == 4:                                                   # (O, I/g, kh, kw)
    o, i, kh, kw = shape
    return "/".join(["params", *module, "kernel"]), (kh, kw, i, o)
  out, fan_in = shape                                                   # Linear (out, in)
  if module[-1] in ("fc6", "relation_fc1", "relation_oc_fc1"):
    assert fan_in % 49 == 0, key
  return "/".join(["params", *module, "kernel"]), (fan_in, out)


def test_manifest_lists_the_twelve_configs(manifest):
  assert set(manifest) == set(CONFIGS)


@pytest.mark.parametrize("yaml", sorted(CONFIGS))
def test_manifest_maps_by_contract(manifest, yaml):
  entry = manifest[yaml]
  sd = _synthetic_state_dict(entry)
  assert len(sd) == entry["num_tensors"]
  conv = converter.convert_state_dict(sd)
  assert conv.ok, (conv.unmatched, conv.errors)
  assert len(conv.anchors_checked) == 5
  # One to one: every non-anchor key mapped exactly once, onto distinct paths.
  mapped_keys = [m.key for m in conv.mapped]
  assert sorted(mapped_keys) == sorted(k for k in sd if "cell_anchors" not in k)
  got = {p: tuple(v.shape) for p, v in conv.flat.items()}
  assert len(got) == len(mapped_keys)
  want = dict(filter(None, (_contract(k, v["shape"]) for k, v in entry["state_dict"].items())))
  assert got == want
  assert sum(int(np.prod(s)) for s in got.values()) + 5 * 12 == entry["num_elements"]
  if "dcn" in yaml:
    assert "params/backbone/body/layer2/0/conv2/offset/kernel" in got
    assert got["params/backbone/body/layer4/0/conv2/conv/kernel"] == (3, 3, 64, 2048)
    assert not any(p.startswith("params/backbone/body/layer1/0/conv2/offset") for p in got)


@pytest.mark.parametrize("yaml", sorted(CONFIGS))
def test_manifest_matches_model(manifest, yaml):
  """Uses the real model: fails (not skips) if abstract_variables or the config is missing."""
  from rap_jax.modeling.panoptic_rcnn import abstract_variables

  config = importlib.import_module(CONFIGS[yaml]).get_config()
  assert config.original_yaml == yaml
  conv = converter.convert_state_dict(_synthetic_state_dict(manifest[yaml]))
  assert conv.ok, (conv.unmatched, conv.errors)
  expected = abstract_variables(config)
  assert set(expected) == {"params", "buffers"}
  diff = checkpoint.diff_trees(conv.variables, expected)
  assert diff.ok, "\n".join(diff.lines())
  assert {str(v.dtype) for v in checkpoint.flatten(expected).values()} == {"float32"}
