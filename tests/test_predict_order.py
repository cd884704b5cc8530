"""Predict mode writes (and draws segment ids for) the images in input order whatever the batching.

Batches hold one canvas each, so with batch_size > 1 landscape and portrait photos leave the
network out of order; one id generator serves the run (SPEC §4.3), so the writing order decides
the ids. A stand-in predictor gives every image one person segment: image k (sorted path order)
must get the k-th person id of the run, as in the original (one image per batch, in order).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from configs.fixtures import rap_small
from rap_jax import inference
from rap_jax import panoptic_io
from rap_jax import predict
from rap_jax.ops import fusion as fusion_ops

PERSON = 1
K = 2


class FakePredictor:
  """One person segment (pixel (0, 0)) and one detection per image; records the batches."""

  def __init__(self):
    self.batches = []

  def __call__(self, batch: inference.Batch) -> dict:
    b = len(batch.keys)
    ho, wo = batch.out_hw
    real = ~np.asarray(batch.is_padding)
    self.batches.append([key[1] for key in batch.keys if key is not None])
    seg = np.zeros((b, ho, wo), np.int32)
    seg[real, 0, 0] = 1
    s = K + 53
    category = np.zeros((b, s), np.int32)
    category[:, 0] = PERSON
    image_ids = np.array([key[1] if key is not None else 0 for key in batch.keys])
    fusion = fusion_ops.FusionResult(
        segment_map=seg, segment_category=category,
        segment_is_thing=np.arange(s)[None].repeat(b, 0) == 0,
        segment_instance=np.where(np.arange(s) == 0, 0, -1)[None].repeat(b, 0).astype(np.int32),
        segment_area=np.where(np.arange(s) == 0, 1, 0)[None].repeat(b, 0).astype(np.int32),
        segment_valid=np.arange(s)[None].repeat(b, 0) == 0,
        num_segments=np.ones(b, np.int32),
        accepted_category=np.array([[PERSON, 0]] * b, np.int32),
        accepted_segment=np.array([[0, -1]] * b, np.int32),
        accepted_valid=np.array([[True, False]] * b))
    masks = np.zeros((b, K, ho, wo), bool)
    masks[:, 0, 0, 0] = True
    return dict(fusion=fusion, valid=np.array([[True, False]] * b),
                boxes=np.tile(np.array([0, 0, 1, 1], np.float32), (b, K, 1)),
                scores=(image_ids[:, None] / 100 + np.zeros((b, K))).astype(np.float32),
                labels=np.full((b, K), PERSON, np.int32), masks=masks,
                relation=np.zeros((b, K), np.float32))


def _photos(folder, shapes):
  folder.mkdir()
  for name, (h, w) in shapes.items():
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(folder / f"{name}.png")


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_ids_follow_input_order_with_mixed_canvases(tmp_path, monkeypatch, batch_size):
  land, port = (200, 300), (300, 200)        # canvases (320, 480) and (480, 320)
  names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]
  shapes = dict(zip(names, [land, port, land, land, port, land, port, port, land, land, port]))
  _photos(tmp_path / "images", shapes)
  fake = FakePredictor()
  monkeypatch.setattr(predict, "find_checkpoint", lambda config, workdir: "unused")
  monkeypatch.setattr(inference.Predictor, "from_checkpoint",
                      staticmethod(lambda config, ckpt: fake))
  monkeypatch.setattr(predict, "REORDER_WINDOW", 1)     # several windows in 11 images
  config = rap_small.get_config()
  config.predict.images = str(tmp_path / "images")
  config.predict.batch_size = batch_size
  config.predict.write_vis = batch_size == 2              # overlays use the written ids
  summary = predict.run(config, str(tmp_path / "out"))
  assert summary["images"] == len(names) and summary["detections"] == len(names)
  order = [i for batch in fake.batches for i in batch]
  if batch_size > 1:
    assert order != sorted(order)                       # the network saw them out of order
  generator = panoptic_io.IdGenerator(seed=panoptic_io.DEFAULT_ID_SEED)
  expected = [generator.get_id(PERSON) for _ in names]
  written = json.loads((tmp_path / "out" / "panoptic.json").read_text())["annotations"]
  assert [a["image_id"] for a in written] == list(range(1, len(names) + 1))
  assert [a["file_name"] for a in written] == [f"{n}.png" for n in names]
  assert [a["segments_info"][0]["id"] for a in written] == expected
  for a in written:
    png = panoptic_io.read_panoptic_png(tmp_path / "out" / "panoptic" / a["file_name"])
    assert png[0, 0] == a["segments_info"][0]["id"] and np.count_nonzero(png) == 1
  instances = json.loads((tmp_path / "out" / "instances.json").read_text())
  assert [r["image_id"] for r in instances] == list(range(1, len(names) + 1))
  vis = sorted(p.name for p in (tmp_path / "out").glob("vis/*.png"))
  assert vis == ([f"{n}.png" for n in names] if batch_size == 2 else [])


def test_in_order_and_chunked():
  assert list(predict.in_order([(2, "c"), (0, "a"), (1, "b"), (3, "d")])) == list("abcd")
  released = []
  for value in predict.in_order([(1, "b"), (0, "a"), (2, "c")]):
    released.append(value)
    if value == "a":
      assert released == ["a"]                           # released as soon as possible
  with pytest.raises(ValueError, match="twice"):
    list(predict.in_order([(0, "a"), (0, "a")]))
  with pytest.raises(ValueError, match="never did"):
    list(predict.in_order([(1, "b")]))
  assert list(predict.chunked(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
  assert list(predict.chunked([], 3)) == []
