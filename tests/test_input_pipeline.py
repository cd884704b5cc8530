"""tf.data train/eval pipelines: fixture targets, flip, determinism, static shapes, eval."""
import json
import pathlib
import shutil

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from pycocotools import mask as mask_util

from rap_jax.data import coco
from rap_jax.data import input_pipeline as ip
from rap_jax.data import targets
from rap_jax.data import transforms

tfds.disable_progress_bar()
MEAN = (102.9801, 115.9465, 122.7717)


def fixture_input_config() -> ml_collections.ConfigDict:
  """Training-fixture sizes (MIN_SIZE_TRAIN 320, MAX 475) and the small model's canvases."""
  return ml_collections.ConfigDict(dict(
      min_size_train=(320,), max_size_train=475, min_size_test=320, max_size_test=475,
      pixel_mean=MEAN, pixel_std=(1.0, 1.0, 1.0), size_divisibility=32,
      canvas_sizes=((320, 480), (480, 320), (480, 480)), flip_prob=0.5))


def tiny_input_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      min_size_train=(56, 64), max_size_train=96, min_size_test=64, max_size_test=96,
      pixel_mean=MEAN, pixel_std=(1.0, 1.0, 1.0), size_divisibility=32,
      canvas_sizes=((96, 96), (64, 96), (96, 64)), flip_prob=0.5))


def prepare(raw: pathlib.Path, name: str) -> coco.CocoPanopticRap:
  builder = coco.CocoPanopticRap(raw_dir=raw, config=name, data_dir=raw / "tfds", num_workers=1)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder


def make_tiny_coco(raw: pathlib.Path, sizes, split: str, seed: int = 0) -> None:
  """Hand-made COCO-layout set: rectangles as polygons, `overlap` = later rectangles in front.

  Image k has k % 4 non-crowd instances (0 -> none at all) and, when k % 5 == 4, one crowd
  instance (so image 4 has crowd only).
  """
  rng = np.random.default_rng(seed)
  (raw / "images" / split).mkdir(parents=True)
  (raw / "annotations" / f"semantic_{split}").mkdir(parents=True)
  images, anns = [], []
  for k, (h, w) in enumerate(sizes):
    image_id = 10 + 3 * k  # ids not contiguous
    name = f"{image_id:06d}.png"
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
        raw / "images" / split / name)
    semantic = np.full((h, w), 7, np.uint8)
    ids = []
    for j in range(k % 4 + (1 if k % 5 == 4 else 0)):
      x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
      x1, y1 = x0 + rng.integers(4, w // 2), y0 + rng.integers(4, h // 2)
      crowd = j == k % 4
      ann_id = 1000 * image_id + j
      anns.append(dict(id=ann_id, image_id=image_id, category_id=[1, 18, 44, 90][j % 4],
                       segmentation=[[float(x0), float(y0), float(x1), float(y0), float(x1),
                                      float(y1), float(x0), float(y1)]],
                       bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                       area=float((x1 - x0) * (y1 - y0)), iscrowd=int(crowd), overlap=[]))
      if not crowd:
        for prev in anns[len(anns) - 1 - len(ids):len(anns) - 1]:
          prev["overlap"].append(ann_id)  # this one is in front of every earlier one
        ids.append(ann_id)
      semantic[y0:y1 + 1, x0:x1 + 1] = 54
    Image.fromarray(semantic).save(raw / "annotations" / f"semantic_{split}" / name)
    images.append(dict(id=image_id, file_name=name, height=h, width=w))
  (raw / "annotations" / f"instances_{split}_with_relation.json").write_text(json.dumps(
      dict(images=images[::-1], annotations=anns, categories=[])))


@pytest.fixture(scope="module")
def fixture_builder(fixtures_dir, tmp_path_factory):
  raw = tmp_path_factory.mktemp("fixture") / "raw"
  src = fixtures_dir / "train_data_astronaut_coffee"
  (raw / "images").mkdir(parents=True)
  shutil.copytree(src / "images", raw / "images" / "train2017")
  (raw / "annotations").mkdir()
  shutil.copy(src / "instances_train_with_relation.json",
              raw / "annotations" / "instances_train2017_with_relation.json")
  shutil.copytree(src / "semantic_train2017", raw / "annotations" / "semantic_train2017")
  return prepare(raw, "fixture")


TINY_SIZES = [(48, 80), (80, 48), (64, 64), (40, 90), (70, 50), (48, 80), (90, 40), (50, 50),
              (60, 80), (80, 60), (33, 77)]


@pytest.fixture(scope="module")
def tiny_builder(tmp_path_factory):
  raw = tmp_path_factory.mktemp("tiny") / "raw"
  make_tiny_coco(raw, TINY_SIZES, "train2017")
  make_tiny_coco(raw, TINY_SIZES, "val2017")
  return prepare(raw, "tiny")


def take(ds, n):
  with ip.as_numpy(ds) as it:
    return [next(it) for _ in range(n)]


def fixture_batch(builder, **kw):
  args = dict(split="train2017", input_config=fixture_input_config(), batch_size=2,
              max_instances=8, seed=0, flip_prob=0.0, process_index=0, process_count=1)
  args.update(kw)
  batch = take(ip.make_train_dataset(builder, **args), 1)[0]
  order = np.argsort(batch["image_info"]["image_id"])  # image 0 = astronaut (id 1)
  return {k: (v[order] if k != "image_info" else {n: x[order] for n, x in v.items()})
          for k, v in batch.items()}


# ------------------------------------------------------------------ resize rule


def test_get_size_tf_matches_the_python_rule():
  rng = np.random.default_rng(0)
  hw = rng.integers(1, 2000, (400, 2))
  hw = np.concatenate([hw, [[800, 1200], [1200, 800], [600, 800], [500, 1000], [427, 640],
                            [333, 1000], [1, 1], [800, 800]]])
  mins = rng.choice([320, 640, 800, 1024], len(hw))
  for max_size in (475, 1333):
    oh, ow = targets.get_size_tf(tf.constant(hw[:, 0]), tf.constant(hw[:, 1]),
                                 tf.constant(mins), max_size)
    expected = np.array([transforms.get_size(int(w), int(h), int(m), max_size)
                         for (h, w), m in zip(hw, mins)])
    np.testing.assert_array_equal(np.stack([oh, ow], 1), expected)


def test_canvas_index_picks_the_smallest_fitting_canvas():
  canvases = ip.sort_canvases([(1344, 1344), (1344, 800), (800, 1344)])
  assert canvases == ((800, 1344), (1344, 800), (1344, 1344))
  for padded, want in [((800, 1344), 0), ((832, 800), 1), ((1344, 1344), 2), ((1376, 32), -1)]:
    assert int(targets.canvas_index_tf(tf.constant(padded, tf.int32), canvases)) == want


def test_nearest_mask_resize_and_flip_equal_tf_image_resize():
  rng = np.random.default_rng(1)
  masks = tf.constant((rng.random((3, 37, 53)) > 0.5).astype(np.uint8))
  for hw in [(37, 53), (80, 106), (20, 31), (100, 133), (36, 54)]:
    want = tf.image.resize(masks[..., None], hw, method="nearest")[..., 0].numpy()
    np.testing.assert_array_equal(targets.resize_masks(masks, tf.constant(hw)), want)
    np.testing.assert_array_equal(targets.resize_masks(masks, tf.constant(hw), True),
                                  want[:, :, ::-1])
  empty = targets.resize_masks(tf.zeros([0, 37, 53], tf.uint8), tf.constant([20, 31]))
  assert empty.shape == (0, 20, 31)


def test_mask_bit_packing_equals_numpy_packbits():
  masks = (np.random.default_rng(2).random((2, 5, 64)) > 0.5).astype(np.uint8)
  np.testing.assert_array_equal(targets.pack_mask_bits(tf.constant(masks)),
                                np.packbits(masks, axis=-1))


def test_normalisation_is_bit_equal_to_the_numpy_version():
  v = np.arange(256)
  rgb = np.stack([v[:, None] + 0 * v, 0 * v[:, None] + v, 255 - v[:, None] + 0 * v],
                 -1).astype(np.uint8)  # every uint8 value in every channel
  for std in ((1.0, 1.0, 1.0), (57.375, 57.12, 58.395)):
    np.testing.assert_array_equal(targets.normalize_image_tf(tf.constant(rgb), MEAN, std),
                                  transforms.normalize_image(rgb, MEAN, std))


# ------------------------------------------------------------------ training targets


def test_train_targets_equal_the_original(fixture_builder, fixtures_dir):
  d = np.load(fixtures_dir / "train_small_astronaut_coffee.npz")
  batch = fixture_batch(fixture_builder, image_resize="pil")
  assert batch["image"].shape == (2, 320, 480, 3)
  np.testing.assert_array_equal(batch["image_info"]["resized_hw"], d["image_sizes"])
  np.testing.assert_array_equal(batch["image_info"]["canvas_hw"], [[320, 480]] * 2)
  np.testing.assert_array_equal(batch["image_info"]["original_hw"], [[512, 512], [400, 600]])
  # the network input of the original, bit for bit (PIL resize backend), padding included
  np.testing.assert_array_equal(batch["image"], d["input"].transpose(0, 2, 3, 1))
  for i in range(2):
    n = len(d[f"gt{i}_labels"])
    h, w = d["image_sizes"][i]
    np.testing.assert_array_equal(batch["instance_valid"][i], np.arange(8) < n)
    np.testing.assert_array_equal(batch["boxes"][i, :n], d[f"gt{i}_boxes"])  # exact float32
    assert not batch["boxes"][i, n:].any()
    np.testing.assert_array_equal(batch["labels"][i, :n], d[f"gt{i}_labels"])
    np.testing.assert_array_equal(batch["instance_ids"][i, :n], d[f"gt{i}_instance_ids"])
    ids = batch["instance_ids"][i]
    pairs = {(ids[a], ids[b]) for a, b in zip(*np.nonzero(batch["relations"][i]))}
    assert pairs == set(map(tuple, d[f"gt{i}_relations"].tolist()))
    # semantic label: exactly the original's cv2 bilinear resize, zero padding
    np.testing.assert_array_equal(batch["semantic"][i, :h, :w], d[f"gt{i}_semantic_label"])
    assert not batch["semantic"][i, h:].any() and not batch["semantic"][i, :, w:].any()
    # masks: nearest-resized bitmaps vs the original's resized polygons rasterised at (h, w)
    coords, offsets, owner = (d[f"gt{i}_poly_coords"], d[f"gt{i}_poly_offsets"],
                              d[f"gt{i}_poly_instance"])
    for k in range(n):
      polys = [coords[offsets[p]:offsets[p + 1]].astype(np.float64).tolist()
               for p in np.flatnonzero(owner == k)]
      ref = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, int(h), int(w))))
      got = batch["masks"][i, k, :h, :w]
      iou = (got & ref).sum() / (got | ref).sum()
      assert iou > 0.97, (i, k, iou)
      assert not batch["masks"][i, k, h:].any() and not batch["masks"][i, k, :, w:].any()
    assert not batch["masks"][i, n:].any()


def test_tf_image_resize_is_within_one_grey_level_of_pil(fixture_builder, fixtures_dir):
  d = np.load(fixtures_dir / "train_small_astronaut_coffee.npz")
  batch = fixture_batch(fixture_builder, image_resize="tf", mask_format="none")
  diff = np.abs(batch["image"] - d["input"].transpose(0, 2, 3, 1))
  assert diff.max() <= 1.0 + 1e-4 and diff.mean() < 0.2
  assert "masks" not in batch


def test_semantic_nearest_fix_keeps_only_original_labels(fixture_builder, fixtures_dir):
  d = np.load(fixtures_dir / "train_small_astronaut_coffee.npz")
  batch = fixture_batch(fixture_builder, semantic_resize="nearest", mask_format="none")
  h, w = d["image_sizes"][0]
  nearest, bilinear = batch["semantic"][0, :h, :w], d["gt0_semantic_label"]
  assert sorted(np.unique(nearest).tolist()) == [0, 3, 20, 41, 54]  # no blended values
  assert len(np.unique(bilinear)) > 5 and 1000 < (nearest != bilinear).sum() < 2500


def test_flip_is_consistent_across_image_boxes_masks_semantic(fixture_builder):
  kw = dict(image_resize="tf")
  plain = fixture_batch(fixture_builder, flip_prob=0.0, **kw)
  flipped = fixture_batch(fixture_builder, flip_prob=1.0, **kw)
  assert flipped["image_info"]["flipped"].all() and not plain["image_info"]["flipped"].any()
  for i in range(2):
    h, w = plain["image_info"]["resized_hw"][i]
    np.testing.assert_array_equal(flipped["image"][i, :h, :w], plain["image"][i, :h, ::-1][:, -w:])
    assert not flipped["image"][i, h:].any() and not flipped["image"][i, :, w:].any()
    np.testing.assert_array_equal(flipped["semantic"][i, :h, :w],
                                  plain["semantic"][i, :h, :w][:, ::-1])
    np.testing.assert_array_equal(flipped["masks"][i, :, :h, :w],
                                  plain["masks"][i, :, :h, :w][:, :, ::-1])
    n = plain["instance_valid"][i].sum()
    b, f = plain["boxes"][i, :n], flipped["boxes"][i, :n]
    np.testing.assert_array_equal(f[:, 0], np.float32(w) - b[:, 2] - 1)
    np.testing.assert_array_equal(f[:, 2], np.float32(w) - b[:, 0] - 1)
    np.testing.assert_array_equal(f[:, 1::2], b[:, 1::2])
    for key in ("labels", "instance_ids", "instance_valid", "relations"):
      np.testing.assert_array_equal(flipped[key][i], plain[key][i])
    for k in range(n):  # each flipped mask lies in its flipped box (one pixel of slack)
      ys, xs = np.nonzero(flipped["masks"][i, k])
      assert xs.min() >= f[k, 0] - 1 and xs.max() <= f[k, 2] + 1
      assert ys.min() >= f[k, 1] - 1 and ys.max() <= f[k, 3] + 1


def test_packed_masks_unpack_to_canvas_masks(fixture_builder):
  canvas = fixture_batch(fixture_builder, image_resize="tf")["masks"]
  packed = fixture_batch(fixture_builder, image_resize="tf", mask_format="packed")["masks"]
  assert packed.shape == (2, 8, 320, 60) and packed.dtype == np.uint8
  np.testing.assert_array_equal(np.unpackbits(packed, axis=-1), canvas)


# ------------------------------------------------------------------ batching, determinism, hosts


def tiny_train(builder, **kw):
  args = dict(split="train2017", input_config=tiny_input_config(), batch_size=2,
              max_instances=4, seed=3, shuffle_buffer=16, process_index=0, process_count=1,
              image_resize="tf")
  args.update(kw)
  return ip.make_train_dataset(builder, **args)


def test_train_batches_are_static_grouped_and_skip_images_without_instances(tiny_builder):
  meta = ip.split_metadata(tiny_builder, "train2017")
  with_instances = set(meta["image_id"][meta["num_instances"] > 0].tolist())
  assert len(with_instances) == 8  # 3 images without a non-crowd instance (one crowd only)
  seen = set()
  for batch in take(tiny_train(tiny_builder), 12):
    canvas = tuple(batch["image_info"]["canvas_hw"][0])
    assert canvas in ((64, 96), (96, 64))  # (96, 96) never needed
    assert (batch["image_info"]["canvas_hw"] == canvas).all()
    assert batch["image"].shape == (2,) + canvas + (3,)
    assert batch["masks"].shape == (2, 4) + canvas and batch["relations"].shape == (2, 4, 4)
    assert (batch["image_info"]["padded_hw"] <= canvas).all()
    for i, image_id in enumerate(batch["image_info"]["image_id"]):
      k = (image_id - 10) // 3
      assert batch["instance_valid"][i].sum() == k % 4  # non-crowd instances only
      n = k % 4  # rectangles drawn later are in front of earlier ones: rel[j, i] for j > i
      np.testing.assert_array_equal(batch["relations"][i][:n, :n], np.tril(np.ones((n, n)), -1))
      seen.add(int(image_id))
  assert seen == with_instances


def test_train_is_deterministic_for_a_seed(tiny_builder):
  a = take(tiny_train(tiny_builder, seed=5), 5)
  b = take(tiny_train(tiny_builder, seed=5), 5)
  c = take(tiny_train(tiny_builder, seed=6), 5)
  for x, y in zip(a, b):
    for key in ("image", "boxes", "masks", "semantic", "relations"):
      np.testing.assert_array_equal(x[key], y[key])
    np.testing.assert_array_equal(x["image_info"]["flipped"], y["image_info"]["flipped"])
  sig = lambda bs: [(tuple(x["image_info"]["image_id"]), tuple(x["image_info"]["flipped"]),
                     tuple(x["image_info"]["resized_hw"].ravel())) for x in bs]
  assert sig(a) != sig(c)
  assert 0 < np.mean([x["image_info"]["flipped"].mean() for x in a + c]) < 1


def test_hosts_get_disjoint_images_and_the_same_canvas_sequence(tiny_builder):
  hosts = [take(tiny_train(tiny_builder, process_index=p, process_count=2, batch_size=1), 8)
           for p in range(2)]
  canvases = [[tuple(b["image_info"]["canvas_hw"][0]) for b in h] for h in hosts]
  assert canvases[0] == canvases[1] and len(set(canvases[0])) == 2
  ids = [{int(b["image_info"]["image_id"][0]) for b in h} for h in hosts]
  assert not ids[0] & ids[1]


def test_train_canvas_plan_drops_canvases_a_host_cannot_fill():
  cfg = tiny_input_config()
  cfg.min_size_train = (64,)
  # 4 images; only the last (on host 1) is portrait
  meta = dict(image_id=np.arange(4), height=np.array([48, 48, 48, 80]),
              width=np.array([80, 80, 80, 48]), num_instances=np.ones(4, np.int64))
  canvases, probs = ip.plan_train_canvases(meta, cfg, process_count=1)
  assert canvases == ((64, 96), (96, 64)) and np.allclose(probs, [0.75, 0.25])
  # host 0 has no portrait image: every host uses the one canvas that holds all images
  canvases, probs = ip.plan_train_canvases(meta, cfg, process_count=2)
  assert canvases == ((96, 96),) and np.allclose(probs, [1.0])


# ------------------------------------------------------------------ eval


@pytest.mark.parametrize("process_count,batch_size", [(1, 1), (1, 4), (2, 3), (3, 2), (4, 4)])
def test_eval_sees_every_image_exactly_once(tiny_builder, process_count, batch_size):
  meta = ip.split_metadata(tiny_builder, "val2017")
  seen, sequences = [], []
  for p in range(process_count):
    ds, plan = ip.make_eval_dataset(tiny_builder, split="val2017", input_config=tiny_input_config(),
                                    batch_size=batch_size, process_index=p,
                                    process_count=process_count, image_resize="tf")
    assert ds.element_spec["image"].shape[0] == batch_size
    with ip.as_numpy(ds) as it:
      batches = list(it)
    assert len(batches) == plan.num_steps
    sequences.append([tuple(b["image_info"]["canvas_hw"][0]) for b in batches])
    real = [int(i) for b in batches for i, pad in zip(b["image_info"]["image_id"],
                                                      b["image_info"]["is_padding"]) if not pad]
    assert real == plan.image_ids.tolist()
    for b in batches:
      assert b["image"].shape == (batch_size,) + tuple(b["image_info"]["canvas_hw"][0]) + (3,)
      pad = b["image_info"]["is_padding"]
      assert (b["image_info"]["image_id"][pad] == -1).all() and not b["image"][pad].any()
    seen += real
  assert sorted(seen) == sorted(meta["image_id"].tolist())  # all 11, once (no-instance ones too)
  assert all(s == sequences[0] for s in sequences)


def test_eval_images_equal_the_test_transform(tiny_builder):
  cfg = tiny_input_config()
  ds, plan = ip.make_eval_dataset(tiny_builder, split="val2017", input_config=cfg, batch_size=4,
                                  process_index=0, process_count=1, max_images=5)
  assert plan.num_images == 5
  raw = pathlib.Path(tiny_builder._raw_dir)  # pylint: disable=protected-access
  with ip.as_numpy(ds) as it:
    for b in it:
      for image, info in zip(b["image"], b["image_info"]["image_id"]):
        if info < 0:
          continue
        rgb = transforms.load_image(raw / "images" / "val2017" / f"{info:06d}.png")
        want, winfo = transforms.preprocess_for_test(rgb, cfg)
        np.testing.assert_array_equal(image, transforms.pad_to_canvas(want, image.shape[:2]))
        assert winfo["resized_hw"] == transforms.get_size(rgb.shape[1], rgb.shape[0], 64, 96)


def test_training_without_semantic_labels_fails_clearly(fixtures_dir, tmp_path):
  raw = tmp_path / "raw"
  src = fixtures_dir / "train_data_astronaut_coffee"
  (raw / "images").mkdir(parents=True)
  shutil.copytree(src / "images", raw / "images" / "train2017")
  (raw / "annotations").mkdir()
  shutil.copy(src / "instances_train_with_relation.json",
              raw / "annotations" / "instances_train2017_with_relation.json")
  builder = prepare(raw, "no_semantic")
  with pytest.raises(tf.errors.InvalidArgumentError, match="training needs semantic labels"):
    fixture_batch(builder, mask_format="none")
  assert fixture_batch(builder, mask_format="none", require_semantic=False)["semantic"].max() == 0
