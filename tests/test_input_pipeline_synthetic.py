"""Builder + train/eval pipelines end to end on a tiny built-in synthetic set, from a config."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import common
from rap_jax.data import coco
from rap_jax.data import input_pipeline as ip
from rap_jax.data import synthetic

tfds.disable_progress_bar()


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  raw = tmp_path_factory.mktemp("synthetic") / "raw"
  synthetic.generate(raw, num_train=3, num_val=2, image_size=(64, 96), max_instances=4)
  config = common.get_config()
  config.data.name = "synthetic"
  config.data.data_dir = str(raw)
  config.data.max_instances = 8
  config.input.min_size_train = (64,)
  config.input.max_size_train = 96
  config.input.min_size_test = 64
  config.input.max_size_test = 96
  config.input.canvas_sizes = ((64, 96), (96, 64))
  config.train.global_batch_size = 2
  config.eval.batch_size = 4
  return config


def test_synthetic_set_builds_and_trains(config):
  builder = coco.get_builder(config.data)
  assert set(builder.info.splits.keys()) == {"train2017", "val2017"}
  raw = builder._raw_dir  # pylint: disable=protected-access
  anns = json.loads((raw / "annotations" / "instances_train2017_with_relation.json").read_text())
  examples = list(tfds.as_numpy(builder.as_dataset(split="train2017")))
  assert [int(e["image_id"]) for e in examples] == [1, 2, 3]
  assert all(e["panoptic_file_name"] and e["has_semantic"] for e in examples)
  by_image = {}
  for a in anns["annotations"]:
    by_image.setdefault(a["image_id"], []).append(a)

  with ip.as_numpy(ip.create_train_dataset(config, builder, process_index=0,
                                           process_count=1)) as it:
    batches = [next(it) for _ in range(3)]
  for batch in batches:
    # config.data.mask_format = "packed": 8 pixels per byte along the width
    assert batch["image"].shape == (2, 64, 96, 3) and batch["masks"].shape == (2, 8, 64, 12)
    for i, image_id in enumerate(batch["image_info"]["image_id"]):
      objs = [a for a in by_image[int(image_id)] if not a["iscrowd"]]
      n = int(batch["instance_valid"][i].sum())
      assert n == len(objs)
      np.testing.assert_array_equal(batch["instance_ids"][i, :n], [a["id"] for a in objs])
      ids = batch["instance_ids"][i]
      got = {(ids[f], ids[b]) for f, b in zip(*np.nonzero(batch["relations"][i]))}
      assert got == {(f, a["id"]) for a in objs for f in a["overlap"]}
      # 64x96 images keep their size: boxes are the JSON's (+1 convention), flipped or not
      x, y, w, h = np.array([a["bbox"] for a in objs], np.float32).T
      want = np.stack([x, y, x + np.maximum(w - 1, 0), y + np.maximum(h - 1, 0)], 1)
      if batch["image_info"]["flipped"][i]:
        want[:, [0, 2]] = 96 - want[:, [2, 0]] - 1
      np.testing.assert_allclose(batch["boxes"][i, :n], want, atol=1e-4)
      assert batch["masks"][i, :n].reshape(n, -1).sum(1).min() > 0
      assert batch["semantic"][i].max() <= 54 and (batch["semantic"][i] == 54).any()
  assert len({int(i) for b in batches for i in b["image_info"]["image_id"]}) == 3


def test_synthetic_eval_covers_the_val_split(config):
  ds, plan = ip.create_eval_dataset(config, process_index=0, process_count=1)
  assert plan.num_steps == 1 and plan.num_images == 2
  with ip.as_numpy(ds) as it:
    (batch,) = list(it)
  assert batch["image"].shape == (4, 64, 96, 3)
  np.testing.assert_array_equal(batch["image_info"]["is_padding"], [False, False, True, True])
  np.testing.assert_array_equal(batch["image_info"]["image_id"], [1_000_001, 1_000_002, -1, -1])
