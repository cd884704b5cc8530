"""Box / mask AP through pycocotools: perfect, shifted (hand-computed and vs COCOeval), empty."""
import contextlib
import io

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rap_jax.metrics.coco_ap import STAT_NAMES, coco_ap, detections_to_coco


def box_mask(h, w, x, y, bw, bh):
  m = np.zeros((h, w), np.uint8)
  m[y:y + bh, x:x + bw] = 1
  return m


def rle(m):
  r = mask_util.encode(np.asfortranarray(m))
  r["counts"] = r["counts"].decode("ascii")
  return r


def make_gt(objects, h=200, w=200):
  """objects: [(image_id, category_id, x, y, w, h)] axis-aligned rectangles."""
  images = sorted({o[0] for o in objects})
  anns = []
  for k, (img, cat, x, y, bw, bh) in enumerate(objects):
    anns.append({"id": k + 1, "image_id": img, "category_id": cat, "bbox": [x, y, bw, bh],
                 "area": bw * bh, "iscrowd": 0, "segmentation": rle(box_mask(h, w, x, y, bw, bh))})
  return {"images": [{"id": i, "height": h, "width": w, "file_name": f"{i}.jpg"} for i in images],
          "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


OBJECTS = [(1, 1, 10, 10, 10, 10), (1, 2, 50, 40, 60, 70), (2, 1, 0, 0, 120, 150),
           (2, 1, 130, 20, 30, 25), (3, 2, 5, 100, 40, 40)]


def perfect_results(gt):
  return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
           "score": 0.9, "segmentation": a["segmentation"]} for a in gt["annotations"]]


def direct_cocoeval(gt, results, iou_type):
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    field = "bbox" if iou_type == "bbox" else "segmentation"
    coco_dt = coco_gt.loadRes([{k: r[k] for k in ("image_id", "category_id", "score", field)}
                               for r in results])
    e = COCOeval(coco_gt, coco_dt, iou_type)
    e.evaluate()
    e.accumulate()
    e.summarize()
  return e.stats


def test_perfect_predictions_give_ap_one(capsys):
  gt = make_gt(OBJECTS)
  ap = coco_ap(gt, perfect_results(gt))
  assert set(ap) == {"bbox", "segm"} and tuple(ap["bbox"]) == STAT_NAMES
  for t in ("bbox", "segm"):
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
      assert ap[t][name] == pytest.approx(1.0, abs=1e-12), (t, name)
  assert capsys.readouterr().out == ""  # pycocotools' prints go to the logger


def test_shifted_box_hand_computed_and_vs_cocoeval():
  # One 10x10 GT box; prediction shifted by 2 px: IoU 80 / 120 = 0.667 -> a match at the IoU
  # thresholds 0.50 .. 0.65 (4 of 10), so AP = 0.4, AP50 = 1, AP75 = 0.
  gt = make_gt([(1, 1, 10, 10, 10, 10)])
  results = [{"image_id": 1, "category_id": 1, "bbox": [12, 10, 10, 10], "score": 0.8,
              "segmentation": rle(box_mask(200, 200, 12, 10, 10, 10))}]
  ap = coco_ap(gt, results)
  for t in ("bbox", "segm"):
    assert ap[t]["AP"] == pytest.approx(0.4, abs=1e-12)
    assert ap[t]["AP50"] == pytest.approx(1.0, abs=1e-12) and ap[t]["AP75"] == 0.0
    assert ap[t]["APm"] == -1.0  # no medium GT
  # A realistic mix: shifted, wrong class, duplicate, and a miss; equals COCOeval called directly.
  gt = make_gt(OBJECTS)
  results = perfect_results(gt)
  results[0]["bbox"] = [13, 11, 10, 10]
  results[0]["segmentation"] = rle(box_mask(200, 200, 13, 11, 10, 10))
  results[1]["category_id"] = 1
  results[2]["score"] = 0.3
  results.append(dict(results[3], score=0.95, bbox=[128, 22, 30, 25]))
  results.pop(4)
  ap = coco_ap(gt, results)
  for t in ("bbox", "segm"):
    assert list(ap[t].values()) == pytest.approx(list(direct_cocoeval(gt, results, t)), abs=0)
    assert 0.0 < ap[t]["AP"] < 1.0


def test_empty_results_warn_and_report_zeros():
  gt = make_gt(OBJECTS)
  with pytest.warns(RuntimeWarning, match="no bbox results"):
    ap = coco_ap(gt, [], iou_types=("bbox",))
  assert ap == {"bbox": {name: 0.0 for name in STAT_NAMES}}
  boxes_only = [{k: v for k, v in r.items() if k != "segmentation"} for r in perfect_results(gt)]
  with pytest.warns(RuntimeWarning, match="no segm results"):
    ap = coco_ap(gt, boxes_only)
  assert ap["bbox"]["AP"] == pytest.approx(1.0) and ap["segm"]["AP"] == 0.0
  with pytest.raises(ValueError, match="not in the GT"):
    coco_ap(gt, [dict(boxes_only[0], image_id=99)], iou_types=("bbox",))


def test_detections_to_coco_keeps_plus_one_and_encodes_masks():
  masks = np.zeros((2, 20, 30), bool)
  masks[0, 2:5, 3:9] = True
  res = detections_to_coco(7, np.array([[3.0, 2.0, 8.0, 4.0], [0, 0, 29, 19]]),
                           np.array([0.9, 0.5]), np.array([1, 2]), masks)
  assert res[0]["bbox"] == [3.0, 2.0, 6.0, 3.0]  # w = x2 - x1 + 1 (maskrcnn-benchmark)
  assert res[1]["bbox"] == [0.0, 0.0, 30.0, 20.0]
  assert res[0]["image_id"] == 7 and res[1]["category_id"] == 2 and res[0]["score"] == 0.9
  assert (mask_util.decode(res[0]["segmentation"]) == masks[0]).all()
  assert mask_util.area(res[1]["segmentation"]) == 0
  assert detections_to_coco(1, np.zeros((1, 4)), [1.0], [3], plus_one=False)[0]["bbox"] == [0, 0, 0, 0]
