"""Relation accuracy (SPEC §5.5): hand-made cases with known counts, and a plain full-image
replay of the original loops on random cases."""
import numpy as np
import pytest

from rap_jax.metrics.relation_accuracy import RelationAccuracy, box_iou_plus_one, match_instances


def rect(h, w, y0, y1, x0, x1):
  m = np.zeros((h, w), bool)
  m[y0:y1 + 1, x0:x1 + 1] = True
  return m


# Three GT instances (10 is GT index 0), relations: 12 in front of 11, 10 in front of 11.
#   C = rows 0-3, cols 0-5 (instance 10)   A = rows 2-11, cols 2-11 (11)   B = rows 8-15 (12)
H = W = 20
GT_BOXES = np.array([[0, 0, 5, 3], [2, 2, 11, 11], [8, 8, 15, 15]], np.float32)
GT_IDS = np.array([10, 11, 12])
RELATIONS = [(12, 11), (10, 11)]
MASKS = np.stack([rect(H, W, 2, 11, 2, 11), rect(H, W, 8, 15, 8, 15), rect(H, W, 0, 3, 0, 5)])
BOXES = GT_BOXES[[1, 2, 0]]
SCORES = np.array([0.9, 0.8, 0.7], np.float32)
LABELS = np.array([1, 2, 3])


def test_rap_hand_made_and_index_zero_quirk():
  # d0 (A, value 2) placed; d1 (B, value 1, in front) overlaps A by 16/64: pair (11, 12), GT says
  # 12 in front and 1 < 2: correct; the higher-score A is behind: score order wrong. d2 (C, value
  # 3) overlaps A by 8/24: matched to GT index 0 -> unmatched (-1) -> not counted.
  acc = RelationAccuracy("rap")
  counts = acc.add(boxes=BOXES, scores=SCORES, labels=LABELS, masks=MASKS, gt_boxes=GT_BOXES,
                   gt_instance_ids=GT_IDS, gt_relations=RELATIONS,
                   relation_vals=np.array([2.0, 1.0, 3.0]))
  assert counts == {"relation_correct": 1, "score_correct": 0, "num_pairs": 1, "num_inferred": 2}
  assert acc.result() == {"relation_acc": 1.0, "score_acc": 0.0, "num_pairs": 1,
                          "num_inferred": 2, "num_images": 1}
  # Fixed matching: d2 -> instance 10, GT says 10 in front of 11 but 3 > 2: a wrong pair.
  acc = RelationAccuracy("rap", fix_index_zero=True)
  acc.add(boxes=BOXES, scores=SCORES, labels=LABELS, masks=MASKS, gt_boxes=GT_BOXES,
          gt_instance_ids=GT_IDS, gt_relations=RELATIONS, relation_vals=np.array([2.0, 1.0, 3.0]))
  assert acc.result()["num_pairs"] == 2 and acc.result()["relation_acc"] == 0.5


def test_rap_score_order_ties_and_confidence():
  # GT: 11 in front of 12. A (score 0.9) is placed first: score order right. Values: A 5 > B 1
  # says B in front: relation wrong. Then equal values: never correct.
  for vals, correct in (([5.0, 1.0], 0), ([1.0, 5.0], 1), ([2.0, 2.0], 0)):
    acc = RelationAccuracy("rap")
    acc.add(boxes=BOXES[:2], scores=SCORES[:2], labels=LABELS[:2], masks=MASKS[:2],
            gt_boxes=GT_BOXES, gt_instance_ids=GT_IDS, gt_relations=[(11, 12)],
            relation_vals=np.array(vals))
    assert acc.counts["relation_correct"] == correct and acc.counts["score_correct"] == 1
    assert acc.counts["num_pairs"] == 1
  # Confidence is strict (score > thr): at exactly the threshold a detection is dropped.
  acc = RelationAccuracy("rap", confidence_thr=0.8)
  acc.add(boxes=BOXES[:2], scores=SCORES[:2], labels=LABELS[:2], masks=MASKS[:2],
          gt_boxes=GT_BOXES, gt_instance_ids=GT_IDS, gt_relations=[(11, 12)])
  assert acc.result()["num_pairs"] == 0 and acc.result()["relation_acc"] is None
  # No GT boxes: the image is skipped (the original's matcher raises).
  acc = RelationAccuracy("rap")
  acc.add(boxes=BOXES, scores=SCORES, labels=LABELS, masks=MASKS, gt_boxes=np.zeros((0, 4)),
          gt_instance_ids=[], gt_relations=[])
  assert acc.result()["num_images"] == 0 and acc.result()["num_inferred"] == 0


def test_rap_large_overlap_rejection_breaks_after_earlier_pairs():
  # Segments P (instance 21, id 1) and Q (22, id 2); new N (23) covers 4 px of P and most of Q:
  # P is visited first and counted, then Q's two-sided overlap >= 0.5 rejects N (no more pairs,
  # not inferred, not placed).
  h, w = 4, 12
  p = rect(h, w, 0, 3, 0, 3)   # 16 px
  q = rect(h, w, 0, 3, 6, 9)   # 16 px
  n = rect(h, w, 0, 3, 3, 9)   # 28 px: 4 on P, 16 on Q (16/28 and 16/16 >= 0.5)
  boxes = np.array([[0, 0, 3, 3], [6, 0, 9, 3], [3, 0, 9, 3]], np.float32)
  gt_boxes = np.array([[0, 0, 0, 0], *boxes])  # a dummy GT at index 0
  acc = RelationAccuracy("rap")
  counts = acc.add(boxes=boxes, scores=[0.9, 0.8, 0.7], labels=[1, 2, 3],
                   masks=np.stack([p, q, n]), gt_boxes=gt_boxes, gt_instance_ids=[0, 21, 22, 23],
                   gt_relations=[(21, 23), (22, 23)], relation_vals=np.array([1.0, 1.0, 0.0]))
  assert counts == {"relation_correct": 0, "score_correct": 1, "num_pairs": 1, "num_inferred": 0}


def test_ocfusion_hand_made():
  # d1 (B) occludes d0 (A): GT 12 in front of 11 -> correct. d2 (C) does not occlude A: with the
  # index-0 fix it is instance 10, GT says 10 in front -> wrong. Every intersecting pair counts.
  occ = np.zeros((3, 3), bool)
  occ[1, 0] = True
  for fix, expected in ((False, (1, 0, 1)), (True, (1, 0, 2))):
    acc = RelationAccuracy("ocfusion", confidence_thr=0.5, overlap_thr=0.5, fix_index_zero=fix)
    counts = acc.add(boxes=BOXES, scores=SCORES, labels=LABELS, masks=MASKS, gt_boxes=GT_BOXES,
                     gt_instance_ids=GT_IDS, gt_relations=RELATIONS, occlusion=occ)
    assert (counts["relation_correct"], counts["score_correct"], counts["num_pairs"]) == expected
    assert counts["num_inferred"] == 2  # both overlaps pass the 0.2 test (16/64, 8/24)


def test_box_matching_plus_one_and_argmax():
  iou = box_iou_plus_one(np.array([[0, 0, 9, 9]]), np.array([[0, 0, 9, 9], [5, 0, 14, 9]]))
  assert iou[0, 0] == 1.0 and iou[0, 1] == pytest.approx(50 / 150)
  gt = np.array([[0, 0, 9, 9], [20, 20, 29, 29]], np.float32)
  det = np.array([[1, 1, 9, 9], [21, 20, 29, 29], [50, 50, 60, 60]], np.float32)
  assert match_instances(det, gt, [7, 8]).tolist() == [-1, 8, -1]  # index 0 -> -1; no overlap -> 0
  assert match_instances(det, gt, [7, 8], fix_index_zero=True).tolist() == [7, 8, 7]


# ------------------------------------------------------------------------------------------------
# A plain replay over full images, following SPEC §5.2 / §5.3 / §5.5 literally.


def plain_rap(dets, relations, overlap_thr=0.6, large=0.5):
  h, w = dets[0]["mask"].shape
  pan = np.zeros((h, w), np.int64)
  label_map = np.zeros((h, w), np.int64)
  val_map = np.full((h, w), np.inf, np.float32)
  inst, val = {}, {}
  c = dict(relation_correct=0, score_correct=0, num_pairs=0, num_inferred=0)
  for d in sorted(dets, key=lambda d: -d["score"]):
    mask = d["mask"].copy()
    area = mask.sum()
    if area == 0:
      continue
    inter = (pan > 0) & mask
    if (inter & (label_map == d["label"])).sum() / area > overlap_thr:
      continue
    ok = True
    if inter.sum():
      for sid in np.unique(pan[inter]):
        ov = ((pan == sid) & inter).sum()
        if ov / area >= large and ov / (pan == sid).sum() >= large:
          ok = False
          break
        a, b = inst[sid], d["instance_id"]
        if (a, b) in relations:
          c["relation_correct"] += val[sid] < d["val"]
          c["score_correct"] += 1
          c["num_pairs"] += 1
        elif (b, a) in relations:
          c["relation_correct"] += d["val"] < val[sid]
          c["num_pairs"] += 1
      mask &= val_map > d["val"]
      c["num_inferred"] += ok
    if mask.sum() / area <= overlap_thr or not ok:
      continue
    sid = len(inst) + 1
    pan[mask], label_map[mask], val_map[mask] = sid, d["label"], d["val"]
    inst[sid], val[sid] = d["instance_id"], d["val"]
  return c


def plain_ocfusion(dets, relations, overlap_thr=0.5):
  h, w = dets[0]["mask"].shape
  used = np.zeros((h, w), np.int64)
  inst = {}
  c = dict(relation_correct=0, score_correct=0, num_pairs=0, num_inferred=0)
  for d in sorted(dets, key=lambda d: -d["score"]):
    mask = d["mask"].copy()
    area = mask.sum()
    if area == 0:
      continue
    inter = (used > 0) & mask
    if inter.sum():
      mask = (used == 0) & mask
      for oid in np.unique(used[inter]):
        ov_mask = (used == oid) & inter
        v = d["occ"][oid - 1]
        a, b = inst[oid], d["instance_id"]
        if (a, b) in relations:
          c["relation_correct"] += not v
          c["score_correct"] += 1
          c["num_pairs"] += 1
        elif (b, a) in relations:
          c["relation_correct"] += bool(v)
          c["num_pairs"] += 1
        if ov_mask.sum() / area >= 0.2 or ov_mask.sum() / (used == oid).sum() >= 0.2:
          c["num_inferred"] += 1
          if v:
            mask[ov_mask] = True
      if mask.sum() / area <= overlap_thr:
        continue
    used[mask] = d["index"] + 1
    inst[d["index"] + 1] = d["instance_id"]
  return c


def random_image(rng, n=14, g=8, h=40, w=56):
  def box():
    y0, x0 = rng.integers(0, h - 6), rng.integers(0, w - 6)
    return np.array([x0, y0, min(x0 + rng.integers(4, 25), w - 1), min(y0 + rng.integers(4, 20), h - 1)])
  gt_boxes = np.stack([box() for _ in range(g)]).astype(np.float32)
  gt_ids = rng.permutation(100)[:g] + 1
  relations = {(int(a), int(b)) for a, b in rng.choice(gt_ids, (g * 2, 2)) if a != b}
  boxes = np.concatenate([gt_boxes[rng.integers(0, g, n - 4)] + rng.integers(-2, 3, (n - 4, 4)),
                          np.stack([box() for _ in range(4)])]).astype(np.float32)
  masks = np.zeros((n, h, w), bool)
  for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
    masks[k, max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = True
    masks[k] &= rng.random((h, w)) < 0.95
  scores = np.round(rng.uniform(0.3, 1.0, n), 2).astype(np.float32)  # some ties
  vals = np.round(rng.normal(0, 1, n), 1).astype(np.float32)  # some equal values
  occ = rng.random((n, n)) < 0.5
  labels = rng.integers(1, 4, n)
  return dict(boxes=boxes, scores=scores, labels=labels, masks=masks, gt_boxes=gt_boxes,
              gt_instance_ids=gt_ids, gt_relations=sorted(relations), relation_vals=vals,
              occlusion=occ)


def test_random_images_match_a_plain_replay():
  rng = np.random.default_rng(0)
  totals = {"rap": 0, "ocfusion": 0}
  for _ in range(25):
    img = random_image(rng)
    for method, thr, plain in (("rap", 0.6, plain_rap), ("ocfusion", 0.5, plain_ocfusion)):
      acc = RelationAccuracy(method, confidence_thr=thr, overlap_thr=thr)
      counts = acc.add(**img)
      keep = np.flatnonzero(img["scores"] > thr)
      ids = match_instances(img["boxes"][keep], img["gt_boxes"], img["gt_instance_ids"])
      dets = [dict(mask=img["masks"][k], score=float(img["scores"][k]), label=img["labels"][k],
                   val=img["relation_vals"][k], instance_id=int(ids[j]), index=j,
                   occ=img["occlusion"][k][keep]) for j, k in enumerate(keep)]
      expected = plain(dets, set(img["gt_relations"]), overlap_thr=thr) if len(dets) else {
          "relation_correct": 0, "score_correct": 0, "num_pairs": 0, "num_inferred": 0}
      assert counts == {k: int(v) for k, v in expected.items()}, method
      totals[method] += counts["num_pairs"]
  assert totals["rap"] > 10 and totals["ocfusion"] > 10  # the cases do exercise pairs
