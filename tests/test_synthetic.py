"""The built-in synthetic dataset: determinism, COCO format, relations vs the known depth order, and
the data-preparation scripts recovering the recorded relations (rap_jax/data/synthetic.py)."""
import importlib.util
import json
import pathlib

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from rap_jax.data import categories, format_check, prep_io, synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = dict(num_train=14, num_val=5, image_size=(256, 256), seed=7, crowd_prob=0.3, void_prob=0.5)
SPLITS = ("train2017", "val2017")


def _script(name: str):
  spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("synthetic")
  synthetic.generate(root, **CONFIG)
  return root


def _load(root, split, key):
  return prep_io.load_json(root / synthetic.split_files(split)[key])


def _files(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _amodal(ann, h, w) -> np.ndarray:
  """Independent rasterisation: fillPoly of int-truncated vertices; RLE decoded by pycocotools."""
  seg = ann["segmentation"]
  if isinstance(seg, dict):
    return mask_utils.decode(mask_utils.frPyObjects(seg, h, w)).astype(bool)
  m = np.zeros((h, w), np.uint8)
  for poly in seg:
    cv2.fillPoly(m, [np.array(poly).reshape(-1, 2).astype(np.int32)], 1)
  return m.astype(bool)


def test_layout(data_dir):
  for split, num in zip(SPLITS, (CONFIG["num_train"], CONFIG["num_val"])):
    for key in ("instances", "with_relation", "panoptic", "relations", "depths"):
      assert (data_dir / synthetic.split_files(split)[key]).is_file()
    inst = _load(data_dir, split, "instances")
    names = [im["file_name"] for im in inst["images"]]
    assert len(names) == num and all(n.endswith(".png") and len(n) == 16 for n in names)
    for sub in (f"images/{split}", f"annotations/panoptic_{split}", f"annotations/semantic_{split}"):
      assert sorted(p.name for p in (data_dir / sub).iterdir()) == sorted(names)
    assert inst["categories"] == categories.thing_categories_json()
    assert _load(data_dir, split, "panoptic")["categories"] == categories.categories_json()
    img = np.asarray(Image.open(data_dir / "images" / split / names[0]))
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8 and img.std() > 10
    sem = np.asarray(Image.open(data_dir / "annotations" / f"semantic_{split}" / names[0]))
    assert sem.shape == (256, 256) and sem.max() <= 54
    # with_relation = instances + overlap (last key)
    wr = _load(data_dir, split, "with_relation")
    for a, b in zip(wr["annotations"], inst["annotations"], strict=True):
      assert list(a)[-1] == "overlap" and {k: v for k, v in a.items() if k != "overlap"} == b
  assert json.loads((data_dir / "synthetic_config.json").read_text())["seed"] == CONFIG["seed"]


def test_format_checks(data_dir):
  for split in SPLITS:
    assert format_check.check_panoptic(_load(data_dir, split, "panoptic"),
                                       data_dir / f"annotations/panoptic_{split}") == []
    assert format_check.check_instances(_load(data_dir, split, "with_relation")) == []


def test_format_check_catches_errors(data_dir):
  pano = _load(data_dir, "val2017", "panoptic")
  pano["annotations"][0]["segments_info"][0]["area"] += 1
  pano["annotations"][1]["segments_info"].pop()
  errors = format_check.check_panoptic(pano, data_dir / "annotations/panoptic_val2017")
  assert len(errors) == 2 and "area" in errors[0] and "PNG ids without segment" in errors[1]
  inst = _load(data_dir, "val2017", "instances")
  inst["annotations"][0]["bbox"][0] += 1
  assert "toBbox" in format_check.check_instances(inst)[0]


def test_deterministic_and_independent_of_workers(data_dir, tmp_path):
  synthetic.generate(tmp_path / "again", workers=2, **CONFIG)
  assert _files(tmp_path / "again") == _files(data_dir)
  other = dict(CONFIG, seed=CONFIG["seed"] + 1, num_train=2, num_val=0)
  synthetic.generate(tmp_path / "other", **other)
  a = (data_dir / "images/train2017/000000000001.png").read_bytes()
  assert (tmp_path / "other/images/train2017/000000000001.png").read_bytes() != a
  # image i depends only on (seed, split, i), not on the split sizes
  small = dict(CONFIG, num_train=3, num_val=1)
  synthetic.generate(tmp_path / "small", **small)
  for name in ("images/train2017/000000000003.png", "annotations/panoptic_val2017/000001000001.png"):
    assert (tmp_path / "small" / name).read_bytes() == (data_dir / name).read_bytes()


def test_val_seed_gives_an_unseen_validation_split(data_dir, tmp_path):
  # val_seed draws the validation split from another seed; the training split is unchanged;
  # the default (-1) keeps the stamp (and files) of datasets made before the option existed.
  s = CONFIG["seed"]
  synthetic.generate(tmp_path / "v", **dict(CONFIG, num_train=1, num_val=1, val_seed=s + 7))
  synthetic.generate(tmp_path / "o", **dict(CONFIG, num_train=0, num_val=1, seed=s + 7))
  train, val = "images/train2017/000000000001.png", "images/val2017/000001000001.png"
  assert (tmp_path / "v" / train).read_bytes() == (data_dir / train).read_bytes()
  assert (tmp_path / "v" / val).read_bytes() != (data_dir / val).read_bytes()
  assert (tmp_path / "v" / val).read_bytes() == (tmp_path / "o" / val).read_bytes()
  stamp = json.loads((data_dir / "synthetic_config.json").read_text())
  assert "val_seed" not in stamp
  assert json.loads((tmp_path / "v/synthetic_config.json").read_text())["val_seed"] == s + 7
  with pytest.raises(ValueError, match="val_seed"):
    synthetic.SyntheticConfig(val_seed=-2)


def test_visible_masks_follow_depth(data_dir):
  """Every pixel of an amodal mask shows the nearest instance covering it (panoptic = painting)."""
  for split in SPLITS:
    inst, pano = _load(data_dir, split, "instances"), _load(data_dir, split, "panoptic")
    depths = _load(data_dir, split, "depths")
    for image, pann in zip(inst["images"], pano["annotations"], strict=True):
      h, w = image["height"], image["width"]
      anns = [a for a in inst["annotations"] if a["image_id"] == image["id"]]
      ids = prep_io.read_panoptic_png(data_dir / f"annotations/panoptic_{split}" / pann["file_name"])
      segs = pann["segments_info"]
      # thing segments come first, in annotation order
      assert [s["category_id"] for s in segs[:len(anns)]] == [a["category_id"] for a in anns]
      assert [s["iscrowd"] for s in segs[:len(anns)]] == [a["iscrowd"] for a in anns]
      assert all(not categories.is_thing(s["category_id"]) for s in segs[len(anns):])
      depth = np.full((h, w), np.inf)
      expect = np.zeros((h, w), np.int64)
      for a, s in zip(anns, segs):
        d = depths[str(image["id"])][str(a["id"])]
        m = _amodal(a, h, w) & (d < depth)
        depth[m], expect[m] = d, s["id"]
      covered = np.isfinite(depth)
      np.testing.assert_array_equal(ids[covered], expect[covered])
      thing_ids = {s["id"] for s in segs[:len(anns)]}
      assert not np.isin(ids[~covered], list(thing_ids)).any()


def test_relations_agree_with_depth_order(data_dir):
  """relations_*.json = every overlapping non-crowd pair, front = smaller depth, discovery order;
  ``overlap`` of the with_relation JSON = the pairs passing the 0.2 ratio."""
  n_images = n_pairs = n_same = n_crowd = 0
  for split in SPLITS:
    inst, rel = _load(data_dir, split, "with_relation"), _load(data_dir, split, "relations")
    depths = _load(data_dir, split, "depths")
    assert list(rel) == [str(im["id"]) for im in inst["images"]]
    for image in inst["images"]:
      n_images += 1
      anns = [a for a in inst["annotations"] if a["image_id"] == image["id"]]
      n_crowd += sum(a["iscrowd"] for a in anns)
      dep = {a["id"]: depths[str(image["id"])][str(a["id"])] for a in anns}
      assert len(set(dep.values())) == len(dep)
      masks = [_amodal(a, image["height"], image["width"]) for a in anns]
      want, ratio_pass = {}, {a["id"]: [] for a in anns}
      for i in range(len(anns)):
        for j in range(i + 1, len(anns)):
          if anns[i]["iscrowd"] or anns[j]["iscrowd"]:
            continue
          o = int((masks[i] & masks[j]).sum())
          if not o:
            continue
          f, b = (i, j) if dep[anns[i]["id"]] < dep[anns[j]["id"]] else (j, i)
          want.setdefault(str(anns[b]["id"]), []).append(anns[f]["id"])
          n_same += anns[i]["category_id"] == anns[j]["category_id"]
          if o / masks[i].sum() > 0.2 or o / masks[j].sum() > 0.2:
            ratio_pass[anns[b]["id"]].append(anns[f]["id"])
      assert list(rel[str(image["id"])].items()) == list(want.items())
      n_pairs += sum(len(v) for v in want.values())
      assert {a["id"]: a["overlap"] for a in anns} == ratio_pass
  # occlusions are frequent, same-category ones common, crowds present
  assert n_pairs >= n_images and n_same >= 3 and n_crowd >= 1


def test_retrieve_and_refine_recover_recorded_relations(data_dir, tmp_path):
  """The data-preparation scripts on the generated files reproduce the with_relation JSON exactly."""
  for split in SPLITS:
    ann = data_dir / "annotations"
    rel = tmp_path / f"rel_{split}.json"
    out = tmp_path / f"with_{split}.json"
    _script("retrieve_relation").main([
        "--instances-json", str(ann / f"instances_{split}.json"),
        "--panoptic-json", str(ann / f"panoptic_{split}.json"),
        "--panoptic-folder", str(ann / f"panoptic_{split}"), "--output", str(rel), "--no-progress"])
    _script("refine_instance_json").main(["--instances-json", str(ann / f"instances_{split}.json"),
                                          "--relations", str(rel), "--output", str(out)])
    assert out.read_bytes() == (ann / f"instances_{split}_with_relation.json").read_bytes()
    # retrieved relations = ground-truth relations restricted to the ratio-passing pairs
    got = json.loads(rel.read_text())
    gt = _load(data_dir, split, "relations")
    assert list(got) == list(gt)
    for k in gt:
      for back, fronts in got[k].items():
        assert set(fronts) <= set(gt[k][back])


def test_pycocotools_reads_instances(data_dir, capsys):
  from pycocotools.coco import COCO
  coco = COCO(str(data_dir / "annotations/instances_val2017_with_relation.json"))
  ann = coco.loadAnns(coco.getAnnIds())[0]
  assert coco.annToMask(ann).sum() == ann["area"]


def test_uncompressed_rle_roundtrip():
  rng = np.random.default_rng(0)
  for first in (0, 1):
    m = (rng.random((7, 5)) > 0.5).astype(np.uint8)
    m[0, 0] = first
    rle = synthetic.uncompressed_rle(m)
    assert rle["size"] == [7, 5] and sum(rle["counts"]) == 35
    np.testing.assert_array_equal(mask_utils.decode(mask_utils.frPyObjects(rle, 7, 5)), m)


def test_make_synthetic_skips_when_complete(tmp_path, capsys):
  args = ["--data-dir", str(tmp_path), "--num-train", "2", "--num-val", "1", "--image-size", "96",
          "--seed", "1"]
  main = _script("make_synthetic").main
  assert main(args + ["--check"]) == 0
  out = capsys.readouterr().out
  assert '"images": 2' in out and "format check: OK" in out
  before = _files(tmp_path)
  assert main(args) == 0
  assert "nothing to do" in capsys.readouterr().out
  assert main(args + ["--force"]) == 0 and _files(tmp_path) == before
  assert main(["--data-dir", str(tmp_path), "--num-train", "1", "--num-val", "1",
               "--image-size", "96", "--seed", "1"]) == 0
  assert len(list((tmp_path / "images/train2017").iterdir())) == 1  # stale images removed
  assert synthetic.is_complete(tmp_path, num_train=1, num_val=1, image_size=(96, 96), seed=1)
  assert not synthetic.is_complete(tmp_path, num_train=2, num_val=1, image_size=(96, 96), seed=1)


def test_config_validation():
  with pytest.raises(ValueError):
    synthetic.SyntheticConfig(min_instances=5, max_instances=2)
  with pytest.raises(ValueError):
    synthetic.SyntheticConfig(image_size=(16, 16))
