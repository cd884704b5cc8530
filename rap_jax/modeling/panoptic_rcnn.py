"""`PanopticRCNN`: backbone (ResNet + FPN), RPN, ROI heads (box, mask, relation) and semantic FPN.

The test-time forward is one static-shape function of a padded batch (SPEC §2.1):
images [N, Hc, Wc, 3] in a canvas, each valid in its own `padded_hw` block; every output is a
fixed-size array with a `valid` mask. Results of an image never depend on the canvas or on the
other images (see `rap_jax.modeling.layers`). Post-processing to original resolution lives in
`rap_jax.postprocess`.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rap_jax.modeling.box_head import BoxHead
from rap_jax.modeling.fpn import FPN, STRIDES
from rap_jax.modeling.layers import valid_hw
from rap_jax.modeling.mask_head import MaskHead
from rap_jax.modeling.ocfusion_head import OcclusionHead
from rap_jax.modeling.relation_head import RelationHead, relation_input
from rap_jax.modeling.resnet import ResNet
from rap_jax.modeling.rpn import RPN
from rap_jax.modeling.semantic_head import SemanticFPN


def _plain(d) -> dict:
  """ConfigDict / dict -> plain dict with tuples (hashable values)."""
  if isinstance(d, ml_collections.ConfigDict):
    d = d.to_dict()
  out = {}
  for k, v in dict(d).items():
    if isinstance(v, Mapping):
      out[k] = _plain(v)
    elif isinstance(v, list):
      out[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
    else:
      out[k] = v
  return out


class Backbone(nn.Module):
  """`backbone` = Sequential(body, fpn)."""
  body_cfg: Mapping[str, Any]
  fpn_cfg: Mapping[str, Any]

  def setup(self):
    self.body = ResNet(**self.body_cfg)
    self.fpn = FPN(**self.fpn_cfg)

  def __call__(self, images, padded_hw):
    feats = self.body(images, padded_hw)
    return feats, self.fpn(feats, padded_hw)


class ROIHeads(nn.Module):
  """`roi_heads` = {box, mask, relation?}."""
  box_cfg: Mapping[str, Any]
  mask_cfg: Mapping[str, Any]
  relation_cfg: Mapping[str, Any]
  nms_strict: bool = True

  def setup(self):
    self.box = BoxHead(**self.box_cfg, nms_strict=self.nms_strict)
    self.mask = MaskHead(**self.mask_cfg)
    kind = self.relation_cfg["kind"]
    if kind == "rap":
      self.relation = RelationHead(self.relation_cfg["conv_dim"],
                                   self.relation_cfg["mlp_head_dim"])
    elif kind == "ocfusion":
      self.relation = OcclusionHead(self.relation_cfg["oc_conv_dim"],
                                    self.relation_cfg["oc_mlp_head_dim"],
                                    self.relation_cfg.get("oc_pair_chunk", 8))
    elif kind != "none":
      raise ValueError(f"model.roi_heads.relation.kind must be 'none', 'rap' or 'ocfusion', "
                       f"got {kind!r}")

  def __call__(self, features, proposals, proposals_valid, resized_hw, feature_hws):
    out = {}
    box_feats, logits, regression = self.box(features, proposals, feature_hws)
    out.update(box_features=box_feats, box_class_logits=logits, box_regression=regression)
    dets = self.box.postprocess(logits, regression, proposals, proposals_valid, resized_hw)
    out.update({f"det_{k}": v for k, v in dets.items()})
    roi = self.mask.pool(features, dets["boxes"], feature_hws)
    mask_logits = self.mask(roi, dets["labels"])
    mask_probs = jax.nn.sigmoid(mask_logits)
    out.update(mask_roi_features=roi, mask_logits=mask_logits, mask_probs=mask_probs)
    kind = self.relation_cfg["kind"]
    if kind != "none":
      x = relation_input(roi, mask_probs)  # [N, D, 14, 14, C+1]
      if kind == "rap":
        n, d = x.shape[:2]
        rel = self.relation(x.reshape((n * d,) + x.shape[2:])).reshape(n, d)
        out["relation"] = jnp.where(dets["valid"], rel, 0.0)
      else:
        probs = self.relation(x)  # [N, D, D]
        pair_valid = dets["valid"][:, :, None] & dets["valid"][:, None, :]
        out["occlusion_probs"] = jnp.where(pair_valid, probs, 0.0)
        out["occlusion"] = pair_valid & (probs > jnp.float32(0.5))
    return out


class PanopticRCNN(nn.Module):
  """The whole network. Build with `PanopticRCNN.from_config(config.model)`."""
  backbone_cfg: Mapping[str, Any]
  fpn_cfg: Mapping[str, Any]
  rpn_cfg: Mapping[str, Any]
  box_cfg: Mapping[str, Any]
  mask_cfg: Mapping[str, Any]
  relation_cfg: Mapping[str, Any]
  semantic_cfg: Mapping[str, Any]
  nms_strict: bool = True

  @classmethod
  def from_config(cls, model_config) -> "PanopticRCNN":
    m = _plain(model_config)
    rh = m["roi_heads"]
    return cls(backbone_cfg=m["backbone"], fpn_cfg=m["fpn"], rpn_cfg=m["rpn"],
               box_cfg=rh["box"], mask_cfg=rh["mask"], relation_cfg=rh["relation"],
               semantic_cfg=m["semantic"], nms_strict=m.get("nms_compare", "cuda") == "cuda")

  def setup(self):
    self.backbone = Backbone(self.backbone_cfg, self.fpn_cfg)
    self.rpn = RPN(**self.rpn_cfg, nms_strict=self.nms_strict)
    self.roi_heads = ROIHeads(self.box_cfg, self.mask_cfg, self.relation_cfg, self.nms_strict)
    self.semantic_head = SemanticFPN(**self.semantic_cfg)

  def __call__(self, images, padded_hw, resized_hw):
    """Test-time forward.

    Args:
      images: [N, Hc, Wc, 3] float32 normalised BGR canvases (zero outside each image).
      padded_hw: [N, 2] int32, each image's size rounded up to 32 (its valid block).
      resized_hw: [N, 2] int32, each image's resized size (h', w').
    Returns:
      dict of fixed-size outputs: `body_c2..5`, `fpn_p2..6` (NHWC canvases), RPN `proposals`
      [N, R, 4] / `objectness` / `proposals_valid`, box head `box_class_logits` [N, R, 81] /
      `box_regression` [N, R, 324], detections `det_boxes` [N, D, 4] (resized pixels),
      `det_scores`, `det_labels` (contiguous 1..80), `det_valid`, `mask_roi_features`
      [N, D, 14, 14, C], `mask_logits` / `mask_probs` [N, D, 28, 28], `relation` [N, D] (RAP) or
      `occlusion` [N, D, D] bool + `occlusion_probs` (OCFusion), `semantic_logits` [N, Hc/4,
      Wc/4, 55] (quarter resolution, before the x4 upsampling).
    """
    feats, pyramid = self.backbone(images, padded_hw)
    out = {f"body_c{i + 2}": f for i, f in enumerate(feats)}
    out.update({f"fpn_p{i + 2}": p for i, p in enumerate(pyramid)})
    rpn = self.rpn(pyramid, padded_hw, resized_hw)
    out.update(proposals=rpn["proposals"], objectness=rpn["objectness"],
               proposals_valid=rpn["valid"])
    for i, (lg, dl) in enumerate(zip(rpn["logits"], rpn["deltas"])):
      out[f"rpn_logits_p{i + 2}"] = lg
      out[f"rpn_deltas_p{i + 2}"] = dl
    feature_hws = [valid_hw(padded_hw, s) for s in STRIDES]
    out.update(self.roi_heads(pyramid, rpn["proposals"], rpn["valid"], resized_hw, feature_hws))
    out["semantic_logits"] = self.semantic_head(pyramid, padded_hw)
    return out


def abstract_variables(config) -> dict:
  """Shapes/dtypes of the variables of `config`'s model ({'params', 'buffers'}), no compute."""
  model = PanopticRCNN.from_config(config.model)
  hc, wc = (int(v) for v in config.input.canvas_sizes[0])
  images = jax.ShapeDtypeStruct((1, hc, wc, 3), jnp.float32)
  hw = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  return jax.eval_shape(lambda im, p, r: model.init(jax.random.PRNGKey(0), im, p, r),
                        images, hw, hw)


def init_variables(config, rng) -> dict:
  """Freshly initialised variables of `config`'s model (small canvas, shapes only matter)."""
  model = PanopticRCNN.from_config(config.model)
  images = jnp.zeros((1, 64, 64, 3), jnp.float32)
  hw = jnp.asarray([[64, 64]], jnp.int32)
  return jax.jit(model.init)(rng, images, hw, hw)
