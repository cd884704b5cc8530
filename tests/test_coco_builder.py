"""tfds builder `rap_jax.data.coco.CocoPanopticRap` on the training fixture laid out like COCO."""
import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from pycocotools import mask as mask_util

from rap_jax.data import coco

tfds.disable_progress_bar()


def copy_fixture_as_coco(fixtures_dir: pathlib.Path, raw: pathlib.Path,
                         semantic: bool = True, panoptic: bool = True) -> pathlib.Path:
  """train_data_astronaut_coffee (+ prep panoptic files) in the COCO layout, split train2017."""
  src = fixtures_dir / "train_data_astronaut_coffee"
  (raw / "images").mkdir(parents=True)
  shutil.copytree(src / "images", raw / "images" / "train2017")
  (raw / "annotations").mkdir()
  shutil.copy(src / "instances_train_with_relation.json",
              raw / "annotations" / "instances_train2017_with_relation.json")
  if semantic:
    shutil.copytree(src / "semantic_train2017", raw / "annotations" / "semantic_train2017")
  if panoptic:
    prep = fixtures_dir / "prep_astronaut_coffee"
    shutil.copy(prep / "panoptic_train2017.json", raw / "annotations" / "panoptic_train2017.json")
    shutil.copytree(prep / "panoptic_train2017", raw / "annotations" / "panoptic_train2017")
  return raw


def prepare(raw: pathlib.Path, name: str = "fixture") -> coco.CocoPanopticRap:
  builder = coco.CocoPanopticRap(raw_dir=raw, config=name, data_dir=raw / "tfds", num_workers=2)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder


@pytest.fixture(scope="module")
def built(fixtures_dir, tmp_path_factory):
  raw = copy_fixture_as_coco(fixtures_dir, tmp_path_factory.mktemp("coco") / "raw")
  builder = prepare(raw)
  examples = list(tfds.as_numpy(builder.as_dataset(split="train2017")))
  return raw, builder, examples


def test_coco_boxes_to_xyxy_follows_the_original():
  # x2 = x + max(w - 1, 0); clip to [0, W-1] x [0, H-1]; keep x2 > x1 and y2 > y1
  xywh = np.array([[10.5, 20.0, 30.25, 40.0],   # ordinary
                   [-5.0, 90.0, 20.0, 30.0],    # clipped left and bottom (H = 100)
                   [50.0, 50.0, 0.5, 10.0],     # w < 1 -> x2 == x1 -> removed
                   [199.0, 10.0, 10.0, 10.0]])  # x clipped to W-1 = 199 on both sides -> removed
  boxes, keep = coco.coco_boxes_to_xyxy(xywh, height=100, width=200)
  np.testing.assert_array_equal(boxes, np.array([[10.5, 20, 39.75, 59], [0, 90, 14, 99],
                                                 [50, 50, 50, 59], [199, 10, 199, 19]],
                                                np.float32))
  np.testing.assert_array_equal(keep, [True, True, False, False])
  assert boxes.dtype == np.float32


def test_examples_hold_the_annotations(built, fixtures_dir):
  raw, builder, examples = built
  ann = json.loads((raw / "annotations" / "instances_train2017_with_relation.json").read_text())
  assert [int(e["image_id"]) for e in examples] == [1, 2]  # ascending id, shuffling disabled
  assert builder.info.metadata["train2017"] == {
      "image_id": [1, 2], "height": [512, 400], "width": [512, 600], "num_instances": [6, 5]}
  e0, e1 = examples
  assert e0["file_name"] == b"astronaut.png" and e0["panoptic_file_name"] == b"astronaut.png"
  assert (int(e0["height"]), int(e0["width"])) == (512, 512) and e0["image"].shape == (512, 512, 3)
  np.testing.assert_array_equal(e0["image"], np.asarray(
      Image.open(raw / "images" / "train2017" / "astronaut.png").convert("RGB")))
  # crowd 107 kept and flagged; boxes are the original's xyxy before resize
  np.testing.assert_array_equal(e0["objects"]["instance_id"], [101, 102, 103, 104, 105, 106, 107])
  np.testing.assert_array_equal(e0["objects"]["is_crowd"], [0, 0, 0, 0, 0, 0, 1])
  np.testing.assert_array_equal(e0["objects"]["label"], [1, 1, 34, 40, 30, 28, 1])
  np.testing.assert_array_equal(e0["objects"]["bbox"][0], [150, 195, 419, 510])
  np.testing.assert_array_equal(e1["objects"]["bbox"][0], [0, 150, 598, 398])
  # relations in the original's dict order (fixtures gt{i}_relations)
  d = np.load(fixtures_dir / "train_small_astronaut_coffee.npz")
  np.testing.assert_array_equal(e0["relations"], d["gt0_relations"])
  np.testing.assert_array_equal(e1["relations"], d["gt1_relations"])
  # masks = pycocotools annToMask of every annotation (polygons, and the crowd's RLE)
  anns = [a for a in ann["annotations"] if a["image_id"] == 1]
  for a, m in zip(anns, e0["objects"]["mask"]):
    rle = a["segmentation"]
    rle = (mask_util.merge(mask_util.frPyObjects(rle, 512, 512)) if isinstance(rle, list)
           else mask_util.frPyObjects(rle, 512, 512))
    np.testing.assert_array_equal(m[..., 0], mask_util.decode(rle))
  assert int(e0["objects"]["mask"][6].sum()) == 14400  # crowd RLE area
  # semantic label = the PNG
  np.testing.assert_array_equal(e1["semantic"][..., 0], np.asarray(
      Image.open(raw / "annotations" / "semantic_train2017" / "coffee.png")))
  assert sorted(np.unique(e0["semantic"]).tolist()) == [0, 3, 20, 41, 54]
  assert bool(e0["has_semantic"])


def test_builder_reads_back_without_raw_dir(built):
  raw, _, _ = built
  builder = coco.CocoPanopticRap(config="fixture", data_dir=raw / "tfds")
  assert builder.info.splits["train2017"].num_examples == 2
  assert builder.info.metadata["train2017"]["num_instances"] == [6, 5]


def test_missing_semantic_folder_stores_zeros(fixtures_dir, tmp_path):
  raw = copy_fixture_as_coco(fixtures_dir, tmp_path / "raw", semantic=False, panoptic=False)
  ex = next(iter(tfds.as_numpy(prepare(raw).as_dataset(split="train2017"))))
  assert not bool(ex["has_semantic"]) and ex["semantic"].shape == (512, 512, 1)
  assert int(ex["semantic"].max()) == 0 and ex["panoptic_file_name"] == b""


def test_corrupt_image_fails_naming_the_file(fixtures_dir, tmp_path):
  raw = copy_fixture_as_coco(fixtures_dir, tmp_path / "raw")
  bad = raw / "images" / "train2017" / "coffee.png"
  bad.write_bytes(bad.read_bytes()[:2000])  # truncated PNG
  with pytest.raises(Exception, match="cannot read image .*coffee.png"):
    prepare(raw)


def test_malformed_json_fails_naming_the_file(fixtures_dir, tmp_path):
  raw = copy_fixture_as_coco(fixtures_dir, tmp_path / "raw")
  path = raw / "annotations" / "instances_train2017_with_relation.json"
  path.write_text(path.read_text()[:500])
  with pytest.raises(ValueError, match="malformed JSON in .*instances_train2017_with_relation"):
    prepare(raw)
  pan = raw / "annotations" / "panoptic_train2017.json"
  shutil.copy(fixtures_dir / "train_data_astronaut_coffee" / "instances_train_with_relation.json",
              path)
  pan.write_text("{not json")
  with pytest.raises(ValueError, match="malformed JSON in .*panoptic_train2017.json"):
    prepare(raw, name="fixture2")


def test_size_mismatch_and_bad_category_fail_naming_the_file(fixtures_dir, tmp_path):
  raw = copy_fixture_as_coco(fixtures_dir, tmp_path / "raw", panoptic=False)
  path = raw / "annotations" / "instances_train2017_with_relation.json"
  ann = json.loads(path.read_text())
  ann["images"][0]["height"] = 500
  path.write_text(json.dumps(ann))
  with pytest.raises(ValueError, match=r"astronaut.png has size \(h, w\) = \(512, 512\)"):
    prepare(raw)
  ann["images"][0]["height"] = 512
  ann["annotations"][0]["category_id"] = 92  # banner: a stuff category
  path.write_text(json.dumps(ann))
  with pytest.raises(ValueError, match="instances_train2017.*category 92, not a COCO thing"):
    prepare(raw, name="fixture2")
