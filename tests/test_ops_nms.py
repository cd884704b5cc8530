"""Greedy NMS on static shapes (rap_jax/ops/nms.py) against the loop of rap_jax/reference/nms.py.

`nms_mask` returns a keep-mask over the input; the reference returns the kept indices in ascending
order (what `nms.cu` / `nms_cpu.cpp` return), so `np.flatnonzero(keep)` must equal it exactly.
strict=True is the CUDA kernel (`IoU > thr`), strict=False the CPU kernel (`IoU >= thr`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rap_jax.ops.nms import batched_nms_mask, nms_mask
from rap_jax.reference import nms as ref

N = 24  # boxes per random case
CASES = 2000  # random cases per (threshold, strict)


def _ref_keep(boxes, scores, valid, thr, strict):
  """Reference keep-mask: invalid entries are simply absent from the reference's input."""
  idx = np.flatnonzero(valid)
  kept = ref.nms(boxes[idx], scores[idx], thr, strict)
  keep = np.zeros(len(boxes), bool)
  keep[idx[kept]] = True
  return keep


@functools.lru_cache(maxsize=None)
def _batched(thr: float, strict: bool):
  """One compiled vmapped NMS per (threshold, strict): all random cases share it."""
  return jax.jit(jax.vmap(lambda b, s, v: nms_mask(b, s, v, thr, strict)))


def _exact_pair(rng, thr):
  """Two integer boxes whose float32 "+1" IoU is exactly float32(thr).

  A is 10x10 (area 100), B is A cut to k rows with k = 100*thr/10, so inter = area(B) = 10k and
  IoU = 10k/100, a correctly rounded float32 division: exactly float32(thr) for thr in {.3,.5,.7}.
  """
  k = int(round(thr * 10))
  x, y = rng.integers(0, 12, 2)
  a = [x, y, x + 9, y + 9]
  b = [x, y, x + 9, y + k - 1]
  if rng.random() < 0.5:  # the same pair transposed
    a, b = [a[1], a[0], a[3], a[2]], [b[1], b[0], b[3], b[2]]
  return np.array(a, np.float32), np.array(b, np.float32)


def _random_cases(seed: int, thr: float, n_cases: int = CASES, n: int = N):
  """Clustered boxes with duplicates, score ties, invalid entries and exact-threshold pairs.

  Half the cases use integer coordinates (every IoU is an exact ratio, so ties at the threshold
  happen by themselves), half float coordinates.
  """
  rng = np.random.default_rng(seed)
  boxes = np.zeros((n_cases, n, 4), np.float32)
  scores = np.zeros((n_cases, n), np.float32)
  valid = np.zeros((n_cases, n), bool)
  for c in range(n_cases):
    n_clusters = rng.integers(1, 4)
    centres = rng.uniform(5, 25, (n_clusters, 2))
    which = rng.integers(0, n_clusters, n)
    ctr = centres[which] + rng.normal(0, 2.0, (n, 2))
    wh = rng.uniform(2, 14, (n, 2))
    b = np.concatenate([ctr - wh / 2, ctr + wh / 2], axis=1)
    if c % 2 == 0:
      b = np.round(b)
    b = b.astype(np.float32)
    for _ in range(rng.integers(0, 4)):  # exact duplicates
      i, j = rng.choice(n, 2, replace=False)
      b[j] = b[i]
    for _ in range(rng.integers(0, 4)):  # pairs with IoU exactly at the threshold
      i, j = rng.choice(n, 2, replace=False)
      b[i], b[j] = _exact_pair(rng, thr)
    # Few score levels -> many exact ties (order then follows the input index).
    s = rng.integers(0, rng.integers(2, 9), n).astype(np.float32) / 8
    if rng.random() < 0.5:
      s = s + rng.uniform(0, 1e-3, n).astype(np.float32) * (rng.random(n) < 0.5)
    boxes[c], scores[c] = b, s
    valid[c] = rng.random(n) > rng.choice([0.0, 0.2, 0.6])
  return boxes, scores, valid


@pytest.mark.parametrize("thr", [0.5, 0.7])
def test_random_cases_match_reference(thr):
  boxes, scores, valid = _random_cases(int(thr * 10), thr)
  outs = {}
  for strict in (True, False):
    keep = np.asarray(_batched(thr, strict)(boxes, scores, valid))
    for c in range(len(boxes)):
      expected = _ref_keep(boxes[c], scores[c], valid[c], thr, strict)
      np.testing.assert_array_equal(keep[c], expected, err_msg=f"case {c} strict={strict}")
    outs[strict] = keep
  # The cases do exercise the threshold itself: `>` and `>=` disagree on a good share of them.
  differ = np.any(outs[True] != outs[False], axis=1)
  assert differ.sum() >= len(boxes) // 10, differ.sum()


def _exact_iou_count(boxes, valid, thr):
  """Number of valid pairs whose reference float32 IoU equals float32(thr) exactly."""
  count = 0
  for b, v in zip(boxes, valid):
    idx = np.flatnonzero(v)
    for a, i in enumerate(idx):
      for j in idx[a + 1:]:
        count += ref.iou_one(b[i], b[j]) == np.float32(thr)
  return count


def test_random_cases_contain_exact_threshold_ious():
  boxes, _, valid = _random_cases(5, 0.5, n_cases=50)
  assert _exact_iou_count(boxes, valid, 0.5) >= 30


def test_hand_drawn_chain():
  # Three 10x10 boxes ("+1" areas 100) shifted right by 5 and 10 pixels:
  #
  #   x: 0    5    10   15   20
  #      A----+----A              A [0, 0, 9, 9]   score .9
  #           B----+----B         B [5, 0, 14, 9]  score .8   IoU(A, B) = 50/150 = 1/3
  #                C---------C    C [10, 0, 19, 9] score .7   IoU(B, C) = 1/3, IoU(A, C) = 0
  boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [10, 0, 19, 9]], np.float32)
  scores = np.array([0.9, 0.8, 0.7], np.float32)
  valid = np.ones(3, bool)
  # thr .3: A suppresses B; C is then kept because its only suppressor B is gone.
  assert nms_mask(boxes, scores, valid, 0.3).tolist() == [True, False, True]
  # thr .4: nobody overlaps enough.
  assert nms_mask(boxes, scores, valid, 0.4).tolist() == [True, True, True]
  # Score order matters, not input order: with B first, B suppresses both A and C.
  scores_b = np.array([0.8, 0.9, 0.7], np.float32)
  assert nms_mask(boxes, scores_b, valid, 0.3).tolist() == [False, True, False]
  # An invalid B neither survives nor suppresses.
  valid_b = np.array([True, False, True])
  assert nms_mask(boxes, scores_b, valid_b, 0.3).tolist() == [True, False, True]


def test_hand_drawn_threshold_tie():
  # A [0, 0, 9, 9] (area 100) and B = its top half [0, 0, 9, 4] (area 50): IoU = 50/100 = .5.
  #
  #   A-------A
  #   | B---B |
  #   | B---B |   <- B rows 0..4
  #   |       |
  #   A-------A
  boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 4]], np.float32)
  valid = np.ones(2, bool)
  scores = np.array([0.6, 0.9], np.float32)  # B first
  assert ref.iou_one(boxes[0], boxes[1]) == np.float32(0.5)
  # .5 > .5 is false, .5 >= .5 is true.
  assert nms_mask(boxes, scores, valid, 0.5, strict=True).tolist() == [True, True]
  assert nms_mask(boxes, scores, valid, 0.5, strict=False).tolist() == [False, True]
  # 0.7: B cut to 7 rows, IoU = 70/100 rounds to float32(.7) exactly.
  boxes[1, 3] = 6
  assert ref.iou_one(boxes[0], boxes[1]) == np.float32(0.7)
  assert nms_mask(boxes, scores, valid, 0.7, strict=True).tolist() == [True, True]
  assert nms_mask(boxes, scores, valid, 0.7, strict=False).tolist() == [False, True]


def test_hand_drawn_ties_and_duplicates():
  # Four identical boxes, scores .5 .9 .9 .5: the first .9 (index 1) wins the tie (stable order)
  # and suppresses the rest (IoU 1).
  boxes = np.tile(np.array([[3, 3, 8, 8]], np.float32), (4, 1))
  scores = np.array([0.5, 0.9, 0.9, 0.5], np.float32)
  keep = nms_mask(boxes, scores, np.ones(4, bool), 0.7)
  assert keep.tolist() == [False, True, False, False]
  assert np.flatnonzero(keep).tolist() == ref.nms(boxes, scores, 0.7)
  # Disjoint boxes all survive, whatever the scores; an all-invalid input keeps nothing.
  boxes = np.array([[0, 0, 1, 1], [5, 5, 6, 6], [10, 10, 11, 11]], np.float32)
  assert nms_mask(boxes, np.zeros(3, np.float32), np.ones(3, bool), 0.1).tolist() == [True] * 3
  assert nms_mask(boxes, np.ones(3, np.float32), np.zeros(3, bool), 0.1).tolist() == [False] * 3
  assert nms_mask(np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0, bool), 0.5).shape == (0,)


def _fast_greedy(boxes, scores, thr, strict):
  """Greedy NMS with the reference's float32 IoU evaluated a row at a time (numpy, for large N)."""
  f = np.float32
  b = boxes.astype(np.float32)
  order = np.argsort(-scores, kind="stable")
  area = (b[:, 2] - b[:, 0] + f(1)) * (b[:, 3] - b[:, 1] + f(1))
  suppressed = np.zeros(len(b), bool)
  for i in order:
    if suppressed[i]:
      continue
    w = np.maximum(np.minimum(b[i, 2], b[:, 2]) - np.maximum(b[i, 0], b[:, 0]) + f(1), f(0))
    h = np.maximum(np.minimum(b[i, 3], b[:, 3]) - np.maximum(b[i, 1], b[:, 1]) + f(1), f(0))
    inter = w * h
    iou = inter / (area[i] + area - inter)
    hit = (iou > f(thr)) if strict else (iou >= f(thr))
    hit[i] = False
    later = np.zeros(len(b), bool)
    later[order[np.flatnonzero(order == i)[0] + 1:]] = True
    suppressed |= hit & later
  return ~suppressed


def test_long_suppression_chain_n1000():
  # 1000 boxes in a row, 10x10, each shifted right by 3 pixels from the previous one:
  # IoU(i, i+1) = 7*10/(2*100 - 70) = .538, IoU(i, i+2) = 4*10/160 = .25, scores decreasing
  # along the chain. Greedy at .5: 0 kept, 1 suppressed, 2 kept (its suppressor is gone), ...
  # Every decision depends on the previous one: the fixed-point iteration needs ~1000 rounds.
  n = 1000
  x = 3 * np.arange(n, dtype=np.float32)
  boxes = np.stack([x, np.zeros(n), x + 9, np.full(n, 9)], axis=1).astype(np.float32)
  scores = np.linspace(1, 0.1, n).astype(np.float32)
  perm = np.random.default_rng(0).permutation(n)  # input order != score order
  boxes, scores = boxes[perm], scores[perm]
  keep = np.asarray(jax.jit(lambda b, s: nms_mask(b, s, jnp.ones(n, bool), 0.5))(boxes, scores))
  expected = np.zeros(n, bool)
  expected[np.argsort(perm)[0::2]] = True  # chain positions 0, 2, 4, ...
  np.testing.assert_array_equal(keep, expected)
  np.testing.assert_array_equal(keep, _fast_greedy(boxes, scores, 0.5, True))
  # The fast greedy is the reference loop: check it on a prefix the slow loop can afford.
  sub = np.argsort(-scores)[:120]
  np.testing.assert_array_equal(_fast_greedy(boxes[sub], scores[sub], 0.5, True),
                                _ref_keep(boxes[sub], scores[sub], np.ones(120, bool), 0.5, True))


def test_random_n1000_matches_fast_greedy():
  rng = np.random.default_rng(3)
  n = 1000
  ctr = rng.uniform(0, 200, (n, 2))
  wh = rng.uniform(5, 60, (n, 2))
  boxes = np.concatenate([ctr - wh / 2, ctr + wh / 2], 1).astype(np.float32)
  scores = rng.random(n).astype(np.float32)
  valid = np.ones(n, bool)
  for thr, strict in [(0.7, True), (0.3, False)]:
    keep = np.asarray(jax.jit(lambda b, s, v: nms_mask(b, s, v, thr, strict))(boxes, scores, valid))
    np.testing.assert_array_equal(keep, _fast_greedy(boxes, scores, thr, strict))


def test_disable_jit_and_batched():
  boxes, scores, valid = _random_cases(11, 0.5, n_cases=4)
  with jax.disable_jit():
    for c in range(4):
      for strict in (True, False):
        keep = np.asarray(nms_mask(boxes[c], scores[c], valid[c], 0.5, strict))
        np.testing.assert_array_equal(keep, _ref_keep(boxes[c], scores[c], valid[c], 0.5, strict))
  # batched_nms_mask over two leading axes equals the per-case result.
  keep = np.asarray(batched_nms_mask(boxes.reshape(2, 2, N, 4), scores.reshape(2, 2, N),
                                     valid.reshape(2, 2, N), 0.5, strict=False)).reshape(4, N)
  for c in range(4):
    np.testing.assert_array_equal(keep[c], _ref_keep(boxes[c], scores[c], valid[c], 0.5, False))


def test_box_head_nms_paths_agree_on_crowded_classes():
  """Candidates-only NMS == class-wise NMS, also when a class has many candidates; with fewer
  slots than candidates the batch falls back to the class-wise path (same result)."""
  import jax
  from rap_jax.modeling.box_head import detections_for_image
  rng = np.random.default_rng(11)
  r, c = 300, 6
  logits = rng.normal(0, 1.5, (2, r, c)).astype(np.float32)
  logits[0, :, 1] += 3.0  # class 1 is a candidate almost everywhere in image 0
  reg = rng.normal(0, 0.5, (2, r, 4 * c)).astype(np.float32)
  xy = rng.uniform(0, 150, (2, r, 2))
  wh = rng.uniform(4, 60, (2, r, 2))
  props = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  valid = np.ones((2, r), bool)
  valid[1, 250:] = False
  hw = np.array([[200, 220], [200, 220]], np.int32)
  outs = {}
  for path, cap in (("classwise", 4096), ("candidates", 4096), ("candidates", 64)):
    fn = lambda lg, rg, p, v, h: detections_for_image(lg, rg, p, v, h, (10., 10., 5., 5.), 0.05,
                                                      0.5, 100, 120, True, cap, path)
    outs[(path, cap)] = jax.device_get(jax.jit(jax.vmap(fn))(logits, reg, props, valid, hw))
  ref = outs[("classwise", 4096)]
  for key in ("boxes", "scores", "labels", "valid", "num"):
    np.testing.assert_array_equal(ref[key], outs[("candidates", 4096)][key])
  prob = jax.nn.softmax(logits, -1)[..., 1:]
  assert int(((prob > 0.05) & valid[..., None]).sum(axis=(1, 2)).max()) > 64
  # Through BoxHead.postprocess with 64 slots the batch falls back to the class-wise path.
  from rap_jax.modeling.box_head import BoxHead
  head = BoxHead(num_classes=c, detections_per_img=100, max_detections=120,
                 max_nms_candidates=64)
  got = jax.device_get(jax.jit(lambda *a: head.apply({}, *a, method=BoxHead.postprocess))(
      logits, reg, props, valid, hw))
  for key in ("boxes", "scores", "labels", "valid", "num"):
    np.testing.assert_array_equal(ref[key], got[key])
