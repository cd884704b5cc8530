"""RPN: shared head over P2..P6 and test-time proposal selection (SPEC §2.4).

Per image and level: sigmoid, top `pre_nms_top_n` (sorted), decode (weights 1,1,1,1, clip
log(1000/16)), clip to the resized image, drop boxes smaller than `min_size`, NMS `nms_thresh`,
keep `post_nms_top_n`; then all levels concatenated and the top `fpn_post_nms_top_n` by
objectness kept. Every variable-length set is a fixed-size array plus a `valid` mask; anchors
outside an image's valid feature block are invalid.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rap_jax.modeling.anchors import grid_anchors
from rap_jax.modeling.layers import conv, mask_invalid, valid_hw
from rap_jax.ops import boxes as box_ops
from rap_jax.ops.box_coder import decode_boxes
from rap_jax.ops.nms import nms_mask


class RPNHead(nn.Module):
  """`SingleConvRPNHead`: conv 3x3 + ReLU, `cls_logits` 1x1 (A), `bbox_pred` 1x1 (4A)."""
  in_channels: int
  num_anchors: int

  @nn.compact
  def __call__(self, features: Sequence, padded_hw=None, strides: Sequence[int] = ()):
    """Per level [N, h, w, C] -> (objectness [N, h, w, A], deltas [N, h, w, 4A]) lists."""
    conv3 = conv(self.in_channels, 3, name="conv")
    cls = conv(self.num_anchors, 1, name="cls_logits")
    reg = conv(4 * self.num_anchors, 1, name="bbox_pred")
    logits, deltas = [], []
    for f, s in zip(features, strides):
      t = nn.relu(conv3(mask_invalid(f, padded_hw, s)))
      logits.append(cls(t))
      deltas.append(reg(t))
    return logits, deltas


class RPN(nn.Module):
  """Fields = `config.model.rpn` (+ `nms_strict`, see `rap_jax.ops.nms`)."""
  in_channels: int = 256
  anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512)
  anchor_strides: Sequence[int] = (4, 8, 16, 32, 64)
  aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)
  straddle_thresh: int = 0
  nms_thresh: float = 0.7
  min_size: int = 0
  pre_nms_top_n_test: int = 1000
  post_nms_top_n_test: int = 1000
  fpn_post_nms_top_n_test: int = 1000
  pre_nms_top_n_train: int = 1000
  post_nms_top_n_train: int = 2000
  fpn_post_nms_top_n_train: int = 2000
  fg_iou_threshold: float = 0.7
  bg_iou_threshold: float = 0.3
  batch_size_per_image: int = 256
  positive_fraction: float = 0.5
  nms_strict: bool = True

  def setup(self):
    self.head = RPNHead(self.in_channels, len(self.aspect_ratios))

  def __call__(self, features, padded_hw, resized_hw, train: bool = False):
    """Proposals of every image.

    Args:
      features: (P2..P6) [N, h_l, w_l, C].
      padded_hw: [N, 2] int32 per-image padded input size (multiple of 32).
      resized_hw: [N, 2] int32 resized image size (h', w').
    Returns:
      dict: `proposals` [N, R, 4] xyxy, `objectness` [N, R] (sigmoid), `valid` [N, R] bool,
      `logits`/`deltas` per-level raw head outputs, `anchors` per-level [h*w*A, 4] (numpy).
    """
    logits, deltas = self.head(features, padded_hw, self.anchor_strides)
    anchors = [grid_anchors(s, z, self.aspect_ratios, f.shape[1:3])
               for s, z, f in zip(self.anchor_strides, self.anchor_sizes, features)]
    if train:
      pre, post, fpn_post = (self.pre_nms_top_n_train, self.post_nms_top_n_train,
                             self.fpn_post_nms_top_n_train)
    else:
      pre, post, fpn_post = (self.pre_nms_top_n_test, self.post_nms_top_n_test,
                             self.fpn_post_nms_top_n_test)
    props = select_proposals(logits, deltas, anchors, self.anchor_strides, padded_hw, resized_hw,
                             pre, post, fpn_post, self.nms_thresh, self.min_size,
                             self.nms_strict)
    props.update(logits=logits, deltas=deltas, anchors=anchors)
    return props


def _anchor_valid(grid_hw, num_anchors, padded_hw, stride):
  """[N, h*w*A] bool: anchor positions inside each image's valid feature block."""
  h, w = grid_hw
  vhw = valid_hw(padded_hw, stride)
  rows = jnp.arange(h)[None, :, None] < vhw[:, 0:1, None]
  cols = jnp.arange(w)[None, None, :] < vhw[:, 1:2, None]
  pos = rows & cols  # [N, h, w]
  return jnp.repeat(pos.reshape(pos.shape[0], -1), num_anchors, axis=1)


def _level_proposals(logits, deltas, anchors, valid, resized_hw, pre, post, nms_thresh,
                     min_size, nms_strict):
  """One image, one level: logits [M], deltas [M, 4], anchors [M, 4], valid [M]."""
  m = logits.shape[0]
  k = min(pre, m)
  prob = jax.nn.sigmoid(logits)
  top, idx = jax.lax.top_k(jnp.where(valid, prob, -jnp.inf), k)  # sorted descending
  ok = valid[idx]
  boxes = decode_boxes(deltas[idx], anchors[idx], (1.0, 1.0, 1.0, 1.0))
  boxes = box_ops.clip_boxes(boxes, resized_hw[0], resized_hw[1])
  ws = boxes[:, 2] - boxes[:, 0] + 1
  hs = boxes[:, 3] - boxes[:, 1] + 1
  ok = ok & (ws >= min_size) & (hs >= min_size)
  keep = nms_mask(boxes, top, ok, nms_thresh, strict=nms_strict)
  # Survivors come back in ascending index order = descending score here; keep `post` of them.
  keep = keep & (jnp.cumsum(keep) <= post)
  return boxes, jnp.where(keep, top, 0.0), keep


def select_proposals(logits, deltas, anchors, strides, padded_hw, resized_hw, pre, post,
                     fpn_post, nms_thresh, min_size, nms_strict):
  """All levels -> per-image top `fpn_post` proposals (see module docstring)."""
  n = logits[0].shape[0]
  a = logits[0].shape[-1]
  level_boxes, level_scores, level_valid = [], [], []
  for lg, dl, anc, s in zip(logits, deltas, anchors, strides):
    grid = lg.shape[1:3]
    lg = lg.reshape(n, -1)  # [N, h*w*A], (y, x, a) order
    dl = dl.reshape(n, -1, 4)  # channel 4a+k -> [h*w*A, 4]
    valid = _anchor_valid(grid, a, padded_hw, s)
    fn = lambda l, d, v, r: _level_proposals(l, d, jnp.asarray(anc), v, r, pre, post,
                                             nms_thresh, min_size, nms_strict)
    b, sc, v = jax.vmap(fn)(lg, dl, valid, resized_hw)
    level_boxes.append(b)
    level_scores.append(sc)
    level_valid.append(v)
  boxes = jnp.concatenate(level_boxes, axis=1)
  scores = jnp.concatenate(level_scores, axis=1)
  valid = jnp.concatenate(level_valid, axis=1)
  k = min(fpn_post, boxes.shape[1])
  top, idx = jax.lax.top_k(jnp.where(valid, scores, -jnp.inf), k)
  sel_valid = jnp.take_along_axis(valid, idx, axis=1)
  sel_boxes = jnp.take_along_axis(boxes, idx[..., None], axis=1)
  return dict(proposals=jnp.where(sel_valid[..., None], sel_boxes, 0.0),
              objectness=jnp.where(sel_valid, top, 0.0), valid=sel_valid)
