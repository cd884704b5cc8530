"""`PanopticRCNN`: backbone (ResNet + FPN), RPN, ROI heads (box, mask, relation) and semantic FPN.

The test-time forward is one static-shape function of a padded batch (SPEC §2.1):
images [N, Hc, Wc, 3] in a canvas, each valid in its own `padded_hw` block; every output is a
fixed-size array with a `valid` mask. Results of an image never depend on the canvas or on the
other images (see `rap_jax.modeling.layers`). Post-processing to original resolution lives in
`rap_jax.postprocess`.

The training forward `PanopticRCNN.losses` (SPEC §6.1) reuses the same modules: RPN with the
train top-n values, targets (`rap_jax.modeling.targets`), sampling (`rap_jax.ops.sampling`) and
per-image loss sums (`rap_jax.modeling.losses`), normalised per device (the original's per-GPU
normalisation, averaged over devices) or over the whole batch (`loss_groups`).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rap_jax.modeling import losses as loss_lib
from rap_jax.modeling import targets
from rap_jax.modeling.box_head import BoxHead
from rap_jax.modeling.fpn import FPN, STRIDES
from rap_jax.modeling.layers import GroupNormSpec, valid_hw
from rap_jax.modeling.mask_head import MaskHead
from rap_jax.modeling.ocfusion_head import OcclusionHead
from rap_jax.modeling.relation_head import RelationHead, relation_input
from rap_jax.modeling.resnet import ResNet
from rap_jax.modeling.rpn import RPN
from rap_jax.modeling.semantic_head import SemanticFPN
from rap_jax.ops import sampling
from rap_jax.ops.box_coder import encode_boxes


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

  def train_forward(self, features, rois, pos_boxes, pos_labels, feature_hws, oc_pairs=None):
    """Training-time heads (SPEC §6.1): box head on the sampled ROIs, mask head on the positives,
    relation head on the positives' relation input (NOT detached, SPEC §11.16a).

    Args:
      features: FPN levels [N, h, w, C]; rois: [N, S, 4] sampled ROIs; pos_boxes: [N, P, 4]
      positive ROIs; pos_labels: [N, P] int32 their GT classes; feature_hws: per level [N, 2].
      oc_pairs: OCFusion only, [N * K, 2] int32 (first, second) rows into the flattened
        [N * P] positives.
    Returns:
      dict: `box_class_logits` [N, S, classes], `box_regression` [N, S, 4 classes],
      `mask_roi_features` [N, P, 14, 14, C], `mask_logits` [N, P, 28, 28] (GT class channel),
      `relation` [N, P] (RAP) or `occlusion_probs` [N * K] (OCFusion).
    """
    _, logits, regression = self.box(features, rois, feature_hws)
    roi = self.mask.pool(features, pos_boxes, feature_hws)
    mask_logits = self.mask(roi, pos_labels)
    out = dict(box_class_logits=logits, box_regression=regression, mask_roi_features=roi,
               mask_logits=mask_logits)
    kind = self.relation_cfg["kind"]
    if kind != "none":
      x = relation_input(roi, jax.nn.sigmoid(mask_logits))  # [N, P, 14, 14, C+1]
      n, p = x.shape[:2]
      flat = x.reshape((n * p,) + x.shape[2:])
      if kind == "rap":
        out["relation"] = self.relation(flat).reshape(n, p)
      elif oc_pairs is not None:
        out["occlusion_probs"] = self.relation.pair_probs(flat, oc_pairs[None])[0]
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
    # MODEL.GROUP_NORM is global in the original: every module with a USE_GN / *WithGN option
    # gets it as its `group_norm` field.
    with_gn = lambda cfg: {**cfg, "group_norm": GroupNormSpec(**m["group_norm"])}
    return cls(backbone_cfg=with_gn(m["backbone"]), fpn_cfg=with_gn(m["fpn"]), rpn_cfg=m["rpn"],
               box_cfg=with_gn(rh["box"]), mask_cfg=with_gn(rh["mask"]),
               relation_cfg=rh["relation"], semantic_cfg=m["semantic"],
               nms_strict=m.get("nms_compare", "cuda") == "cuda")

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

  def losses(self, batch: dict, rng: jax.Array, samples: dict | None = None,
             intermediates: bool = False, loss_groups: int = 1) -> tuple[dict, dict]:
    """Training forward (SPEC §6.1): targets, sampling and every head's loss.

    Args:
      batch: the train pipeline batch (`rap_jax.data.input_pipeline`): image [B, Hc, Wc, 3],
        semantic [B, Hc, Wc] uint8, boxes [B, M, 4], labels / instance_ids [B, M] int32,
        instance_valid [B, M], relations [B, M, M] bool, masks [B, M, Hc, Wc] uint8 or bit-packed
        [B, M, Hc, Wc / 8], image_info (resized_hw, padded_hw int32 [B, 2], is_padding [B]).
      rng: the 'sampling' PRNG key of this step (fold the step in outside). Streams: fold_in 0
        RPN anchors, 1 ROIs, 2 OCFusion samples, then fold_in(image index).
      samples: optional injected sampler decisions (tests), any subset of aux['samples']:
        `proposals` [B, R, 4] + `proposals_valid` [B, R] (RPN output before the GT is appended,
        R = fpn_post_nms_top_n_train), `rpn_sampled` [B, 256] anchor indices, `roi_sampled`
        [B, 512] indices into proposals ++ GT, `oc_sampled` [B, K] flat OCFusion sample indices
        (`targets.occlusion_samples`); -1 marks empty slots. Also accepted (test hook, not a
        sampler decision): `mask_targets` [B, P, 28, 28] to replace the bitmap-derived targets.
      intermediates: also return targets / head outputs in aux['intermediates'].
      loss_groups: normalisation groups (`losses.group_normalize`): the number of devices of the
        data mesh for the original's per-GPU normalisation (config.train.loss_normalization
        'per_device'), 1 for one normalisation over the whole batch ('global').
    Returns:
      (losses, aux): losses = {loss_classifier, loss_box_reg, loss_mask, [loss_relation],
      loss_objectness, loss_rpn_box_reg, loss_semantic}, float32 scalars with the original's
      weights applied; the total is `losses.total_loss(losses)` (float32 sum in that order).
      aux = counts (`num_*`) and `samples` (the decisions used, as accepted by `samples`).
      Padding images (`is_padding`) contribute nothing.
    """
    samples = dict(samples or {})
    rpn_cfg, box_cfg, rel_cfg = self.rpn_cfg, self.box_cfg, self.relation_cfg
    kind = rel_cfg["kind"]
    info = batch["image_info"]
    images = batch["image"]
    n = images.shape[0]
    canvas = jnp.asarray(images.shape[1:3], jnp.int32)[None, :]
    real = ~info["is_padding"]
    # Padding images run on safe sizes (finite forward, zero cotangents) and count for nothing.
    padded_hw = jnp.where(real[:, None], info["padded_hw"], canvas)
    resized_hw = jnp.where(real[:, None], info["resized_hw"], canvas)
    gt_boxes = batch["boxes"].astype(jnp.float32)
    gt_labels = batch["labels"].astype(jnp.int32)
    gt_valid = batch["instance_valid"] & real[:, None]
    relations = batch["relations"] & gt_valid[:, :, None] & gt_valid[:, None, :]
    keys = [jax.random.fold_in(rng, i) for i in range(3)]
    per_image = lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(n))

    _, pyramid = self.backbone(images, padded_hw)
    feature_hws = [valid_hw(padded_hw, s) for s in STRIDES]

    # ---------------------------------------------------------------- RPN (SPEC §2.4, §6.1)
    rpn = self.rpn(pyramid, padded_hw, resized_hw, train=True)
    objectness = jnp.concatenate([lg.reshape(n, -1) for lg in rpn["logits"]], axis=1)  # [B, A]
    deltas = jnp.concatenate([dl.reshape(n, -1, 4) for dl in rpn["deltas"]], axis=1)
    anchors = jnp.asarray(np.concatenate(rpn["anchors"], axis=0))  # [A, 4]
    grids = [lg.shape[1:3] for lg in rpn["logits"]]
    strides = tuple(rpn_cfg.get("anchor_strides", STRIDES))
    num_cell = rpn["logits"][0].shape[-1]

    def rpn_targets(p_hw, r_hw, boxes, valid, ok):
      exists = targets.anchor_in_block(grids, strides, num_cell, p_hw) & ok
      visible = targets.anchor_visibility(anchors, r_hw, rpn_cfg.get("straddle_thresh", 0))
      return targets.rpn_labels(anchors, exists, visible, boxes, valid,
                                rpn_cfg.get("fg_iou_threshold", 0.7),
                                rpn_cfg.get("bg_iou_threshold", 0.3))

    rpn_matched, rpn_lab = jax.vmap(rpn_targets)(padded_hw, resized_hw, gt_boxes, gt_valid, real)
    rpn_batch = rpn_cfg.get("batch_size_per_image", 256)
    if "rpn_sampled" not in samples:
      samples["rpn_sampled"] = jax.vmap(
          lambda k, lab: sampling.balanced_sample_indices(
              k, lab, rpn_batch, rpn_cfg.get("positive_fraction", 0.5)))(
                  per_image(keys[0]), rpn_lab)
    rpn_sums = jax.vmap(lambda o, d, b, m, lab, s: loss_lib.rpn_loss_sums(
        o, d, anchors, b, m, lab, s))(objectness, deltas, gt_boxes, rpn_matched, rpn_lab,
                                      samples["rpn_sampled"])

    # ------------------------------------------------ proposals: train top-n, GT appended
    if "proposals" not in samples:
      samples["proposals"] = rpn["proposals"]
      samples["proposals_valid"] = rpn["valid"]
    proposals = jax.lax.stop_gradient(
        jnp.concatenate([samples["proposals"].astype(jnp.float32), gt_boxes], axis=1))
    proposals_valid = jnp.concatenate(
        [samples["proposals_valid"] & real[:, None], gt_valid], axis=1)  # [B, R + M]

    # ----------------------------------------------------------- box head (SPEC §2.6, §6.1)
    roi_matched, roi_lab = jax.vmap(lambda p, v, b, l, g: targets.roi_labels(
        p, v, b, l, g, box_cfg.get("fg_iou_threshold", 0.5),
        box_cfg.get("bg_iou_threshold", 0.5)))(proposals, proposals_valid, gt_boxes, gt_labels,
                                               gt_valid)
    roi_batch = box_cfg.get("batch_size_per_image", 512)
    pos_fraction = box_cfg.get("positive_fraction", 0.25)
    if "roi_sampled" not in samples:
      samples["roi_sampled"] = jax.vmap(
          lambda k, lab: sampling.balanced_sample_indices(k, lab, roi_batch, pos_fraction))(
              per_image(keys[1]), roi_lab)
    take = lambda x, idx: jax.vmap(lambda a, i: a[jnp.maximum(i, 0)])(x, idx)
    sampled = samples["roi_sampled"]  # [B, S]
    s_valid = sampled >= 0
    s_boxes = take(proposals, sampled)  # [B, S, 4]
    s_labels = jnp.where(s_valid, take(roi_lab, sampled), 0)
    s_matched = take(roi_matched, sampled)
    s_gt = take(gt_boxes, jnp.maximum(s_matched, 0))
    s_targets = jax.vmap(lambda g, b: encode_boxes(g, b, box_cfg.get(
        "bbox_reg_weights", (10.0, 10.0, 5.0, 5.0))))(s_gt, s_boxes)

    # positives: [B, P] slots into the sampled ROIs, ascending (= the original's order)
    num_pos_max = int(roi_batch * pos_fraction)
    pos_slot = jax.vmap(lambda m: sampling.mask_to_indices(m, num_pos_max))(
        s_valid & (s_labels > 0))
    pos_valid = pos_slot >= 0
    pos_boxes = take(s_boxes, pos_slot)
    pos_labels = jnp.where(pos_valid, take(s_labels, pos_slot), 0)
    pos_gt = jnp.where(pos_valid, take(jnp.maximum(s_matched, 0), pos_slot), 0)

    oc_pairs = None
    if kind == "ocfusion":
      k_oc = rel_cfg.get("oc_train_pairs", 128)
      cand = jax.vmap(targets.occlusion_candidates)(pos_gt, pos_valid, relations)  # [B, P, P]
      cand_flat = jnp.repeat(cand.reshape(n, -1), 2, axis=1)  # [B, P * P * 2]
      num_cand = jnp.sum(cand_flat, axis=1, dtype=jnp.int32)
      if "oc_sampled" not in samples:
        samples["oc_sampled"] = jax.vmap(lambda k, c: sampling.mask_to_indices(
            sampling.random_subset(k, c, k_oc), k_oc))(per_image(keys[2]), cand_flat)
      first, second, oc_target, oc_valid = targets.occlusion_samples(
          samples["oc_sampled"], num_pos_max)  # [B, K] each
      offset = (jnp.arange(n) * num_pos_max)[:, None]
      oc_pairs = jnp.stack([first + offset, second + offset], axis=-1).reshape(-1, 2)

    heads = self.roi_heads.train_forward(pyramid, s_boxes, jax.lax.stop_gradient(pos_boxes),
                                         pos_labels, feature_hws, oc_pairs)
    box_sums = jax.vmap(lambda lg, rg, lab, t, v: loss_lib.box_loss_sums(
        lg, rg, lab, jax.lax.stop_gradient(t), v))(heads["box_class_logits"],
                                                   heads["box_regression"], s_labels,
                                                   s_targets, s_valid)

    # ------------------------------------------------------------ mask head (SPEC §2.7, §6.1)
    if "mask_targets" in samples:
      m_targets = jnp.asarray(samples.pop("mask_targets"), jnp.float32)
    else:
      if "masks" not in batch:
        raise KeyError("the mask loss needs batch['masks'] (config.data.mask_format 'canvas' "
                       "or 'packed')")
      packed = batch["masks"].shape[-1] != images.shape[2]
      m_targets = jax.vmap(lambda m, g, b, hw: targets.mask_targets(
          m, g, b, hw, self.mask_cfg.get("resolution", 28), packed=packed))(
              batch["masks"], pos_gt, pos_boxes, resized_hw)
    mask_sums = jax.vmap(loss_lib.mask_loss_sums)(heads["mask_logits"], m_targets, pos_valid)

    # ------------------------------------------------------- semantic head (SPEC §2.8, §6.1)
    quarter = self.semantic_head(pyramid, padded_hw, train=True)
    labels = jnp.where(real[:, None, None], batch["semantic"], 0)
    sem_sums = jax.vmap(loss_lib.semantic_loss_sums)(quarter, labels, padded_hw, resized_hw)

    cnt = lambda d: jnp.sum(d["count"])
    norm = lambda d, k: loss_lib.group_normalize(d[k], d["count"], loss_groups)
    out = dict(
        loss_classifier=norm(box_sums, "classifier"),
        loss_box_reg=norm(box_sums, "box_reg"),
        loss_mask=norm(mask_sums, "mask"),
    )
    aux = dict(num_sampled_anchors=cnt(rpn_sums), num_pos_anchors=jnp.sum(rpn_sums["num_pos"]),
               num_sampled_rois=cnt(box_sums), num_pos_rois=jnp.sum(box_sums["num_pos"]),
               num_semantic_pixels=cnt(sem_sums))
    inter = {}
    weight = jnp.float32(rel_cfg.get("loss_weight", 1.0))

    # ---------------------------------------------------- relation heads (SPEC §2.9, §2.11)
    if kind == "rap":
      signs = jax.vmap(targets.relation_pairs)(pos_gt, pos_valid, relations)  # [B, P, P]
      stable = bool(rel_cfg.get("stable_ranking_loss", False))  # default: literal (SPEC §2.9)
      rel_sums = jax.vmap(lambda z, sg: loss_lib.relation_loss_sums(z, sg, stable))(
          heads["relation"], signs)
      out["loss_relation"] = norm(rel_sums, "relation") * weight
      aux["num_relation_pairs"] = cnt(rel_sums)
      inter.update(relation=heads["relation"], relation_signs=signs)
    elif kind == "ocfusion":
      probs = heads["occlusion_probs"].reshape(oc_target.shape)
      oc_sums = jax.vmap(loss_lib.ocfusion_loss_sums)(probs, oc_target, oc_valid, num_cand)
      out["loss_relation"] = norm(oc_sums, "relation") * weight
      aux["num_occlusion_candidates"] = cnt(oc_sums)
      aux["num_occlusion_samples"] = jnp.sum(oc_valid, dtype=jnp.int32)
      inter.update(occlusion_probs=probs, occlusion_first=first, occlusion_second=second,
                   occlusion_target=oc_target, occlusion_valid=oc_valid)

    out["loss_objectness"] = norm(rpn_sums, "objectness")
    out["loss_rpn_box_reg"] = norm(rpn_sums, "box_reg")
    out["loss_semantic"] = (norm(sem_sums, "semantic") *
                            jnp.float32(self.semantic_cfg.get("loss_weight", 0.5)))
    aux["samples"] = samples
    if intermediates:
      inter.update(
          rpn_matched=rpn_matched, rpn_labels=rpn_lab, rpn_objectness=objectness,
          proposals=proposals, proposals_valid=proposals_valid, roi_matched=roi_matched,
          roi_labels=roi_lab, roi_sampled_boxes=s_boxes, roi_sampled_labels=s_labels,
          roi_sampled_matched=s_matched, roi_sampled_regression_targets=s_targets,
          box_class_logits=heads["box_class_logits"], positive_slot=pos_slot,
          positive_valid=pos_valid, positive_gt=pos_gt, mask_targets=m_targets,
          mask_logits=heads["mask_logits"], semantic_logits=quarter)
      aux["intermediates"] = inter
    return out, aux


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
