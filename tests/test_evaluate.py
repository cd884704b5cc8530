"""Eval mode on the built-in synthetic data (tiny model, random weights with some confident
classes): every image evaluated exactly once, the in-memory PQ equals `pq_compute` over the
written files, the AP equals COCOeval over the written detections, all outputs on disk."""
import json

import jax
import numpy as np
import pytest

from configs import tiny
from rap_jax import evaluate
from rap_jax.data import synthetic
from rap_jax.metrics import coco_ap
from rap_jax.metrics import pq as pq_lib
from rap_jax.modeling.panoptic_rcnn import init_variables


def boosted_variables(config):
  """Random tiny weights whose classes 1-3 are confident, so that there are detections."""
  variables = jax.tree_util.tree_map(np.array, init_variables(config, jax.random.PRNGKey(0)))
  variables["params"]["roi_heads"]["box"]["predictor"]["cls_score"]["bias"][1:4] = 4.0
  return variables


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval")
  config = tiny.get_config()
  config.data.data_dir = str(root / "data")
  s = config.data.synthetic
  synthetic.generate(config.data.data_dir, num_train=4, num_val=5, image_size=(s.image_size,) * 2,
                     seed=3, workers=1)
  config.eval.batch_size = 2  # 5 images: the last batch is padded
  variables = boosted_variables(config)
  workdir = root / "work"
  metrics = evaluate.run(config, str(workdir), variables=variables)
  return config, workdir, metrics


def test_every_image_once_and_outputs_written(evaluated):
  config, workdir, metrics = evaluated
  ann = json.loads((workdir / "eval" / "panoptic.json").read_text())
  gt = json.loads((evaluate.pathlib.Path(config.data.data_dir) / "annotations" /
                   "panoptic_val2017.json").read_text())
  assert sorted(a["image_id"] for a in ann["annotations"]) == sorted(
      a["image_id"] for a in gt["annotations"])
  assert metrics["num_images"] == 5
  for a in ann["annotations"]:
    assert (workdir / "eval" / "panoptic" / a["file_name"]).is_file()
  assert (workdir / "metrics.txt").read_text().startswith(pq_lib.format_table(metrics["pq"])[:20])
  on_disk = json.loads((workdir / "metrics.json").read_text())
  assert on_disk["pq"]["All"] == metrics["pq"]["All"]


def test_in_memory_pq_equals_file_based_pq(evaluated):
  config, workdir, metrics = evaluated
  ann_dir = evaluate.pathlib.Path(config.data.data_dir) / "annotations"
  files = pq_lib.pq_compute(str(ann_dir / "panoptic_val2017.json"),
                            str(workdir / "eval" / "panoptic.json"),
                            str(ann_dir / "panoptic_val2017"), str(workdir / "eval" / "panoptic"),
                            workers=1, verbose=False)
  for group in ("All", "Things", "Stuff"):
    assert files[group] == pytest.approx(metrics["pq"][group], abs=1e-12)


def test_eval_pq_equals_hotcoco(evaluated):
  """Eval mode's in-memory PQ equals hotcoco (panopticapi's numbers) on the written outputs."""
  import contextlib
  import io
  from hotcoco import panoptic as hotcoco  # a test requirement (setup.py extras)
  config, workdir, metrics = evaluated
  ann_dir = evaluate.pathlib.Path(config.data.data_dir) / "annotations"
  with contextlib.redirect_stdout(io.StringIO()):
    theirs = hotcoco.pq_compute(str(ann_dir / "panoptic_val2017.json"),
                                str(workdir / "eval" / "panoptic.json"),
                                str(ann_dir / "panoptic_val2017"),
                                str(workdir / "eval" / "panoptic"))
  for group in ("All", "Things", "Stuff"):
    assert metrics["pq"][group]["n"] == theirs[group]["n"], group
    for k in ("pq", "sq", "rq"):
      assert metrics["pq"][group][k] == pytest.approx(theirs[group][k], abs=1e-12), (group, k)


def test_ap_equals_cocoeval_of_written_detections(evaluated):
  config, workdir, metrics = evaluated
  dets = json.loads((workdir / "eval" / "instances.json").read_text())
  assert dets, "the boosted classes must produce detections"
  ann_dir = evaluate.pathlib.Path(config.data.data_dir) / "annotations"
  ap = coco_ap.coco_ap(str(ann_dir / "instances_val2017_with_relation.json"), dets)
  assert ap["bbox"] == metrics["bbox"] and ap["segm"] == metrics["segm"]
  assert {d["image_id"] for d in dets} <= {a["image_id"] for a in json.loads(
      (workdir / "eval" / "panoptic.json").read_text())["annotations"]}


def test_relation_accuracy_reported(evaluated):
  _, workdir, metrics = evaluated
  rel = metrics["relation"]
  # Random weights rarely put two matched detections over related instances (a trained model
  # does: tests/test_learning.py asserts a number there); None exactly when no pair was found.
  assert rel["images"] >= 1 and rel["inferred"] >= 0
  if rel["pairs"]:
    assert 0.0 <= rel["accuracy"] <= 1.0 and 0.0 <= rel["score_order_accuracy"] <= 1.0
  else:
    assert rel["accuracy"] is None and rel["score_order_accuracy"] is None
  assert "relation accuracy" in (workdir / "metrics.txt").read_text()


def test_metrics_schema_every_fusion(evaluated):
  _, workdir, metrics = evaluated
  on_disk = json.loads((workdir / "metrics.json").read_text())
  assert on_disk["fusions"] == ["rap", "heuristic"] == list(on_disk["panoptic"])
  for fusion in on_disk["panoptic"].values():
    for group in ("all", "things", "stuff"):
      assert set(fusion[group]) == {"pq", "sq", "rq", "n"}
      assert 0.0 <= fusion[group]["pq"] <= 1.0
  assert on_disk["panoptic"]["rap"]["all"] == on_disk["pq"]["All"]
  assert set(on_disk["relation"]) >= {"accuracy", "score_order_accuracy", "pairs"}
  for iou_type in ("bbox", "segm"):
    assert set(on_disk[iou_type]) >= {"AP", "AP50"}
  text = (workdir / "metrics.txt").read_text()
  assert "rap" in text and "heuristic" in text


def test_extra_fusion_scores_equal_a_run_with_that_fusion(evaluated, tmp_path):
  """The heuristic PQ reported beside RAP's equals an eval whose configured fusion is heuristic."""
  config, _, metrics = evaluated
  config = config.copy_and_resolve_references()
  config.fusion.method = "heuristic"
  alone = evaluate.run(config, str(tmp_path), variables=boosted_variables(config))
  assert alone["fusions"] == ["heuristic", "rap"]
  assert alone["panoptic"]["heuristic"] == metrics["panoptic"]["heuristic"]
  assert alone["panoptic"]["rap"] == metrics["panoptic"]["rap"]


def test_gt_boxes_resized_follows_the_original_dataset():
  anns = [{"id": 7, "bbox": [10.0, 20.0, 30.0, 1.0], "iscrowd": 0},
          {"id": 8, "bbox": [0.0, 0.0, 5.0, 5.0], "iscrowd": 1},
          {"id": 9, "bbox": [100.0, 50.0, 0.5, 10.0], "iscrowd": 0}]
  boxes, ids = evaluate.gt_boxes_resized(anns, (200, 200), (100, 100))
  # 7: (10, 20, 39, 20) * 0.5 -> (5, 10, 19.5, 10): empty (y2 == y1) and removed;
  # 8: crowd; 9: (100, 50, 100, 59) * 0.5 -> x2 == x1: removed.
  assert boxes.shape == (0, 4) and ids.shape == (0,)
  boxes, ids = evaluate.gt_boxes_resized(
      [{"id": 3, "bbox": [10.0, 20.0, 30.0, 40.0], "iscrowd": 0}], (200, 300), (100, 150))
  np.testing.assert_allclose(boxes, [[5.0, 10.0, 19.5, 29.5]])
  assert ids.tolist() == [3]
