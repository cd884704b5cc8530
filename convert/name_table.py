"""The name table: original module names (SPEC §2.12) -> kind of layer.

A state_dict key is `<module>.<leaf>`. The module part is matched (full match) against the
patterns below; exactly one must match. Our parameter path is the module path split on '.', under
the kind's collection, with the leaf renamed by the kind's hook (hooks.py):

  backbone.body.layer1.0.conv1.weight       -> params/backbone/body/layer1/0/conv1/kernel
  backbone.body.layer1.0.bn1.running_var    -> buffers/backbone/body/layer1/0/bn1/running_var
  semantic_head.semantic_seq0.1.weight      -> params/semantic_head/semantic_seq0/1/scale
  rpn.anchor_generator.cell_anchors.0       -> (not stored; must equal the recomputed anchors)

GroupNorm variants (RESNETS.*WithGN, FPN/ROI_BOX_HEAD/ROI_MASK_HEAD.USE_GN) keep or extend these
names; the kind of a module is then read from its tensors (`kind_of(module, leaves)`):

  backbone.body.stem.bn1.weight (GN)        -> params/backbone/body/stem/bn1/scale
      `StemWithGN` / `BottleneckWithGN` reuse bn1..3 and downsample.1: a 'frozen_bn' module
      without running statistics is a GroupNorm.
  roi_heads.box.feature_extractor.xconvs.4  -> a conv (4-d weight) without GN, a GroupNorm
      (1-d weight) with GN: the `xconvs` Sequential holds [conv, ReLU] or [conv, GN, ReLU].
  backbone.fpn.fpn_inner1.0.weight          -> params/backbone/fpn/fpn_inner1/0/kernel
  backbone.fpn.fpn_inner1.1.weight          -> params/backbone/fpn/fpn_inner1/1/scale
"""
from __future__ import annotations

import re
from typing import Mapping

NAME_TABLE: tuple[tuple[str, str], ...] = (
    # module (regex, full match)                                   kind
    (r"backbone\.body\.stem\.conv1",                                 "conv"),
    (r"backbone\.body\.stem\.bn1",                                   "frozen_bn"),
    (r"backbone\.body\.layer[1-4]\.\d+\.conv[1-3]",                  "conv"),  # grouped for ResNeXt
    (r"backbone\.body\.layer[1-4]\.\d+\.bn[1-3]",                    "frozen_bn"),
    (r"backbone\.body\.layer[1-4]\.\d+\.downsample\.0",              "conv"),
    (r"backbone\.body\.layer[1-4]\.\d+\.downsample\.1",              "frozen_bn"),
    (r"backbone\.body\.layer[1-4]\.\d+\.conv2\.offset",              "conv"),  # DCN offsets (18 ch)
    (r"backbone\.body\.layer[1-4]\.\d+\.conv2\.conv",                "conv"),  # DCN deformable conv
    (r"backbone\.fpn\.fpn_(inner|layer)[1-4]",                       "conv"),
    (r"backbone\.fpn\.fpn_(inner|layer)[1-4]\.0",                   "conv"),  # FPN.USE_GN
    (r"backbone\.fpn\.fpn_(inner|layer)[1-4]\.1",                   "group_norm"),
    (r"rpn\.anchor_generator\.cell_anchors",                         "anchors"),
    (r"rpn\.head\.(conv|cls_logits|bbox_pred)",                      "conv"),
    (r"roi_heads\.box\.feature_extractor\.fc6",                      "linear_chw"),
    (r"roi_heads\.box\.feature_extractor\.fc7",                      "linear"),
    (r"roi_heads\.box\.feature_extractor\.fc6\.0",                  "linear_chw_no_bias"),  # GN
    (r"roi_heads\.box\.feature_extractor\.fc7\.0",                  "linear_no_bias"),
    (r"roi_heads\.box\.feature_extractor\.fc[67]\.1",               "group_norm"),
    (r"roi_heads\.box\.feature_extractor\.xconvs\.\d+",             "conv"),  # or GN (docstring)
    (r"roi_heads\.box\.predictor\.(cls_score|bbox_pred)",            "linear"),
    (r"roi_heads\.mask\.feature_extractor\.mask_fcn[1-4]",           "conv"),
    (r"roi_heads\.mask\.feature_extractor\.mask_fcn[1-4]\.0",       "conv"),  # ROI_MASK_HEAD.USE_GN
    (r"roi_heads\.mask\.feature_extractor\.mask_fcn[1-4]\.1",       "group_norm"),
    (r"roi_heads\.mask\.predictor\.conv5_mask",                      "conv_transpose"),
    (r"roi_heads\.mask\.predictor\.mask_fcn_logits",                 "conv"),
    (r"roi_heads\.relation\.feature_extractor\.relation_fcn[1-4]",   "conv"),  # RAP
    (r"roi_heads\.relation\.feature_extractor\.relation_fc1",        "linear_chw"),
    (r"roi_heads\.relation\.predictor\.relation_val",                "linear"),
    (r"roi_heads\.relation\.feature_extractor\.relation_oc_fcn[1-4]", "conv"),  # OCFusion
    (r"roi_heads\.relation\.feature_extractor\.relation_oc_fc1",     "linear_chw"),
    (r"roi_heads\.relation\.feature_extractor\.relation_oc_fc2",     "linear"),
    (r"semantic_head\.semantic_seq[0-4]\.(0|4|8|12)",                "conv"),
    (r"semantic_head\.semantic_seq[0-4]\.(1|5|9|13)",                "group_norm"),
    (r"semantic_head\.semantic_final\.0",                            "conv"),
)

_COMPILED = tuple((re.compile(pattern), kind) for pattern, kind in NAME_TABLE)


def split_key(key: str) -> tuple[str, str]:
  """'a.b.c.weight' -> ('a.b.c', 'weight')."""
  module, _, leaf = key.rpartition(".")
  return module, leaf


def kind_of(module: str, leaves: Mapping[str, int] | None = None) -> str | None:
  """The kind of the module named `module` (torch spelling), None if no pattern matches.

  leaves: the module's tensors, leaf name -> number of dimensions. A 'frozen_bn' or 'conv'
  module whose tensors are a GroupNorm's (1-d `weight` and `bias`, nothing else) is a
  'group_norm': the GroupNorm variants reuse those names (module docstring).
  """
  kinds = [kind for pattern, kind in _COMPILED if pattern.fullmatch(module)]
  if len(kinds) > 1:  # the table is written to be unambiguous; tests check it on every config
    raise AssertionError(f"ambiguous name table for {module!r}: {kinds}")
  kind = kinds[0] if kinds else None
  if kind in ("frozen_bn", "conv") and leaves is not None and is_group_norm(leaves):
    return "group_norm"
  return kind


def is_group_norm(leaves: Mapping[str, int]) -> bool:
  """True for the tensors of an affine GroupNorm: 1-d `weight` and `bias` only."""
  return set(leaves) == {"weight", "bias"} and leaves["weight"] == 1 and leaves["bias"] == 1


def our_path(collection: str, module: str, leaf: str) -> str:
  """Our '/'-separated path: collection, module parts, renamed leaf."""
  return "/".join([collection, *module.split("."), leaf])
